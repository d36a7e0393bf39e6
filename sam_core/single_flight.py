"""Single flight: one encoder run per image, however many requests and ingress replicas ask for it at once.

Two layers. Inside a process, concurrent requests for the same (model, image key, image content) share one
task. Across processes, the first claims the image's run lock in the cache (Redis `SET NX PX` with a
random owner token, renewed while the run lasts, released only by its holder); the others poll, with
backoff, until the embedding lands, and take the run over if the lock frees without it (its holder died:
the lock outlives it by at most its TTL). A request waits only for a run of the same image content: under
one `image_id`, another image's run is not its answer, so it embeds its own. When the cache cannot be
reached, every request embeds for itself: slower, still correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from sam_core.cache import EmbeddingCache, image_id_hash
from sam_core.embedding import ImageEmbedding
from sam_core.errors import CacheUnavailable

log = logging.getLogger(__name__)

FIRST_POLL_S = 0.01
LAST_POLL_S = 0.1
"""Waiters poll the cache every 10 ms at first, doubling to every 100 ms (a run takes 0.1 s to many s)."""

Role = Literal["own", "holder", "joined", "waited", "landed"]
"""How a request got its embedding: `own` (it ran the encoder without the lock: cache down, another image
under its id, or it waited too long), `holder` (it held the lock and ran it), `joined` (it shared a run
of its own process), `waited` (another process's run landed while it waited), `landed` (it was cached by
the time the request asked)."""


@dataclass
class Flight:
    """What one request got: the embedding when this process ran or shared the run, None when it is in the
    cache (another process put it there); its role; and the seconds it waited for someone else's run."""

    embedding: ImageEmbedding | None
    role: Role
    waited_s: float = 0.0


class SingleFlight:
    """Coalesces embedding runs per (model, image key, image content) within a process and across processes.

    `run(model_id, image_key, content_id, embed)` returns a `Flight`; `embed` is called at most once per
    process for concurrent callers, and by one process at a time while the cache coordinates.
    """

    def __init__(self, cache: EmbeddingCache, *, lock_ttl_s: float, wait_s: float) -> None:
        self.cache = cache
        self.lock_ttl_s = lock_ttl_s
        self.wait_s = wait_s
        self._flights: dict[tuple[str, str, str], asyncio.Future[Flight]] = {}

    async def run(
        self, model_id: str, image_key: str, content_id: str, embed: Callable[[], Awaitable[ImageEmbedding]]
    ) -> Flight:
        """The image's embedding, from the one run that computes it for every concurrent caller."""
        key = (model_id, image_key, content_id)
        shared = self._flights.get(key)
        if shared is not None:
            flight = await asyncio.shield(shared)
            return Flight(flight.embedding, "joined", flight.waited_s)
        task = asyncio.ensure_future(self._across_processes(model_id, image_key, content_id, embed))
        self._flights[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        # A caller that goes away (client disconnect) must not cancel the run the others wait on.
        return await asyncio.shield(task)

    def _forget(self, key: tuple[str, str, str], done: asyncio.Future[Flight]) -> None:
        self._flights.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: a run whose every caller left must not log "never retrieved"

    async def _across_processes(
        self, model_id: str, image_key: str, content_id: str, embed: Callable[[], Awaitable[ImageEmbedding]]
    ) -> Flight:
        owner = f"{secrets.token_hex(8)} {content_id}"
        started = time.monotonic()
        poll_s, polled = FIRST_POLL_S, False
        while True:
            waited_s = time.monotonic() - started
            try:
                claim = await self.cache.claim_embedding_run(model_id, image_key, owner, self.lock_ttl_s, content_id)
            except CacheUnavailable:
                return Flight(await embed(), "own", waited_s)
            if claim.state == "landed":
                return Flight(None, "waited" if polled else "landed", waited_s)
            if claim.state == "claimed":
                return Flight(await self._hold(model_id, image_key, owner, embed), "holder", waited_s)
            if claim.holder is not None and claim.holder.partition(" ")[2] != content_id:
                # Another image is being embedded under this image_id: its embedding is not this request's.
                return Flight(await embed(), "own", waited_s)
            if waited_s >= self.wait_s:
                log.warning(
                    "waited %.1f s for another replica's run of image %s: embedding it here",
                    waited_s,
                    image_id_hash(image_key),
                )
                return Flight(await embed(), "own", waited_s)
            await asyncio.sleep(min(poll_s, max(0.0, self.wait_s - waited_s)))
            poll_s, polled = min(2 * poll_s, LAST_POLL_S), True

    async def _hold(
        self, model_id: str, image_key: str, owner: str, embed: Callable[[], Awaitable[ImageEmbedding]]
    ) -> ImageEmbedding:
        """Run `embed` while holding the lock, renewing it every third of its TTL; free it after (the
        embedding is in the cache by then: the encoder stores before it answers)."""
        renewer = asyncio.ensure_future(self._renew(model_id, image_key, owner))
        try:
            return await embed()
        finally:
            renewer.cancel()
            with contextlib.suppress(CacheUnavailable):  # else the lock frees itself within its TTL
                await self.cache.release_embedding_run(model_id, image_key, owner)

    async def _renew(self, model_id: str, image_key: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self.lock_ttl_s / 3)
            try:
                if not await self.cache.renew_embedding_run(model_id, image_key, owner, self.lock_ttl_s):
                    return  # lost it (expired, or Redis restarted): the run goes on; others may start theirs
            except CacheUnavailable:
                continue
