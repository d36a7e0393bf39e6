"""The single-process cache: an LRU bounded by bytes, with Redis's TTL semantics and the same stored bytes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import cachetools

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
        # cachetools' TTL cache: expired entries go first, then the least recently used, until the payloads'
        # bytes fit under max_bytes.
        self._entries: cachetools.TTLCache[str, bytes] = cachetools.TTLCache(
            maxsize=max_bytes, ttl=ttl_s, timer=clock, getsizeof=len
        )
        self._lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        """Bytes of payload currently held (expired entries not yet purged included)."""
        return int(self._entries.currsize)

    def __len__(self) -> int:
        return len(self._entries)

    async def _fetch(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            found: list[bytes | None] = []
            for key in keys:
                payload = self._entries.get(key)
                if payload is not None:
                    self._entries[key] = payload  # restarts its TTL, as Redis's GETEX does
                found.append(payload)
            return found

    async def _store(self, key: str, payload: bytes) -> int:
        with self._lock:
            self._entries.pop(key, None)
            if len(payload) > self.max_bytes:
                log.warning("value of %d bytes exceeds the memory cache bound %d", len(payload), self.max_bytes)
                return 0
            self._entries[key] = payload
            return len(payload)

    async def _remove(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        """Nothing to release: the entries belong to the process and stay usable, as Redis's would."""
