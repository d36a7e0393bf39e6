"""A Python client for the sam-serve HTTP API, synchronous (`SamClient`) and asyncio (`AsyncSamClient`).

Request bodies are built from the same pydantic models the server validates (`sam_core.wire.calls`), so a
request the schema refuses fails here, before it is sent. Both clients keep one httpx connection pool alive
across calls (a new connection costs ~20-30 ms, about half a decoder call) and should be closed, or used as
context managers.

    with SamClient("http://127.0.0.1:8000") as sam:
        sam.embed_image("photo.jpg", image_id="photo-1")
        answer = sam.segment_image(image_id="photo-1", point_coords=[[500, 300]], format="binary")
        answer.masks  # bool (1, H, W) at original-image pixels
"""

from __future__ import annotations

__all__ = [
    "AsyncSamClient",
    "ImageLike",
    "SamClient",
    "SamClientError",
    "SegmentArrays",
    "raise_for_error",
    "segment_request_body",
]

from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

import httpx
import numpy as np

from sam_core.async_client import AsyncSamClient
from sam_core.wire.calls import (
    DEFAULT_TIMEOUT_S,
    ImageLike,
    JsonFormat,
    SamClientError,
    SegmentArrays,
    client_headers,
    embed_request_body,
    everything_request_body,
    json_object,
    parse_embed_response,
    parse_everything_response,
    parse_models,
    parse_prompts_response,
    parse_readiness,
    parse_segment_response,
    prompts_request_body,
    raise_for_error,
    segment_request_body,
    with_model,
)
from sam_core.wire.everything import EVERYTHING_ROUTE, SegmentEverythingResponse
from sam_core.wire.schemas import (
    EMBED_ROUTE,
    MODELS_ROUTE,
    SEGMENT_ROUTE,
    EmbedImageResponse,
    SegmentImageResponse,
    SegmentPromptsResponse,
    ServedModelInfo,
)

# ---- the clients ---------------------------------------------------------------------------------------


class SamClient:
    """Synchronous client; one keep-alive connection pool per instance (not thread-safe to close mid-call).

    Args:
        base_url: the service root, e.g. "http://127.0.0.1:8000" (a route prefix may follow).
        timeout: seconds per request (None: no limit); the first request for an image runs the encoder.
        api_key: sent as `Authorization: Bearer <api_key>` when the service requires a token.
        model: the served model every call names (`models()` lists them); None: the service's default.

    Errors: `SamClientError` for any non-2xx answer; `httpx.HTTPError` subclasses when the service cannot be
    reached; `pydantic.ValidationError` (or ValueError/TypeError) for a request refused before sending.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        api_key: str | None = None,
        model: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=client_headers(api_key))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SamClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @overload
    def embed_image(
        self, image: ImageLike | None = ..., *, image_id: str | None = ..., format: Literal["metadata", "json"] = ...
    ) -> EmbedImageResponse: ...

    @overload
    def embed_image(
        self, image: ImageLike | None = ..., *, image_id: str | None = ..., format: Literal["binary"]
    ) -> np.ndarray: ...

    def embed_image(
        self, image: ImageLike | None = None, *, image_id: str | None = None, format: str = "metadata"
    ) -> EmbedImageResponse | np.ndarray:
        """Embed `image` (cached under `image_id`, else under its content hash).

        With image=None and an image_id, asks whether that image's embedding is cached (404 CacheMiss if not).

        Returns:
            metadata (default): EmbedImageResponse (image_id, original_size (h, w), cached, time).
            json: the same with `embeddings`, the seed's nested lists (~12.5 MB over the wire).
            binary: the float32 (1, 256, 64, 64) embedding, usable as `segment_image(embeddings=...)`.
        """
        body = embed_request_body(image, image_id=image_id, format=format)
        return parse_embed_response(self._http.post(EMBED_ROUTE, json=with_model(body, self.model)), format)

    @overload
    def segment_image(
        self,
        *,
        image: ImageLike | None = ...,
        image_id: str | None = ...,
        point_coords: Any = ...,
        point_labels: Any = ...,
        box: Any = ...,
        multimask_output: bool = ...,
        mask_input: Any = ...,
        use_mask_input_cache: bool = ...,
        has_mask_input: bool | None = ...,
        embeddings: np.ndarray | None = ...,
        orig_im_size: Any = ...,
        format: JsonFormat = ...,
    ) -> SegmentImageResponse: ...

    @overload
    def segment_image(
        self,
        *,
        image: ImageLike | None = ...,
        image_id: str | None = ...,
        point_coords: Any = ...,
        point_labels: Any = ...,
        box: Any = ...,
        multimask_output: bool = ...,
        mask_input: Any = ...,
        use_mask_input_cache: bool = ...,
        has_mask_input: bool | None = ...,
        embeddings: np.ndarray | None = ...,
        orig_im_size: Any = ...,
        format: Literal["binary"],
    ) -> SegmentArrays: ...

    def segment_image(
        self,
        *,
        image: ImageLike | None = None,
        image_id: str | None = None,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        multimask_output: bool = False,
        mask_input: Any = None,
        use_mask_input_cache: bool = True,
        has_mask_input: bool | None = None,
        embeddings: np.ndarray | None = None,
        orig_im_size: Any = None,
        format: str = "json",
    ) -> SegmentImageResponse | SegmentArrays:
        """Masks for a prompt. The embedding comes from `embeddings`, else the cache (`image_id`), else `image`.

        Args:
            image: the image (only needed when its embedding is not cached); see `ImageLike`.
            image_id: the id the image's embedding is cached under.
            point_coords: [[x, y], ...] in original-image pixels (a list or an (N, 2) array).
            point_labels: one per point, 1 foreground / 0 background; default all 1.
            box: [x0, y0, x1, y1] in original-image pixels.
            multimask_output: three masks with their predicted IoU instead of one.
            mask_input: the previous low-res mask: a float array of 256x256 logits in the low-res frame
                ((1, 1, 256, 256), (1, 256, 256) or (256, 256); sent as binary .npy), or json polygons in
                the 256 frame.
            use_mask_input_cache: with has_mask_input and no mask_input, use the image's last low-res logits.
            has_mask_input: default True iff mask_input is given.
            embeddings: a client-held float32 (1, 256, 64, 64) embedding (from `embed_image(format="binary")`);
                needs `orig_im_size`.
            orig_im_size: [height, width] of the original image.
            format: json (polygons), rle (COCO RLE), png (base64 1-bit PNGs) or binary (arrays).

        Returns:
            SegmentImageResponse for json/rle/png; SegmentArrays for binary.
        """
        body = segment_request_body(
            image=image,
            image_id=image_id,
            point_coords=point_coords,
            point_labels=point_labels,
            box=box,
            multimask_output=multimask_output,
            mask_input=mask_input,
            use_mask_input_cache=use_mask_input_cache,
            has_mask_input=has_mask_input,
            embeddings=embeddings,
            orig_im_size=orig_im_size,
            format=format,
        )
        return parse_segment_response(self._http.post(SEGMENT_ROUTE, json=with_model(body, self.model)), format)

    def segment_prompts(
        self, prompts: Sequence[Mapping[str, Any]], *, format: str = "json", **image: Any
    ) -> SegmentPromptsResponse | SegmentArrays:
        """Masks for several prompts on one image in one request, answered in order.

        Args:
            prompts: mappings with `point_coords`, `point_labels`, `box` and/or `mask_input`, each as the
                argument of the same name of `segment_image` (at most 256 prompts).
            format: json, rle, png or binary, as for `segment_image`.
            image: the image's source, as for `segment_image`: `image`, `image_id`, or `embeddings` with
                `orig_im_size`; and `multimask_output`, which applies to every prompt.

        Returns:
            SegmentPromptsResponse (`results`, one per prompt) for json/rle/png; for binary, SegmentArrays with
            masks (P, M, H, W), low_res_masks (P, M, 256, 256) and scores (P, M).
        """
        body = prompts_request_body(prompts, format=format, **image)
        return parse_prompts_response(self._http.post(SEGMENT_ROUTE, json=with_model(body, self.model)), format)

    def segment_everything(
        self, image: ImageLike | None = None, *, image_id: str | None = None, format: str = "rle", **options: Any
    ) -> SegmentEverythingResponse:
        """Every mask of an image, as `SamAutomaticMaskGenerator` finds them (by `image`, or the `image_id` of a
        cached embedding). `options`: the generator's parameters (`points_per_side`, `pred_iou_thresh`, ...,
        its defaults when not given); `format`: rle (COCO), json (polygons) or png. Closing the client (or its
        timeout) mid-run stops the run on the server."""
        body = everything_request_body(image, image_id=image_id, format=format, **options)
        return parse_everything_response(self._http.post(EVERYTHING_ROUTE, json=with_model(body, self.model)))

    def models(self) -> list[ServedModelInfo]:
        """GET /sam/models: the served models (id, model_type, default, checkpoint_sha256, model_id, loaded)."""
        return parse_models(self._http.get(MODELS_ROUTE))

    def healthz(self) -> dict[str, Any]:
        """GET /healthz: `{"status": "ok"}` while the ingress answers."""
        return json_object(self._http.get("/healthz"))

    def readyz(self) -> dict[str, Any]:
        """GET /readyz: `{"ready": bool, "model_id", "cache", ...}`; a 503 "not ready" is returned, not raised."""
        return parse_readiness(self._http.get("/readyz"))
