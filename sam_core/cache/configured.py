"""The caches the settings ask for: what the ingress, encoder and decoder replicas each open."""

from __future__ import annotations

from sam_core.cache import EmbeddingCache, LocallyCopiedCache, make_cache
from sam_core.settings import Settings


def cache_from_settings(settings: Settings) -> EmbeddingCache:
    """The shared Redis cache when `redis_url` is set, else a per-process in-memory LRU."""
    return make_cache(
        settings.redis_url_value(),
        ttl_s=settings.cache_ttl_s,
        timeout_s=settings.cache_timeout_s,
        memory_bytes=settings.memory_cache_bytes,
    )


def decoder_cache(settings: Settings) -> EmbeddingCache:
    """A decoder's cache (its models share one): the shared one with local decoded copies in front
    (`decoder_local_cache_bytes`)."""
    cache = cache_from_settings(settings)
    if cache.shared and settings.decoder_local_cache_bytes:
        cache = LocallyCopiedCache(cache, settings.decoder_local_cache_bytes)
    return cache
