"""A request turned into a decoder's job: the prompt as plain lists, and the client's own embedding or mask
input decoded and checked (the CPU-heavy parts: callers run them off the event loop).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sam_core.embedding import ImageEmbedding, round_to_storage
from sam_core.errors import InvalidInput
from sam_core.frames import EMBEDDING_SHAPE, MASK_INPUT_SHAPE, preprocess_shape
from sam_core.settings import ImageLimits
from sam_core.wire.image_checks import check_image_size
from sam_core.wire.masks import mask_input_array, polygons_to_mask
from sam_core.wire.messages import JobPrompt, SegmentJob
from sam_core.wire.npy import decode_npy_base64
from sam_core.wire.schemas import SINGLE_PROMPT_FIELDS, SegmentImageRequest, SegmentPrompt


def segment_job(request: SegmentImageRequest) -> SegmentJob:
    """The decoder's job for a segment request: its prompt (or prompts) and options. The mask inputs and a
    client's embedding are added by the caller, decoded off the loop (`explicit_mask_input`,
    `prompt_mask_inputs`, `client_embedding`).

    Raises InvalidInput naming `prompts` when a request gives both `prompts` and single-prompt fields.
    """
    prompts = None
    if request.prompts is not None:
        given = sorted(SINGLE_PROMPT_FIELDS & request.model_fields_set)
        if given:
            raise InvalidInput(
                f"send either prompts or the single-prompt fields, not both (also given: {', '.join(given)})",
                field="prompts",
            )
        prompts = [JobPrompt(**_plain_prompt(prompt)) for prompt in request.prompts]
    return SegmentJob(
        cache_key=request.image_id,
        **_plain_prompt(request),
        has_mask_input=request.has_mask_input,
        use_mask_input_cache=request.use_mask_input_cache and prompts is None,
        multimask_output=request.multimask_output,
        format=request.format,
        prompts=prompts,
    )


def _plain_prompt(prompt: SegmentImageRequest | SegmentPrompt) -> dict[str, Any]:
    """A prompt's points, labels and box as plain floats, the way they travel to a decoder replica."""
    return {
        "point_coords": [[float(c) for c in pair] for pair in prompt.point_coords],
        "point_labels": [float(label) for label in prompt.point_labels],
        "box": None if prompt.box is None else [float(c) for c in prompt.box],
    }


def client_embedding(request: SegmentImageRequest, limits: ImageLimits) -> ImageEmbedding:
    """A client's embedding and `orig_im_size`, checked (CPU-heavy for a JSON list: call off the loop).

    Rounded to the cache's storage precision as every embedding is, so the embeddings a client got from
    the embed route (already rounded) decode exactly as the image's cached entry does.
    """
    if request.orig_im_size is None:
        raise InvalidInput("required with embeddings: [height, width] of the original image", field="orig_im_size")
    original_size = (int(request.orig_im_size[0]), int(request.orig_im_size[1]))
    # The decoder upsamples its masks to this size: an unchecked one could ask for any output size.
    check_image_size(original_size, limits, field="orig_im_size")
    if request.embeddings_format == "binary":
        if not isinstance(request.embeddings, str):
            raise InvalidInput("binary embeddings are a base64 .npy string", field="embeddings")
        array = decode_npy_base64(request.embeddings, field="embeddings", expected_shape=EMBEDDING_SHAPE)
    else:
        try:
            array = np.asarray(request.embeddings, dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"not a numeric array: {exc}", field="embeddings") from exc
        if array.shape != EMBEDDING_SHAPE:
            raise InvalidInput(f"must have shape {EMBEDDING_SHAPE}, got {array.shape}", field="embeddings")
        if not np.isfinite(array).all():
            raise InvalidInput("has non-finite values", field="embeddings")
    return ImageEmbedding(
        embedding=round_to_storage(array),
        original_size=original_size,
        input_size=preprocess_shape(original_size),
    )


def explicit_mask_input(request: SegmentImageRequest) -> np.ndarray | None:
    """The request's explicit mask input as (1, 1, 256, 256) float32, or None (call off the loop)."""
    if not request.has_mask_input or request.mask_input is None:
        return None
    return _mask_input(request.mask_input, request.mask_input_format, "mask_input")


def prompt_mask_inputs(request: SegmentImageRequest, job: SegmentJob) -> None:
    """Decode the mask input of each of the request's `prompts` into the job's (call off the loop)."""
    assert request.prompts is not None, "a request with prompts"
    assert job.prompts is not None, "a job built from a request with prompts"
    for index, (prompt, job_prompt) in enumerate(zip(request.prompts, job.prompts, strict=True)):
        if prompt.mask_input is not None:
            job_prompt.mask_input = _mask_input(
                prompt.mask_input, prompt.mask_input_format, f"prompts.{index}.mask_input"
            )


def _mask_input(value: str | list[Any], fmt: str, field: str) -> np.ndarray:
    """A mask input as sent (json polygons in the 256 frame, or base64 .npy logits) as (1, 1, 256, 256)."""
    if fmt == "binary":
        if not isinstance(value, str):
            raise InvalidInput("binary mask_input is a base64 .npy string", field=field)
        array = decode_npy_base64(value, field=field, expected_shape=MASK_INPUT_SHAPE)
        return np.ascontiguousarray(array, dtype=np.float32)
    return mask_input_array(polygons_to_mask(value, field=field))
