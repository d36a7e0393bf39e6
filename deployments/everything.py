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
from deployments.models import ServedModels
from deployments.new_images import NewImages
from deployments.off_loop import off_loop
from sam_core.cache import EmbeddingCache
from sam_core.embedding import EncoderInput, ImageEmbedding, same_content
from sam_core.errors import CacheMiss, CacheUnavailable, Overloaded
from sam_core.model.everything import check_grid, check_options, check_work, crop_boxes
from sam_core.settings import Settings
from sam_core.wire.everything import (
    EVERYTHING_ROUTE,
    EverythingJob,
    SegmentEverythingRequest,
    crop_cache_key,
)
from sam_core.wire.images import EncodedImage, crop_encoder_inputs
from sam_core.wire.schemas import SegmentResult


class SamIngress(Protocol):
    """What of the ingress a run uses: its settings, cache, image steps and decoder handle (so this module
    needs no import of the ingress, which imports it)."""

    settings: Settings
    cache: EmbeddingCache
    images: NewImages
    models: ServedModels


async def _cached(
    ingress: SamIngress, model: str, key: str, *, inline: bool, has_image: bool, content_id: str = ""
) -> ImageEmbedding | bool:
    """The cached embedding (`inline`: the ingress's own per-process cache) or whether the shared cache holds
    it, of the image `content_id` when given (the bytes sent win); False when it cannot say and the image is at
    hand."""
    model_id = await ingress.models.model_id(model)
    try:
        if inline:
            found = await ingress.cache.get_embedding(model_id, key)
            return found if found is not None and same_content(found.content_id, content_id) else False
        return await ingress.cache.has_embedding(model_id, key, content_id)
    except CacheUnavailable as exc:
        if not has_image:
            raise CacheUnavailable(
                "the embedding cache is unavailable: resend the request with the image", field="image_id"
            ) from exc
        return False


async def _crop_embeddings(
    ingress: SamIngress,
    model: str,
    request: SegmentEverythingRequest,
    key: str,
    size: tuple[int, int],
    encoded: EncodedImage | None,
) -> tuple[list[str], list[ImageEmbedding | None]]:
    """Every crop's cache key (the whole image's first) and the embeddings of crops 1.. (None: cached)."""
    options = request.options()
    # Checked before any crop is embedded (the decoder checks again, whichever way a job comes).
    check_options(size, options, max_batch_bytes=ingress.settings.everything_max_batch_bytes)
    boxes = crop_boxes(size, options)
    keys = [crop_cache_key(key, box, size) for box in boxes]
    inline = not ingress.cache.shared
    embeddings: list[ImageEmbedding | None] = []
    crops: list[EncoderInput] | None = None
    for index, (box, crop_key) in enumerate(zip(boxes[1:], keys[1:], strict=True), start=1):
        content_id = "" if encoded is None else encoded.content_id
        cached = await _cached(
            ingress, model, crop_key, inline=inline, has_image=encoded is not None, content_id=content_id
        )
        if cached is not False:
            embeddings.append(cached if isinstance(cached, ImageEmbedding) else None)
            continue
        if encoded is None:
            raise CacheMiss(
                f"crop_n_layers {options.crop_n_layers} needs the image: crop {index} {list(box)} is not cached",
                field="image",
            )
        if crops is None:
            crops = await off_loop(crop_encoder_inputs, encoded, ingress.settings.images, boxes, pool="image")
        embeddings.append(await ingress.images.encode(model, crops[index], crop_key))
    return keys, embeddings


async def segment_everything(ingress: SamIngress, request: SegmentEverythingRequest, tenant: str) -> SegmentResult:
    """Every mask of the image, as `SamAutomaticMaskGenerator` finds them; the body is JSON-ready. `tenant`: whose
    `image_id`s these are."""
    started = time.perf_counter()
    model = ingress.models.resolve(request)
    options = request.options()
    check_grid(options)
    check_work(options, ingress.settings.everything_max_points)
    inline = not ingress.cache.shared
    ids, encoded = await ingress.images.keyed(request, tenant)
    key = ids.cache_key
    content_id = "" if encoded is None else encoded.content_id
    whole = await _cached(ingress, model, key, inline=inline, has_image=encoded is not None, content_id=content_id)
    source = "cache"
    if whole is False:
        if encoded is None:
            raise CacheMiss("no cached embedding for this image_id: send the image", field="image_id")
        found, source = await ingress.images.embed_once(model, key, encoded, {}, inline=True)
        assert found is not None, "inline=True gives the embedding"
        whole = found
    elif whole is True and options.crop_n_layers > 0:
        # Only crops need the image's size here (the decoder reads the embedding itself).
        embedding = await ingress.cache.get_embedding(await ingress.models.model_id(model), key)
        if embedding is None:
            raise CacheMiss("the cached embedding was evicted: send the image", field="image_id")
        whole = embedding
    embeddings: list[ImageEmbedding | None] = [whole if isinstance(whole, ImageEmbedding) else None]
    if source == "cache" and not inline:
        embeddings = [None]
    keys = [key]
    if options.crop_n_layers > 0:
        assert isinstance(whole, ImageEmbedding)
        keys, more = await _crop_embeddings(ingress, model, request, key, whole.original_size, encoded)
        embeddings += more
    job = EverythingJob(crop_keys=keys, options=options, format=request.format, embeddings=embeddings)
    try:
        result: SegmentResult = await ingress.models.decoder(model, key).segment_everything.remote(job)
    except BackPressureError as exc:
        raise Overloaded("the decoders are at capacity: retry shortly") from exc
    assert isinstance(result.body, dict), "segment everything answers json"
    result.body = {"image_id": ids.reply_id, **result.body, "time": time.perf_counter() - started}
    result.timings["total_s"] = time.perf_counter() - started
    metrics.request_served(EVERYTHING_ROUTE, request.format, source, result.timings["total_s"])
    return result
