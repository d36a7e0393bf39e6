"""A circuit breaker for the Redis cache: after a call times out, calls fail at once until Redis answers a ping.

A refused connection fails in a millisecond, but an unreachable host (a cut network, a frozen server) makes every
call wait out its whole deadline, and a request touches the cache several times on its way (the cached check,
single flight, the encoder's write, the decoder's reads): each of those waits would add up. So the first timeout
opens the breaker; from then on calls raise `CacheUnavailable` without trying, which every caller already
handles (a request with its image is answered without the cache), while one background task pings Redis every
`interval_s` and closes the breaker at the first answer. Each process (ingress, encoder, decoder replica) has its
own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from sam_core.errors import CacheUnavailable

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.25
"""How often an open breaker pings Redis."""


class Breaker:
    """Open (calls refused at once) from a timeout until `ping` answers within `deadline_s`."""

    def __init__(
        self, ping: Callable[[], Awaitable[object]], *, deadline_s: float, interval_s: float = PROBE_INTERVAL_S
    ) -> None:
        self._ping = ping
        self._deadline_s = deadline_s
        self._interval_s = interval_s
        self.open_since: float | None = None
        self._probe: asyncio.Task[None] | None = None

    def check(self, op: str) -> None:
        """Raise `CacheUnavailable` at once while open."""
        if self.open_since is None:
            return
        self._ensure_probe()
        down_s = time.monotonic() - self.open_since
        raise CacheUnavailable(f"redis {op} not tried: Redis has not answered for {down_s:.1f} s (a call timed out)")

    def trip(self) -> None:
        """A call timed out: open, and start the probe."""
        if self.open_since is None:
            self.open_since = time.monotonic()
            log.warning("redis timed out: cache calls fail at once until it answers a ping")
        self._ensure_probe()

    def _ensure_probe(self) -> None:
        """One probe on the running loop (a task of a loop that has gone is replaced)."""
        loop = asyncio.get_running_loop()
        if self._probe is None or self._probe.done() or self._probe.get_loop() is not loop:
            self._probe = loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while self.open_since is not None:
            try:
                await asyncio.wait_for(self._ping(), self._deadline_s)
            except (RedisError, OSError, asyncio.TimeoutError):
                await asyncio.sleep(self._interval_s)
                continue
            log.warning("redis answers again after %.1f s", time.monotonic() - self.open_since)
            self.open_since = None
