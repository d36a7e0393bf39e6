"""The single-process cache: an LRU bounded by bytes, with Redis's TTL semantics and the same stored bytes."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from sam_core.cache.base import EmbeddingCache

log = logging.getLogger(__name__)


class MemoryEmbeddingCache(EmbeddingCache):
    """In-process LRU bounded by the total bytes of stored payloads, with the same TTL semantics as Redis.

    Stores the same encoded bytes as Redis, so both backends return identical (float16-rounded) values and
    the bound counts what is really held. Every get or put moves the entry to the recent end and restarts
    its TTL; as all entries share one TTL, the least recently used entry is also the first to expire.
    Operations never await while holding state, and a lock makes them safe from other threads too.
    """

    shared = False

    def __init__(self, *, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_bytes <= 0 or ttl_s <= 0:
            raise ValueError(f"max_bytes ({max_bytes}) and ttl_s ({ttl_s}) must be positive")
        self.max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (payload, expires_at)
        self._total_bytes = 0
        self._lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        """Bytes of payload currently held (expired entries not yet purged included)."""
        return self._total_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def _pop(self, key: str) -> None:
        payload, _ = self._entries.pop(key)
        self._total_bytes -= len(payload)

    def _purge_expired(self, now: float) -> None:
        while self._entries:
            key, (_, expires_at) = next(iter(self._entries.items()))
            if expires_at > now:
                break
            self._pop(key)

    async def _fetch(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            now = self._clock()
            self._purge_expired(now)
            found: list[bytes | None] = []
            for key in keys:
                entry = self._entries.get(key)
                if entry is None:
                    found.append(None)
                    continue
                self._entries[key] = (entry[0], now + self._ttl_s)
                self._entries.move_to_end(key)
                found.append(entry[0])
            return found

    async def _store(self, key: str, payload: bytes) -> int:
        with self._lock:
            now = self._clock()
            if key in self._entries:
                self._pop(key)
            self._purge_expired(now)
            if len(payload) > self.max_bytes:
                log.warning("value of %d bytes exceeds the memory cache bound %d", len(payload), self.max_bytes)
                return 0
            while self._total_bytes + len(payload) > self.max_bytes:
                self._pop(next(iter(self._entries)))
            self._entries[key] = (payload, now + self._ttl_s)
            self._total_bytes += len(payload)
            return len(payload)

    async def _remove(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                if key in self._entries:
                    self._pop(key)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        """Nothing to release: the entries belong to the process and stay usable, as Redis's would."""
