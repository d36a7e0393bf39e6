"""SamEncoder: the batched image encoder as a Ray Serve deployment (GPU when the replica has one)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from deployments import metrics
from deployments.replica_models import ReplicaModels
from deployments.resident_memory import resident_bytes
from sam_core.cache import KIND_EMBEDDING
from sam_core.cache.configured import cache_from_settings
from sam_core.embedding import EncoderInput, ImageEmbedding
from sam_core.model.encoder import DEFAULT_MAX_BATCH_SIZE
from sam_core.services.encoder import EncoderService
from sam_core.settings import Settings

log = logging.getLogger("ray.serve")

DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.005


@serve.deployment(
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=8,
    max_queued_requests=64,
    user_config={"max_batch_size": DEFAULT_MAX_BATCH_SIZE, "batch_wait_timeout_s": DEFAULT_BATCH_WAIT_TIMEOUT_S},
)
class SamEncoder:
    """Embeds images in batches and writes every embedding to the shared cache.

    Callers send one image at a time (`embed`); `@serve.batch` gathers concurrent calls into one forward pass,
    waiting at most `batch_wait_timeout_s` for a batch to fill; Serve splits a batch by the calls' models, so
    a forward pass is one model's. The model runs in a worker thread so the replica's event loop keeps accepting
    (and batching) requests while a batch computes.
    """

    def __init__(self, settings: Settings) -> None:
        self.cache = cache_from_settings(settings)  # one connection pool for every model's service
        self.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        self.models = ReplicaModels(settings, "encoder", self._service, self.cache)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-encoder")
        self.images_embedded = 0
        self.batches = 0
        self.batch_sizes: Counter[int] = Counter()
        # Set while no forward pass runs. Serve forms a batch as soon as its first call has waited
        # `batch_wait_timeout_s`, even while the last batch still computes (the next one then waits its turn), so
        # calls arriving one by one during a pass would each make a batch of 1; held at this gate instead, they
        # enter together when the pass ends and make one batch.
        self.idle = asyncio.Event()
        self.idle.set()
        self.running = 0
        default = self.models.default
        log.info("SamEncoder ready: model=%s device=%s", default.identity.model_id, default.device)

    def _service(self, settings: Settings) -> EncoderService:
        return EncoderService.from_settings(settings, max_batch_size=self.max_batch_size, cache=self.cache)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Batch size and wait, changeable at run time through `user_config`."""
        max_batch_size = int(config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        self.max_batch_size = max_batch_size
        for service in self.models.held:
            service.encoder.max_batch_size = max_batch_size
        self._embed_batch.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        wait = float(config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S))
        self._embed_batch.set_batch_wait_timeout_s(wait)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def _embed_batch(self, items: list[tuple[np.ndarray | EncoderInput, str | None]]) -> list[ImageEmbedding]:
        loop = asyncio.get_running_loop()
        images = [pixels for pixels, _ in items]
        _, service = await self.models.current()  # one model per batch: Serve splits batches by model
        model_id = service.identity.model_id
        started = time.perf_counter()
        self.running += 1
        self.idle.clear()
        try:
            embeddings = await loop.run_in_executor(self.executor, service.embed_batch, images)
        finally:
            self.running -= 1
            if not self.running:
                self.idle.set()
        metrics.encoder_batch(model_id, len(images), time.perf_counter() - started)
        self.images_embedded += len(images)
        self.batches += 1
        self.batch_sizes[len(images)] += 1
        if service.cache.shared:
            # Without Redis this process's cache would be read by nobody: the ingress keeps the embeddings.
            stored = await asyncio.gather(
                *(service.store(key, emb) for (_, key), emb in zip(items, embeddings, strict=True) if key)
            )
            for nbytes in stored:
                metrics.cache_write(model_id, KIND_EMBEDDING, nbytes)
        return embeddings

    async def embed(self, pixels: np.ndarray | EncoderInput, cache_key: str | None) -> ImageEmbedding:
        """Embed one image and cache it under `cache_key` (if given): (H, W, 3) uint8 RGB pixels, or an
        `EncoderInput` the ingress already resized to the input frame (what it sends: ~3 MB, not the original)."""
        await self.idle.wait()
        result: ImageEmbedding = await self._embed_batch((pixels, cache_key))
        return result

    async def __del__(self) -> None:
        """Serve's shutdown: the listing of loaded models stops counting this replica."""
        if hasattr(self, "models"):  # not when the constructor failed
            await self.models.shutdown()

    async def model_id(self) -> str:
        """The identity of the weights the call's model names (loading them here if need be)."""
        _, service = await self.models.current()
        return service.identity.model_id

    async def stats(self) -> dict[str, int]:
        """What this replica has done since it started (images embedded, batches run, `batches_of_N`: batches of
        N images) and its resident memory."""
        sizes = {f"batches_of_{size}": count for size, count in sorted(self.batch_sizes.items())}
        done = {"images_embedded": self.images_embedded, "batches": self.batches, "models_held": len(self.models.held)}
        return {**done, **sizes, "rss_bytes": resident_bytes()}
