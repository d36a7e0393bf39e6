"""The embedding cache shared by encoder and decoder: compact serialisation, hashed keys, Redis or memory.

An image is embedded once and clicked many times; the decoder reads the embedding (and the last low-res
logits, for `use_mask_input_cache`) from here on every click. Redis is the shared backend across replicas,
an in-process LRU the single-node fallback. Neither backend ever lets a Redis failure crash a request: it
becomes `CacheUnavailable`, which the caller turns into a recompute or a 503 that says to resend the image.

`keys` (key layout) and `codec` (bytes) under `base` (the interface), the backends `redis` and `memory`, and
`local_copies` (a wrapper that keeps decoded copies in a decoder replica).
"""

from __future__ import annotations

from sam_core.cache.base import CacheReadObserver, EmbeddingCache
from sam_core.cache.keys import KIND_EMBEDDING, KIND_LOW_RES_LOGITS, KINDS, cache_key, image_id_hash
from sam_core.cache.local_copies import LocallyCopiedCache
from sam_core.cache.memory import MemoryEmbeddingCache
from sam_core.cache.redis import RedisEmbeddingCache

__all__ = [
    "KINDS",
    "KIND_EMBEDDING",
    "KIND_LOW_RES_LOGITS",
    "CacheReadObserver",
    "EmbeddingCache",
    "LocallyCopiedCache",
    "MemoryEmbeddingCache",
    "RedisEmbeddingCache",
    "cache_key",
    "image_id_hash",
    "make_cache",
]


def make_cache(redis_url: str | None, *, ttl_s: int, timeout_s: float, memory_bytes: int) -> EmbeddingCache:
    """Redis when a URL is configured (shared across replicas), else the in-process LRU."""
    if redis_url:
        return RedisEmbeddingCache(redis_url, ttl_s=ttl_s, timeout_s=timeout_s)
    return MemoryEmbeddingCache(max_bytes=memory_bytes, ttl_s=ttl_s)
