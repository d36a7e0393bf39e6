"""The asyncio client (`AsyncSamClient`): `SamClient`'s twin, its methods coroutines; image files are read and
PNG-encoded in a worker thread so the event loop keeps running meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Literal, overload

import httpx
import numpy as np

from sam_core.wire.calls import (
    DEFAULT_TIMEOUT_S,
    ImageLike,
    JsonFormat,
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


class AsyncSamClient:
    """The asyncio twin of `SamClient` (same arguments, methods and errors; methods are coroutines).

    Image files are read and PNG-encoded in a worker thread so the event loop keeps running meanwhile.
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
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=client_headers(api_key))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @overload
    async def embed_image(
        self, image: ImageLike | None = ..., *, image_id: str | None = ..., format: Literal["metadata", "json"] = ...
    ) -> EmbedImageResponse: ...

    @overload
    async def embed_image(
        self, image: ImageLike | None = ..., *, image_id: str | None = ..., format: Literal["binary"]
    ) -> np.ndarray: ...

    async def embed_image(
        self, image: ImageLike | None = None, *, image_id: str | None = None, format: str = "metadata"
    ) -> EmbedImageResponse | np.ndarray:
        """See `SamClient.embed_image`."""
        body = await asyncio.to_thread(embed_request_body, image, image_id=image_id, format=format)
        return parse_embed_response(await self._http.post(EMBED_ROUTE, json=with_model(body, self.model)), format)

    @overload
    async def segment_image(
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
    async def segment_image(
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

    async def segment_image(
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
        """See `SamClient.segment_image`."""
        fields = {
            "image": image,
            "image_id": image_id,
            "point_coords": point_coords,
            "point_labels": point_labels,
            "box": box,
            "multimask_output": multimask_output,
            "mask_input": mask_input,
            "use_mask_input_cache": use_mask_input_cache,
            "has_mask_input": has_mask_input,
            "embeddings": embeddings,
            "orig_im_size": orig_im_size,
            "format": format,
        }
        # Only an image needs the worker thread (file read, PNG encoding); prompts are cheap.
        if image is None:
            body = segment_request_body(**fields)
        else:
            body = await asyncio.to_thread(lambda: segment_request_body(**fields))
        return parse_segment_response(await self._http.post(SEGMENT_ROUTE, json=with_model(body, self.model)), format)

    async def segment_prompts(
        self, prompts: Sequence[Mapping[str, Any]], *, format: str = "json", **image: Any
    ) -> SegmentPromptsResponse | SegmentArrays:
        """See `SamClient.segment_prompts`."""
        body = await asyncio.to_thread(lambda: prompts_request_body(prompts, format=format, **image))
        return parse_prompts_response(await self._http.post(SEGMENT_ROUTE, json=with_model(body, self.model)), format)

    async def segment_everything(
        self, image: ImageLike | None = None, *, image_id: str | None = None, format: str = "rle", **options: Any
    ) -> SegmentEverythingResponse:
        """See `SamClient.segment_everything` (cancelling the coroutine stops the run on the server)."""
        body = await asyncio.to_thread(
            lambda: everything_request_body(image, image_id=image_id, format=format, **options)
        )
        return parse_everything_response(await self._http.post(EVERYTHING_ROUTE, json=with_model(body, self.model)))

    async def models(self) -> list[ServedModelInfo]:
        """GET /sam/models: the served models (id, model_type, default, checkpoint_sha256, model_id, loaded)."""
        return parse_models(await self._http.get(MODELS_ROUTE))

    async def healthz(self) -> dict[str, Any]:
        """See `SamClient.healthz`."""
        return json_object(await self._http.get("/healthz"))

    async def readyz(self) -> dict[str, Any]:
        """See `SamClient.readyz`."""
        return parse_readiness(await self._http.get("/readyz"))
