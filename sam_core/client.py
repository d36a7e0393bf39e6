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
from typing import TYPE_CHECKING, Any, Literal, overload

import httpx
import numpy as np

from sam_core.async_client import AsyncSamClient
from sam_core.client_core import HEALTHZ_CALL, MODELS_CALL, READYZ_CALL, AnswerT, Call, ClientCore, SegmentImageFields
from sam_core.wire.answers import SamClientError, SegmentArrays, raise_for_error
from sam_core.wire.calls import ImageLike, JsonFormat, segment_request_body
from sam_core.wire.generator_schemas import SegmentEverythingResponse
from sam_core.wire.schemas import EmbedImageResponse, SegmentImageResponse, SegmentPromptsResponse, ServedModelInfo

if TYPE_CHECKING:
    from typing_extensions import Unpack

# ---- the clients ---------------------------------------------------------------------------------------


class SamClient(ClientCore[httpx.Client]):
    """Synchronous client; one keep-alive connection pool per instance (not thread-safe to close mid-call).

    Args:
        base_url: the service root, e.g. "http://127.0.0.1:8000" (a route prefix may follow).
        timeout: seconds per request (None: no limit); the first request for an image runs the encoder.
        api_key: sent as `Authorization: Bearer <api_key>` when the service requires a token.
        model: the served model every call names (`models()` lists them); None: the service's default.

    Errors: `SamClientError` for any non-2xx answer; `httpx.HTTPError` subclasses when the service cannot be
    reached; `pydantic.ValidationError` (or ValueError/TypeError) for a request refused before sending.
    """

    @staticmethod
    def _connection_pool(base_url: str, timeout: float | None, headers: dict[str, str]) -> httpx.Client:
        return httpx.Client(base_url=base_url, timeout=timeout, headers=headers)

    def _send(self, call: Call[AnswerT]) -> AnswerT:
        return call.read(self._http.request(call.method, call.route, json=call.body))

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
            json: the same with `embeddings`, Roboflow inference's nested lists (~12.5 MB over the wire).
            binary: the float32 (1, 256, 64, 64) embedding, usable as `segment_image(embeddings=...)`.
        """
        return self._send(self._embed_call(image, image_id=image_id, format=format))

    @overload
    def segment_image(
        self, *, format: JsonFormat = ..., **fields: Unpack[SegmentImageFields]
    ) -> SegmentImageResponse: ...

    @overload
    def segment_image(self, *, format: Literal["binary"], **fields: Unpack[SegmentImageFields]) -> SegmentArrays: ...

    def segment_image(
        self, *, format: str = "json", **fields: Unpack[SegmentImageFields]
    ) -> SegmentImageResponse | SegmentArrays:
        """Masks for a prompt. The embedding comes from `embeddings`, else the cache (`image_id`), else `image`.

        Keyword Args:
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
        return self._send(self._segment_call(format=format, **fields))

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
        return self._send(self._prompts_call(prompts, format=format, **image))

    def segment_everything(
        self, image: ImageLike | None = None, *, image_id: str | None = None, format: str = "rle", **options: Any
    ) -> SegmentEverythingResponse:
        """Every mask of an image, as `SamAutomaticMaskGenerator` finds them (by `image`, or the `image_id` of a
        cached embedding). `options`: the generator's parameters (`points_per_side`, `pred_iou_thresh`, ...,
        its defaults when not given); `format`: rle (COCO), json (polygons) or png. Closing the client (or its
        timeout) mid-run stops the run on the server."""
        return self._send(self._everything_call(image, image_id=image_id, format=format, **options))

    def models(self) -> list[ServedModelInfo]:
        """GET /sam/models: the served models (id, model_type, default, checkpoint_sha256, model_id, loaded)."""
        return self._send(MODELS_CALL)

    def healthz(self) -> dict[str, Any]:
        """GET /healthz: `{"status": "ok"}` while the ingress answers."""
        return self._send(HEALTHZ_CALL)

    def readyz(self) -> dict[str, Any]:
        """GET /readyz: `{"ready": bool, "model_id", "cache", ...}`; a 503 "not ready" is returned, not raised."""
        return self._send(READYZ_CALL)
