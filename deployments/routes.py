"""The ingress's HTTP routes: the SAM API, the labelling page's files and the health checks, each a thin
wrapper over the ingress's calls (the same ones handle callers use), made per replica by `sam_router` and `page_router`.

(No `from __future__ import annotations` here: FastAPI reads the request models from the signatures.)
"""

from typing import Any, Protocol

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from deployments.decoder_file import ONNX_MEDIA_TYPE, DecoderFiles
from deployments.http_errors import ERROR_RESPONSES
from deployments.limits import tenant_of
from deployments.model_routing import ModelRouting
from deployments.off_loop import OffLoopJSONRoute, off_loop
from deployments.ui import UI_PREFIX, VENDOR_PREFIX, UiFiles, embedding_headers, redirect_to_page
from sam_core.settings import MODEL_ID_PATTERN
from sam_core.wire.generator_schemas import EVERYTHING_ROUTE, SegmentEverythingRequest, SegmentEverythingResponse
from sam_core.wire.image_ids import DEFAULT_TENANT, check_client_image_id
from sam_core.wire.messages import EmbedResult, SegmentResult
from sam_core.wire.schemas import (
    DECODER_FILE_ROUTE,
    EMBED_ROUTE,
    MODELS_ROUTE,
    SEGMENT_ROUTE,
    EmbedImageRequest,
    EmbedImageResponse,
    SegmentImageRequest,
    SegmentImageResponse,
    SegmentPromptsResponse,
    ServedModelsResponse,
)


class IngressCalls(Protocol):
    """What of the ingress its routes use (so this module needs no import of the ingress)."""

    routing: ModelRouting
    decoder_files: DecoderFiles
    ui_files: UiFiles
    replica_id: str

    async def embed(self, request: EmbedImageRequest, tenant: str = DEFAULT_TENANT) -> EmbedResult: ...

    async def segment(self, request: SegmentImageRequest, tenant: str = DEFAULT_TENANT) -> SegmentResult: ...

    async def segment_everything(
        self, request: SegmentEverythingRequest, tenant: str = DEFAULT_TENANT
    ) -> SegmentResult: ...

    async def readiness(self) -> dict[str, Any]: ...


def sam_router(ingress: IngressCalls) -> APIRouter:
    """The SAM API of one ingress replica; a client's `image_id` is checked here (handle callers, such as the
    Label Studio wing, may use the service's own namespaces)."""
    router = APIRouter(route_class=OffLoopJSONRoute)

    @router.post(
        EMBED_ROUTE,
        response_model=EmbedImageResponse,
        responses={200: {"content": {"application/octet-stream": {}}}, **ERROR_RESPONSES},
    )
    async def embed_image(request: EmbedImageRequest, http: Request) -> Response:
        check_client_image_id(request.image_id)
        result = await ingress.embed(request, tenant_of(http))
        if result.npy is not None:
            headers = embedding_headers(result.response)
            return Response(content=result.npy, media_type="application/octet-stream", headers=headers)
        body: dict[str, Any] = result.response.model_dump(exclude={"embeddings"})
        if request.format == "metadata":
            return Response(content=orjson.dumps(body), media_type="application/json")
        # The Roboflow-compatible field: the embedding as nested lists, written by orjson from the float32 array
        # directly, off the loop.
        body["embeddings"] = result.embedding
        content = await off_loop(orjson.dumps, body, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(content=content, media_type="application/json")

    @router.post(
        SEGMENT_ROUTE,
        responses={
            200: {"model": SegmentImageResponse | SegmentPromptsResponse, "content": {"application/octet-stream": {}}},
            **ERROR_RESPONSES,
        },
    )
    async def segment_image(request: SegmentImageRequest, http: Request) -> Response:
        check_client_image_id(request.image_id)
        result = await ingress.segment(request, tenant_of(http))
        headers = {
            "X-Process-Time": f"{result.timings.get('total_s', 0.0):.6f}",
            "X-Decoder-Replica": result.replica or "",
            "X-Ingress-Replica": ingress.replica_id,
            # W3C Server-Timing (ms): where the time went, readable in browsers' dev tools and by benchmarks.
            "Server-Timing": ", ".join(
                f"{name.removesuffix('_s')};dur={seconds * 1e3:.2f}" for name, seconds in result.timings.items()
            ),
        }
        if isinstance(result.body, bytes):
            return Response(content=result.body, media_type=result.media_type, headers=headers)
        return JSONResponse(result.body, headers=headers)

    @router.post(EVERYTHING_ROUTE, response_model=SegmentEverythingResponse, responses=ERROR_RESPONSES)
    async def segment_everything_route(request: SegmentEverythingRequest, http: Request) -> Response:
        """Every mask of an image: the request holds the generator's parameters; a client that disconnects
        stops the run at its next batch of points."""
        check_client_image_id(request.image_id)
        result = await ingress.segment_everything(request, tenant_of(http))
        return JSONResponse(result.body, headers={"X-Decoder-Replica": result.replica or ""})

    @router.get(
        DECODER_FILE_ROUTE,
        response_class=Response,
        responses={
            200: {"content": {ONNX_MEDIA_TYPE: {}}},
            304: {"description": "the client's copy is current"},
            404: ERROR_RESPONSES[404],
        },
    )
    async def decoder_file(
        request: Request,
        multimask: bool = False,
        low_res: bool = False,
        model: str | None = Query(None, pattern=MODEL_ID_PATTERN),
    ) -> Response:
        """A served model's decoder graph (ONNX), to decode clicks in the client on embeddings from
        `/sam/embed_image` (binary); `multimask`: the three-mask graph (its masks 1-3 are SamPredictor's);
        `low_res`: the graph the service runs, with scores and 256x256 logits only (upscale them as the service
        does to get its answer: bilinear to 1024x1024, crop the padding, bilinear to the image's size);
        `model`: the served model's id (unset: the default)."""
        named = ingress.routing.named(model)
        return await ingress.decoder_files.response(request, named, multimask=multimask, low_res=low_res)

    @router.get(MODELS_ROUTE, response_model=ServedModelsResponse, responses=ERROR_RESPONSES)
    async def served_models() -> ServedModelsResponse:
        """The served models: id, architecture, checkpoint sha256, the id in cache keys once a decoder resolved
        it, and how many encoder and decoder replicas hold each loaded (null without a shared cache)."""
        return await ingress.routing.listing()

    return router


def page_router(ingress: IngressCalls) -> APIRouter:
    """The labelling page's files and the health checks."""
    router = APIRouter(route_class=OffLoopJSONRoute)

    @router.get("/", include_in_schema=False)
    async def root(request: Request) -> Response:
        return redirect_to_page(request)

    @router.get(UI_PREFIX, include_in_schema=False)
    @router.get(UI_PREFIX + "{name}", include_in_schema=False)
    async def page_file(request: Request, name: str = "index.html") -> Response:
        """The labelling page: embeds an image here, then decodes clicks in the browser (or on the server)."""
        return await ingress.ui_files.response(request, ingress.ui_files.page_path(name))

    @router.get(VENDOR_PREFIX + "{name}", include_in_schema=False)
    async def page_vendor_file(request: Request, name: str) -> Response:
        return await ingress.ui_files.response(request, ingress.ui_files.vendor_path(name))

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        responses={
            200: {"description": "ready: the model is resolved and the cache answers"},
            503: {"description": "not ready: no decoder answered, or the cache is down"},
        },
    )
    async def readyz() -> JSONResponse:
        """Readiness: the model is resolved and the cache answers."""
        checks = await ingress.readiness()
        return JSONResponse(status_code=200 if checks["ready"] else 503, content=checks)

    return router
