"""One deadline per URL fetch, against real slow servers: one that trickles its headers, one that sends its body
at 1 kB/s. `url_timeout_s` covers DNS, connect, headers and body, and the wait for a fetch slot; fetches run
at once up to `max_url_fetches`. Over the real Serve app: tests/deployments/test_security.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from sam_core.errors import URLFetchError
from sam_core.settings import ImageLimits
from sam_core.wire.url_fetch import fetch_url, fetch_url_bytes
from tests.slow_http import slow_http_server

DEADLINE_S = 1.0


@pytest.fixture(scope="module")
def slow_server() -> Iterator[str]:
    with slow_http_server() as url:
        yield url


def _limits(url_timeout_s: float = DEADLINE_S) -> ImageLimits:
    return ImageLimits(allow_url=True, allow_private_urls=True, url_timeout_s=url_timeout_s)


@pytest.mark.parametrize("path", ["/trickle-headers", "/trickle-body"])
def test_a_trickling_server_is_cut_off_at_the_one_deadline(slow_server: str, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(URLFetchError, match="did not send the image within") as raised:
        fetch_url_bytes(slow_server + path, _limits())
    elapsed = time.monotonic() - started
    assert DEADLINE_S <= elapsed < DEADLINE_S + 0.5
    assert raised.value.field == "image.value"
    assert "127.0.0.1" in raised.value.reason  # the host as the client named it


def test_slow_fetches_run_side_by_side_and_each_ends_at_its_deadline(slow_server: str) -> None:
    """Four trickling URLs at once: four deadlines that overlap (about 1 s in all), not four in a row."""

    async def four() -> list[BaseException | bytes]:
        slots = asyncio.Semaphore(8)
        fetches = [fetch_url(f"{slow_server}/trickle-headers", _limits(), slots=slots) for _ in range(4)]
        return await asyncio.gather(*fetches, return_exceptions=True)

    started = time.monotonic()
    outcomes = asyncio.run(four())
    elapsed = time.monotonic() - started
    assert all(isinstance(outcome, URLFetchError) for outcome in outcomes)
    assert elapsed < DEADLINE_S + 0.5


def test_the_wait_for_a_fetch_slot_counts_toward_the_deadline(slow_server: str) -> None:
    """With one slot held by a trickling server, the next fetch ends at its own deadline, not after the first's."""

    async def two() -> tuple[float, BaseException | bytes]:
        slots = asyncio.Semaphore(1)
        first = asyncio.create_task(fetch_url(f"{slow_server}/trickle-body", _limits(url_timeout_s=3.0), slots=slots))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        try:
            outcome: BaseException | bytes = await fetch_url(f"{slow_server}/trickle-body", _limits(), slots=slots)
        except URLFetchError as exc:
            outcome = exc
        waited = time.monotonic() - started
        first.cancel()
        return waited, outcome

    waited, outcome = asyncio.run(two())
    assert isinstance(outcome, URLFetchError)
    assert waited < DEADLINE_S + 0.5
