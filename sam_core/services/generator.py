"""The segment-everything service: a decoder replica's generator runs, from cached crop embeddings to the
encoded records, cancellable between batches of points."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from sam_core.embedding import ImageEmbedding
from sam_core.errors import CacheMiss
from sam_core.model.mask_generator import MAX_BATCH_LOGIT_BYTES, check_options, generate_everything, total_points
from sam_core.services.decoder import DecoderService
from sam_core.wire.generator_schemas import EverythingJob
from sam_core.wire.image_checks import check_image_size
from sam_core.wire.masks import encode_png, mask_to_polygon
from sam_core.wire.messages import SegmentResult

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called from the worker thread after each batch: (points done so far, points in the run)."""


class EverythingService:
    """Runs `SamAutomaticMaskGenerator`'s algorithm with a decoder service's ONNX decoder, cache and limits."""

    def __init__(self, decoders: DecoderService, *, threads: int, max_batch_bytes: int = MAX_BATCH_LOGIT_BYTES) -> None:
        self.decoders = decoders
        self.threads = threads
        self.max_batch_bytes = max_batch_bytes

    async def load_embeddings(self, job: EverythingJob) -> list[ImageEmbedding]:
        """One embedding per crop: inline where the job carries it, else from the cache (CacheMiss if gone)."""
        inline = job.embeddings or [None] * len(job.crop_keys)
        embeddings = []
        for index, (key, embedding) in enumerate(zip(job.crop_keys, inline, strict=True)):
            if embedding is None:
                embedding = await self.decoders.cache.get_embedding(self.decoders.identity.model_id, key)
            if embedding is None:
                what = "this image_id" if index == 0 else f"crop {index} of this image"
                raise CacheMiss(f"no cached embedding for {what}: send the image", field="image_id")
            embeddings.append(embedding)
        return embeddings

    async def run(self, job: EverythingJob, executor: Executor | None = None, *, progress: Progress) -> SegmentResult:
        """The whole run; a cancelled caller (the client went away) stops it at the next batch of points."""
        started = time.perf_counter()
        embeddings = await self.load_embeddings(job)
        original_size = embeddings[0].original_size
        check_image_size(original_size, self.decoders.limits, field="image")
        check_options(original_size, job.options, max_batch_bytes=self.max_batch_bytes)
        loaded = time.perf_counter()
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            masks, generate_s, encode_s = await loop.run_in_executor(
                executor, self._generate_and_encode, embeddings, job, cancelled, progress
            )
        except asyncio.CancelledError:
            cancelled.set()
            raise
        timings = {"load_s": loaded - started, "generate_s": generate_s, "encode_s": encode_s}
        return SegmentResult(body={"masks": masks}, timings=timings)

    def _generate_and_encode(
        self, embeddings: list[ImageEmbedding], job: EverythingJob, cancelled: threading.Event, progress: Progress
    ) -> tuple[list[dict[str, Any]], float, float]:
        import torch

        # The generator's filters and RLE run in torch: give it the replica's threads (Ray sets 1 per CPU).
        torch.set_num_threads(self.threads)
        total = total_points(embeddings[0].original_size, job.options)
        done = 0

        def batch_done(points: int) -> None:
            nonlocal done
            done += points
            progress(done, total)

        started = time.perf_counter()
        records = generate_everything(
            self.decoders.decoder,
            embeddings,
            job.options,
            cancelled=cancelled,
            progress=batch_done,
            max_batch_bytes=self.max_batch_bytes,
        )
        generated = time.perf_counter()
        encoded = encode_records(records, job.format)
        return encoded, generated - started, time.perf_counter() - generated


def encode_records(records: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """The generator's records (uncompressed RLE segmentations) with `segmentation` in `fmt`, JSON-ready."""
    from segment_anything.utils.amg import coco_encode_rle, rle_to_mask

    encoded = []
    for record in records:
        rle = record["segmentation"]
        if fmt == "rle":
            segmentation: Any = coco_encode_rle(rle)
        elif fmt == "json":
            segmentation = mask_to_polygon(rle_to_mask(rle))
        else:
            segmentation = base64.b64encode(encode_png(rle_to_mask(rle))).decode("ascii")
        encoded.append({**record, "segmentation": segmentation})
    return encoded
