"""The Redis cache's circuit breaker: an unreachable Redis costs one deadline, then calls fail at once until it
answers a ping; a refused connection (fast anyway) never opens it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Iterator

import numpy as np

from sam_cli.local_redis import LocalRedis
from sam_core.cache import RedisEmbeddingCache
from sam_core.errors import CacheUnavailable
from tests.core.test_cache import MODEL, TIMEOUT_S, random_embedding, run


@contextlib.contextmanager
def frozen(server: LocalRedis) -> Iterator[None]:
    """The server stopped mid-flight (SIGSTOP): its socket accepts, nothing answers, as on a cut network."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


async def timed(call: Awaitable[object]) -> tuple[float, str]:
    started = time.monotonic()
    try:
        await call
    except CacheUnavailable as exc:
        return time.monotonic() - started, exc.reason
    return time.monotonic() - started, "answered"


def test_a_frozen_redis_costs_one_deadline_then_calls_fail_at_once_until_it_answers(
    redis_server: LocalRedis, redis_url: str
) -> None:
    cache = RedisEmbeddingCache(redis_url, ttl_s=60, timeout_s=TIMEOUT_S)
    embedding = random_embedding(np.random.default_rng(7))

    async def scenario() -> tuple[list[tuple[float, str]], float, bool]:
        await cache.put_embedding(MODEL, "img-1", embedding)
        with frozen(redis_server):
            calls = [await timed(cache.get_embedding(MODEL, "img-1"))]
            calls += [await timed(cache.has_embedding(MODEL, "img-1")) for _ in range(3)]
            calls += [await timed(cache.put_embedding(MODEL, "img-2", embedding))]
            await asyncio.sleep(1.0)  # the probe's pings time out too: still open
            calls += [await timed(cache.get_embedding(MODEL, "img-1"))]
        thawed = time.monotonic()
        while True:
            with contextlib.suppress(CacheUnavailable):
                found = await cache.get_embedding(MODEL, "img-1")
                break
            assert time.monotonic() - thawed < 5, "the breaker closed once Redis answered"
            await asyncio.sleep(0.02)
        closed_after = time.monotonic() - thawed
        await cache.close()
        return calls, closed_after, found is not None

    calls, closed_after, found = run(scenario())
    print(f"frozen redis: {[(round(s, 3), r[:40]) for s, r in calls]}; answered again {closed_after:.2f} s after")
    first, *rest = calls
    assert TIMEOUT_S <= first[0] < 2 * TIMEOUT_S + 0.3
    assert all(seconds < 0.05 and "not tried" in reason for seconds, reason in rest)
    assert closed_after < 2 * TIMEOUT_S + 0.5  # a ping in flight when it thawed answers, or the next one does
    assert found


def test_a_refused_connection_fails_fast_and_never_opens_the_breaker(redis_server: LocalRedis, redis_url: str) -> None:
    cache = RedisEmbeddingCache(redis_url, ttl_s=60, timeout_s=TIMEOUT_S)
    embedding = random_embedding(np.random.default_rng(7))

    async def scenario() -> tuple[float, str, bool]:
        await cache.put_embedding(MODEL, "img-1", embedding)
        redis_server.stop()
        try:
            seconds, reason = await timed(cache.get_embedding(MODEL, "img-1"))
        finally:
            redis_server.start()
        await cache.put_embedding(MODEL, "img-1", embedding)  # at once: nothing to wait for
        found = await cache.get_embedding(MODEL, "img-1") is not None
        await cache.close()
        return seconds, reason, found

    seconds, reason, found = run(scenario())
    assert seconds < TIMEOUT_S
    assert "not tried" not in reason
    assert found


def test_the_probe_follows_the_running_loop(redis_server: LocalRedis, redis_url: str) -> None:
    """Each call may run in a new event loop (tests, handle callers): an open breaker's probe runs on the loop of
    the call that found it open, so it closes even when the loop that opened it has gone."""
    cache = RedisEmbeddingCache(redis_url, ttl_s=60, timeout_s=TIMEOUT_S)
    with frozen(redis_server):
        assert run(timed(cache.has_embedding(MODEL, "img-1")))[0] >= TIMEOUT_S
    # The loop that opened it (and its probe) has gone: still open, though Redis answers again.
    assert "not tried" in run(timed(cache.has_embedding(MODEL, "img-1")))[1]

    async def closes() -> float:
        started = time.monotonic()
        while True:
            with contextlib.suppress(CacheUnavailable):
                await cache.has_embedding(MODEL, "img-1")
                await cache.close()
                return time.monotonic() - started
            assert time.monotonic() - started < 5
            await asyncio.sleep(0.02)

    assert run(closes()) < 2 * TIMEOUT_S + 0.5
