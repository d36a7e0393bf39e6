"""A decoder replica's own decoded copies of embeddings, checked against the shared cache by write tag."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import cachetools
import numpy as np

from sam_core.cache.base import EmbeddingCache
from sam_core.cache.codec import write_tag
from sam_core.cache.keys import KIND_EMBEDDING, KINDS, cache_key
from sam_core.embedding import ImageEmbedding


class LocalEmbeddingCopies:
    """A process's own LRU of decoded (float32) embeddings, each kept with the write tag it was read with.

    A follow-up click then reads only the embedding's 80-byte header from the shared cache, to compare tags
    and keep the entry's TTL fresh, instead of 2 MiB plus a float16->float32 conversion. A different tag
    (the image id was embedded again) or a miss in the shared cache drops the copy, so the shared cache stays
    the one truth: a copy is never served for an entry the shared cache no longer holds in the same bytes.
    The arrays are read-only, as they are shared by every request that reads them.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes ({max_bytes}) must be positive")
        self.max_bytes = max_bytes
        # cachetools evicts least recently used entries until the sizes fit; the lock makes get-and-touch
        # atomic for the executor threads that share this object.
        self._entries: cachetools.LRUCache[str, tuple[bytes, ImageEmbedding]] = cachetools.LRUCache(
            maxsize=max_bytes, getsizeof=_entry_bytes
        )
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded arrays held (at most `max_bytes`)."""
        return int(self._entries.currsize)

    def get(self, key: str) -> tuple[bytes, ImageEmbedding] | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, tag: bytes, embedding: ImageEmbedding) -> None:
        if embedding.embedding.nbytes > self.max_bytes:
            return
        embedding.embedding.flags.writeable = False
        with self._lock:
            self._entries[key] = (tag, embedding)

    def discard(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)


def _entry_bytes(entry: tuple[bytes, ImageEmbedding]) -> int:
    return int(entry[1].embedding.nbytes)


class LocallyCopiedCache(EmbeddingCache):
    """A shared cache whose `get_all` keeps decoded copies of the embeddings it reads (a decoder replica's).

    A follow-up click on an image this process has read before then costs the embedding's 80-byte header (its
    write tag, and a TTL refresh) instead of 2 MiB and a float16->float32 conversion. Every other call goes to
    `inner` unchanged.
    """

    def __init__(self, inner: EmbeddingCache, max_bytes: int) -> None:
        self.inner = inner
        self.copies = LocalEmbeddingCopies(max_bytes)
        self.shared = inner.shared

    async def get_all(
        self, model_id: str, image_id: str, *, with_logits: bool = True, logits_id: str | None = None
    ) -> tuple[ImageEmbedding | None, np.ndarray | None]:
        key = cache_key(model_id, image_id, KIND_EMBEDDING)
        local = self.copies.get(key)
        if local is not None:
            kinds = KINDS if with_logits else (KIND_EMBEDDING,)
            head, *rest = await self._read(
                "get_all", model_id, image_id, kinds, head_only=KIND_EMBEDDING, logits_id=logits_id
            )
            logits = self._decoded_logits(rest, model_id, image_id)
            if head is not None and write_tag(head) == local[0]:
                self._observe(model_id, KIND_EMBEDDING, "hit")
                return local[1], logits
            self.copies.discard(key)
            if head is None:
                self._observe(model_id, KIND_EMBEDDING, "miss")
                return None, logits
            # Embedded again since this copy was read: read the new value in full below.
        payload, embedding, logits = await self._read_in_full(
            model_id, image_id, with_logits=with_logits, logits_id=logits_id
        )
        tag = write_tag(payload) if payload is not None else None
        if embedding is not None and tag is not None:
            self.copies.put(key, tag, embedding)
        return embedding, logits

    async def announce_models(self, app: str, role: str, replica: str, models: Sequence[str], ttl_s: float) -> None:
        await self.inner.announce_models(app, role, replica, models, ttl_s)

    async def loaded_models(self, app: str) -> dict[str, dict[str, int]] | None:
        return await self.inner.loaded_models(app)

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()

    async def _fetch(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self.inner._fetch(keys)

    async def _fetch_head(self, head_key: str, keys: Sequence[str]) -> list[bytes | None]:
        return await self.inner._fetch_head(head_key, keys)

    async def _store(self, key: str, payload: bytes) -> int:
        return await self.inner._store(key, payload)

    async def _remove(self, keys: Sequence[str]) -> None:
        await self.inner._remove(keys)
