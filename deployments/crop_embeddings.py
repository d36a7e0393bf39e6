"""The ingress's half of segment everything: find or make one embedding per crop, then hand the run to a decoder.

Crops are embedded one request at a time, so a run with crop layers never holds the encoder away from other
images for more than one batch; each crop's embedding is cached under the image's key and the crop box, so a
second run on the same image (even by `image_id` alone) embeds nothing.
"""

from __future__ import annotations

import time
from typing import Protocol

from ray.serve.exceptions import BackPressureError

from deployments import metrics
from deployments.embeddings import CACHE_DOWN, Embeddings
from deployments.model_routing import ModelRouting
from deployments.off_loop import off_loop
from sam_core.cache import EmbeddingCache
from sam_core.embedding import EncoderInput, ImageEmbedding
from sam_core.errors import CacheMiss, CacheUnavailable, Overloaded
from sam_core.model.mask_generator import check_grid, check_options, check_work, crop_boxes
from sam_core.settings import Settings
from sam_core.wire.generator_schemas import (
    EVERYTHING_ROUTE,
    EverythingJob,
    SegmentEverythingRequest,
    crop_cache_key,
)
from sam_core.wire.images import EncodedImage, crop_encoder_inputs
from sam_core.wire.messages import SegmentResult


class SamIngress(Protocol):
    """What of the ingress a run uses: its settings, cache, embedding path and model routing (so this module
    needs no import of the ingress, which imports it)."""

    settings: Settings
    cache: EmbeddingCache
    embeddings: Embeddings
    routing: ModelRouting


async def _crop_embeddings(
    ingress: SamIngress,
    model: str,
    request: SegmentEverythingRequest,
    key: str,
    size: tuple[int, int],
    image: EncodedImage | None,
) -> tuple[list[str], list[ImageEmbedding | None]]:
    """Every crop's cache key (the whole image's first) and the embeddings of crops 1.. (None: cached)."""
    options = request.options()
    # Checked before any crop is embedded (the decoder checks again, whichever way a job comes).
    check_options(size, options, max_batch_bytes=ingress.settings.everything_max_batch_bytes)
    boxes = crop_boxes(size, options)
    keys = [crop_cache_key(key, box, size) for box in boxes]
    in_hand = not ingress.cache.shared
    content_id = "" if image is None else image.content_id
    embeddings: list[ImageEmbedding | None] = []
    crops: list[EncoderInput] | None = None
    for index, (box, crop_key) in enumerate(zip(boxes[1:], keys[1:], strict=True), start=1):
        cached = await ingress.embeddings.lookup(
            model, crop_key, content_id, in_hand=in_hand, has_image=image is not None
        )
        if cached is not False:
            embeddings.append(cached if isinstance(cached, ImageEmbedding) else None)
            continue
        if image is None:
            raise CacheMiss(
                f"crop_n_layers {options.crop_n_layers} needs the image: crop {index} {list(box)} is not cached",
                field="image",
            )
        if crops is None:
            crops = await off_loop(crop_encoder_inputs, image, ingress.settings.images, boxes, pool="image")
        embeddings.append(await ingress.embeddings.encode(model, crops[index], crop_key))
    return keys, embeddings


async def segment_everything(ingress: SamIngress, request: SegmentEverythingRequest, tenant: str) -> SegmentResult:
    """Every mask of the image, as `SamAutomaticMaskGenerator` finds them; the body is JSON-ready. `tenant`: whose
    `image_id`s these are."""
    started = time.perf_counter()
    model = ingress.routing.resolve(request)
    options = request.options()
    check_grid(options)
    check_work(options, ingress.settings.everything_max_points)
    # Crops need the image's size here; the whole image's entry alone is read by the decoder.
    found = await ingress.embeddings.find(model, request, tenant, in_hand=options.crop_n_layers > 0)
    key = found.keys.cache_key
    # An entry in the shared cache (cached, or put there by another replica's run) is read by the decoder there;
    # only one this request's own run embedded travels with the job.
    sent = None if found.source == "cache" and ingress.cache.shared else found.embedding
    embeddings: list[ImageEmbedding | None] = [sent]
    keys = [key]
    if options.crop_n_layers > 0:
        assert found.embedding is not None, "in_hand=True gives the embedding"
        keys, more = await _crop_embeddings(ingress, model, request, key, found.embedding.original_size, found.image)
        embeddings += more
    job = EverythingJob(crop_keys=keys, options=options, format=request.format, embeddings=embeddings)
    try:
        result: SegmentResult = await ingress.routing.decoder(model, key).segment_everything.remote(job)
    except BackPressureError as exc:
        raise Overloaded("the decoders are at capacity: retry shortly") from exc
    except CacheUnavailable as exc:
        raise CacheUnavailable(CACHE_DOWN, field="image_id") from exc
    assert isinstance(result.body, dict), "segment everything answers json"
    result.body = {"image_id": found.keys.reply_id, **result.body, "time": time.perf_counter() - started}
    result.timings["total_s"] = time.perf_counter() - started
    metrics.request_served(EVERYTHING_ROUTE, request.format, found.source, result.timings["total_s"])
    return result
