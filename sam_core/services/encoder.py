"""The encoder service: batches of images embedded and each embedding written to the cache under its key."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sam_core.cache import EmbeddingCache
from sam_core.cache.configured import cache_from_settings
from sam_core.embedding import EncoderInput, ImageEmbedding, round_to_storage
from sam_core.errors import CacheUnavailable
from sam_core.model.build import ModelIdentity
from sam_core.model.encoder import DEFAULT_MAX_BATCH_SIZE, ImageEncoder
from sam_core.services.configured import configured_encoder, load_configured_model
from sam_core.settings import Settings


class EncoderService:
    """Embeds batches of images and writes each embedding to the cache under its key."""

    def __init__(self, encoder: ImageEncoder, identity: ModelIdentity, cache: EmbeddingCache, *, device: str) -> None:
        self.encoder = encoder
        self.identity = identity
        self.cache = cache
        self.device = device

    @classmethod
    def from_settings(
        cls, settings: Settings, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, cache: EmbeddingCache | None = None
    ) -> EncoderService:
        model = load_configured_model(settings)
        encoder = configured_encoder(model, settings, max_batch_size=max_batch_size)
        return cls(encoder, model.identity, cache or cache_from_settings(settings), device=str(model.device))

    def embed_batch(self, images: Sequence[np.ndarray | EncoderInput]) -> list[ImageEmbedding]:
        """Embed (H, W, 3) uint8 RGB images (or `EncoderInput`s) in one forward pass (CPU/GPU bound: call from a
        worker thread).

        The embeddings come back at the cache's storage precision (`round_to_storage`), so the answer to a
        new image's first click is the one every later click on it gets from the cache.
        """
        return [
            dataclasses.replace(embedding, embedding=round_to_storage(embedding.embedding))
            for embedding in self.encoder.embed_batch(images)
        ]

    async def store(self, cache_key: str, embedding: ImageEmbedding) -> int:
        """Cache an embedding; returns the bytes stored, 0 (logged) when the cache is down or cannot hold it.

        The caller still has the embedding either way.
        """
        try:
            return await self.cache.put_embedding(self.identity.model_id, cache_key, embedding)
        except CacheUnavailable:
            return 0
