"""The asyncio client (`AsyncSamClient`): `SamClient`'s twin, its methods coroutines; image files are read and
PNG-encoded in a worker thread so the event loop keeps running meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import httpx
import numpy as np

from sam_core.client_core import HEALTHZ_CALL, MODELS_CALL, READYZ_CALL, AnswerT, Call, ClientCore, SegmentImageFields
from sam_core.wire.answers import SegmentArrays
from sam_core.wire.calls import ImageLike, JsonFormat
from sam_core.wire.generator_schemas import SegmentEverythingResponse
from sam_core.wire.schemas import EmbedImageResponse, SegmentImageResponse, SegmentPromptsResponse, ServedModelInfo

if TYPE_CHECKING:
    from typing_extensions import Unpack


class AsyncSamClient(ClientCore[httpx.AsyncClient]):
    """The asyncio twin of `SamClient` (same arguments, methods and errors; methods are coroutines).

    Image files are read and PNG-encoded in a worker thread so the event loop keeps running meanwhile.
    """

    @staticmethod
    def _connection_pool(base_url: str, timeout: float | None, headers: dict[str, str]) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers)

    async def _send(self, call: Call[AnswerT]) -> AnswerT:
        return call.read(await self._http.request(call.method, call.route, json=call.body))

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
        return await self._send(await asyncio.to_thread(self._embed_call, image, image_id=image_id, format=format))

    @overload
    async def segment_image(
        self, *, format: JsonFormat = ..., **fields: Unpack[SegmentImageFields]
    ) -> SegmentImageResponse: ...

    @overload
    async def segment_image(
        self, *, format: Literal["binary"], **fields: Unpack[SegmentImageFields]
    ) -> SegmentArrays: ...

    async def segment_image(
        self, *, format: str = "json", **fields: Unpack[SegmentImageFields]
    ) -> SegmentImageResponse | SegmentArrays:
        """See `SamClient.segment_image`."""
        # Only an image needs the worker thread (file read, PNG encoding); prompts are cheap.
        if fields.get("image") is None:
            return await self._send(self._segment_call(format=format, **fields))
        return await self._send(await asyncio.to_thread(lambda: self._segment_call(format=format, **fields)))

    async def segment_prompts(
        self, prompts: Sequence[Mapping[str, Any]], *, format: str = "json", **image: Any
    ) -> SegmentPromptsResponse | SegmentArrays:
        """See `SamClient.segment_prompts`."""
        return await self._send(await asyncio.to_thread(lambda: self._prompts_call(prompts, format=format, **image)))

    async def segment_everything(
        self, image: ImageLike | None = None, *, image_id: str | None = None, format: str = "rle", **options: Any
    ) -> SegmentEverythingResponse:
        """See `SamClient.segment_everything` (cancelling the coroutine stops the run on the server)."""
        call = await asyncio.to_thread(
            lambda: self._everything_call(image, image_id=image_id, format=format, **options)
        )
        return await self._send(call)

    async def models(self) -> list[ServedModelInfo]:
        """GET /sam/models: the served models (id, model_type, default, checkpoint_sha256, model_id, loaded)."""
        return await self._send(MODELS_CALL)

    async def healthz(self) -> dict[str, Any]:
        """See `SamClient.healthz`."""
        return await self._send(HEALTHZ_CALL)

    async def readyz(self) -> dict[str, Any]:
        """See `SamClient.readyz`."""
        return await self._send(READYZ_CALL)
