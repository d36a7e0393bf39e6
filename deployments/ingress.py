"""SamIngress: the HTTP API (FastAPI) and the handle API; validates, decodes images, routes to encoder/decoder.

(No `from __future__ import annotations` here: FastAPI must see the request models as real types
through the signatures Ray Serve rewrites.)

The same `embed` and `segment` methods serve HTTP routes and `DeploymentHandle` calls (Ray Data pipelines),
so handle callers skip the JSON round trip but get the same validation and errors.
"""

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import metrics
from deployments.limits import BearerAuth, BodySizeLimit
from sam_core.embedding import EMBEDDING_SHAPE, ImageEmbedding
from sam_core.errors import CacheMiss, CacheUnavailable, InvalidInput, Overloaded, SamServeError, UnknownModel
from sam_core.images import LoadedImage, load_image
from sam_core.masks import MASK_INPUT_SHAPE, decode_npy_base64, embedding_to_npy, mask_input_array, polygons_to_mask
from sam_core.prompts import preprocess_shape
from sam_core.schemas import (
    EmbedImageRequest,
    EmbedImageResponse,
    ErrorResponse,
    ImagePayload,
    SegmentImageRequest,
    SegmentImageResponse,
    SegmentJob,
    SegmentResult,
)
from sam_core.service import cache_from_settings
from sam_core.settings import Settings

log = logging.getLogger("ray.serve")

api = FastAPI(
    title="sam-serve",
    description="Segment Anything on Ray Serve: cached image embeddings, prompts answered by any decoder replica.",
    version="0.1.0",
)

CONTENT_HASH_PREFIX = "sha256:"
EMBED_ROUTE = "/sam/embed_image"
SEGMENT_ROUTE = "/sam/segment_image"
# The error statuses the API routes answer, documented in OpenAPI with the one error body they all use.
_ERROR_STATUSES = {
    400: "malformed JSON, base64 or image",
    401: "missing or wrong bearer token (when auth is on)",
    403: "image source refused (file paths; URLs when disabled or not public)",
    404: "image_id not cached (send the image), or unknown sam_version_id",
    413: "body, image bytes or pixels over the limits",
    415: "image format not accepted",
    422: "a field has the wrong type or value",
    500: "internal error (logged on the server)",
    503: "cache unavailable for an id-only request, a replica failed, or at capacity: retry",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in _ERROR_STATUSES.items()
}
_FIELD_NAMES = frozenset(
    name for model in (EmbedImageRequest, SegmentImageRequest, ImagePayload) for name in model.model_fields
)


@dataclass
class EmbedResult:
    """What `embed` returns to handle callers: the response, plus the .npy bytes when format is binary."""

    response: EmbedImageResponse
    npy: bytes | None = None


def _route(request: Request) -> str:
    """The matched route's template (a fixed set, fit for a metric tag), or "unmatched"."""
    return str(getattr(request.scope.get("route"), "path", "unmatched"))


def _error_response(request: Request, status: int, error: str, field: str | None, reason: str) -> JSONResponse:
    metrics.error_response(error, _route(request))
    return JSONResponse(status_code=status, content={"error": error, "field": field, "reason": reason})


@api.exception_handler(SamServeError)
async def _sam_error(request: Request, exc: SamServeError) -> JSONResponse:
    # Ray re-raises a replica's exception as a subclass of it; report the original class name.
    name = next((c.__name__ for c in type(exc).__mro__ if c.__module__ == "sam_core.errors"), "SamServeError")
    return _error_response(request, exc.http_status, name, exc.field, exc.reason)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return _error_response(request, 400, "InvalidJSON", None, f"request body is not valid JSON: {first.get('msg')}")
    # pydantic appends union-member tags ("int", "float", ...) to a location; a field path has only names
    # and list indices.
    reason = str(first.get("msg", "invalid value"))
    if first.get("type") == "extra_forbidden":
        field = ".".join(location) or None
        reason = "unknown field (check its spelling)"
    else:
        field = ".".join(part for part in location if part.isdigit() or part in _FIELD_NAMES) or None
    return _error_response(request, 422, "InvalidInput", field, reason)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error_response(request, exc.status_code, "HTTPError", None, str(exc.detail))


@api.exception_handler(RayActorError)
async def _replica_died(request: Request, exc: RayActorError) -> JSONResponse:
    return _error_response(request, 503, "ReplicaUnavailable", None, "a model replica failed during the request: retry")


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Counted and answered with the API's error body, never a traceback; Starlette still re-raises, so Ray
    # Serve logs the traceback and counts the 500.
    return _error_response(request, 500, "InternalError", None, "internal error (logged on the server)")


api.add_middleware(BodySizeLimit)
api.add_middleware(BearerAuth)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_queued_requests=256)
@serve.ingress(api)
class SamIngress:
    """Validates requests, decodes images, and routes: encoder only on a cache miss, decoder for prompts."""

    def __init__(self, encoder: DeploymentHandle, decoder: DeploymentHandle, settings: Settings) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.settings = settings
        self.cache = cache_from_settings(settings)
        self.cache.read_observer = metrics.cache_read
        BodySizeLimit.max_bytes = settings.max_body_bytes
        BearerAuth.token = settings.auth_token.get_secret_value().encode() if settings.auth_token else None
        self._model_id: str | None = None

    async def model_id(self) -> str:
        """The served model's identity, asked of a decoder once (it resolves the checkpoint)."""
        if self._model_id is None:
            self._model_id = str(await self.decoder.model_id.remote())
        return self._model_id

    # ---- shared by HTTP and handle calls ----------------------------------------------------------------

    def _check_version(self, sam_version_id: str | None) -> None:
        if sam_version_id not in (None, "", self.settings.model_type):
            raise UnknownModel(
                f"this service serves {self.settings.model_type!r}, not {sam_version_id!r}", field="sam_version_id"
            )

    def _load_image(self, request: EmbedImageRequest | SegmentImageRequest) -> LoadedImage:
        if request.image is None:
            raise InvalidInput("send the image (or an image_id whose embedding is cached)", field="image")
        return load_image(request.image.type, request.image.value, self.settings.images, field="image")

    async def _encode(self, image: LoadedImage, cache_key: str) -> ImageEmbedding:
        try:
            embedding: ImageEmbedding = await self.encoder.embed.remote(image.pixels, cache_key)
        except BackPressureError as exc:
            raise Overloaded("the encoder is at capacity: retry shortly") from exc
        if not self.cache.shared:
            # Without Redis every process has its own cache: the ingress keeps the embeddings and sends them
            # inline, so follow-ups work whichever decoder replica answers.
            await self.cache.put_embedding(await self.model_id(), cache_key, embedding)
        return embedding

    async def embed(self, request: EmbedImageRequest) -> EmbedResult:
        """Embed an image unless its embedding is cached; returns metadata (and the .npy when binary)."""
        started = time.perf_counter()
        self._check_version(request.sam_version_id)
        model_id = await self.model_id()
        image = None
        key = request.image_id
        if key is None:
            image = self._load_image(request)
            key = CONTENT_HASH_PREFIX + image.content_sha256
        cached = None
        try:
            cached = await self.cache.get_embedding(model_id, key)
        except CacheUnavailable as exc:
            if request.image is None:
                raise CacheUnavailable(
                    "the embedding cache is unavailable: resend the request with the image", field="image_id"
                ) from exc
        if cached is None and request.image is None:
            raise CacheMiss("no cached embedding for this image_id: send the image", field="image_id")
        embedding = cached
        if embedding is None:
            embedding = await self._encode(image or self._load_image(request), key)
        response = EmbedImageResponse(
            image_id=key,
            original_size=embedding.original_size,
            cached=cached is not None,
            time=time.perf_counter() - started,
        )
        npy = embedding_to_npy(embedding.embedding) if request.format == "binary" else None
        source = "encoder" if cached is None else "cache"
        metrics.request_served(EMBED_ROUTE, request.format, source, time.perf_counter() - started)
        return EmbedResult(response=response, npy=npy)

    def _client_embedding(self, request: SegmentImageRequest) -> ImageEmbedding:
        if request.orig_im_size is None or len(request.orig_im_size) != 2 or min(request.orig_im_size) < 1:
            raise InvalidInput("required with embeddings: [height, width] of the original image", field="orig_im_size")
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
        original_size = (int(request.orig_im_size[0]), int(request.orig_im_size[1]))
        return ImageEmbedding(
            embedding=np.ascontiguousarray(array, dtype=np.float32),
            original_size=original_size,
            input_size=preprocess_shape(original_size),
        )

    @staticmethod
    def _mask_input(request: SegmentImageRequest) -> np.ndarray | None:
        if not request.has_mask_input or request.mask_input is None:
            return None
        if request.mask_input_format == "binary":
            if not isinstance(request.mask_input, str):
                raise InvalidInput("binary mask_input is a base64 .npy string", field="mask_input")
            array = decode_npy_base64(request.mask_input, field="mask_input", expected_shape=MASK_INPUT_SHAPE)
            return np.ascontiguousarray(array, dtype=np.float32)
        return mask_input_array(polygons_to_mask(request.mask_input, field="mask_input"))

    async def segment(self, request: SegmentImageRequest) -> SegmentResult:
        """Masks for the request's prompt; the body is JSON-ready (json/rle/png) or npz bytes (binary)."""
        started = time.perf_counter()
        self._check_version(request.sam_version_id)
        job = SegmentJob(
            cache_key=request.image_id,
            point_coords=[[float(c) for c in pair] for pair in request.point_coords],
            point_labels=[float(label) for label in request.point_labels],
            box=None if request.box is None else [float(c) for c in request.box],
            has_mask_input=request.has_mask_input,
            mask_input=self._mask_input(request),
            use_mask_input_cache=request.use_mask_input_cache,
            multimask_output=request.multimask_output,
            format=request.format,
        )
        if request.embeddings is not None:
            job.embedding = self._client_embedding(request)
            return self._finish(await self._decode(job), job, started, source="client")

        image: LoadedImage | None = None
        stages: dict[str, float] = {}
        if job.cache_key is None:
            image = self._load_image_timed(request, stages)
            job.cache_key = CONTENT_HASH_PREFIX + image.content_sha256
        if not self.cache.shared:
            job.embedding = await self.cache.get_embedding(await self.model_id(), job.cache_key)
        elif request.image is not None and not await self._probably_cached(job.cache_key):
            # A new image goes straight to the encoder: asking a decoder first costs a whole handle hop.
            return await self._encode_and_decode(job, request, image, started, stages)
        try:
            return self._finish(await self._decode(job), job, started, source="cache", stages=stages)
        except CacheMiss:
            if request.image is None:
                raise
        except CacheUnavailable as exc:
            if request.image is None:
                raise CacheUnavailable(
                    "the embedding cache is unavailable: resend the request with the image", field="image_id"
                ) from exc
        return await self._encode_and_decode(job, request, image, started, stages)

    def _load_image_timed(self, request: SegmentImageRequest, stages: dict[str, float]) -> LoadedImage:
        loading = time.perf_counter()
        image = self._load_image(request)
        stages["image_s"] = time.perf_counter() - loading
        return image

    async def _encode_and_decode(
        self,
        job: SegmentJob,
        request: SegmentImageRequest,
        image: LoadedImage | None,
        started: float,
        stages: dict[str, float],
    ) -> SegmentResult:
        """A new image: embed it (the encoder caches it), then decode with the embedding sent inline."""
        if image is None:
            image = self._load_image_timed(request, stages)
        encoding = time.perf_counter()
        job.embedding = await self._encode(image, job.cache_key or CONTENT_HASH_PREFIX + image.content_sha256)
        stages["encoder_s"] = time.perf_counter() - encoding
        return self._finish(await self._decode(job), job, started, source="encoder", stages=stages)

    async def _probably_cached(self, cache_key: str) -> bool:
        """Whether the shared cache holds this image's embedding (its header only); False when it cannot say.

        Only a hint: an entry evicted after this check is a CacheMiss from the decoder, handled as before. With
        the cache down, the image in hand is the way that works, so it goes to the encoder.
        """
        try:
            return await self.cache.has_embedding(await self.model_id(), cache_key)
        except CacheUnavailable:
            return False

    async def _decode(self, job: SegmentJob) -> SegmentResult:
        """One decoder call, retried once on another replica if the first one died mid-call.

        Decoding is idempotent (the only write is the low-res logits, rewritten with the same value), so a
        retry is safe; the router has dropped the dead replica by the time the retry is sent.
        """
        try:
            result: SegmentResult = await self.decoder.segment.remote(job)
        except RayActorError:
            log.warning("decoder replica died during a request; retrying once")
            result = await self.decoder.segment.remote(job)
        except BackPressureError as exc:
            raise Overloaded("the decoders are at capacity: retry shortly") from exc
        return result

    @staticmethod
    def _finish(
        result: SegmentResult, job: SegmentJob, started: float, *, source: str, stages: dict[str, float] | None = None
    ) -> SegmentResult:
        """Stamp the id and times on a decoder's answer; `source`: where the embedding came from.

        `stages`: the ingress's own timings (image decode, encoder call), added to the decoder replica's.
        """
        result.timings.update(stages or {})
        if isinstance(result.body, dict):
            result.body["image_id"] = job.cache_key
            result.body["time"] = time.perf_counter() - started
        result.timings["total_s"] = time.perf_counter() - started
        metrics.request_served(SEGMENT_ROUTE, job.format, source, result.timings["total_s"])
        return result

    # ---- HTTP -------------------------------------------------------------------------------------------

    @api.post(
        EMBED_ROUTE,
        response_model=EmbedImageResponse,
        responses={200: {"content": {"application/octet-stream": {}}}, **ERROR_RESPONSES},
    )
    async def embed_image(self, request: EmbedImageRequest) -> Response:
        result = await self.embed(request)
        if result.npy is not None:
            return Response(content=result.npy, media_type="application/octet-stream")
        return JSONResponse(result.response.model_dump())

    @api.post(
        SEGMENT_ROUTE,
        responses={
            200: {"model": SegmentImageResponse, "content": {"application/octet-stream": {}}},
            **ERROR_RESPONSES,
        },
    )
    async def segment_image(self, request: SegmentImageRequest) -> Response:
        result = await self.segment(request)
        headers = {
            "X-Process-Time": f"{result.timings.get('total_s', 0.0):.6f}",
            "X-Decoder-Replica": result.replica or "",
            # W3C Server-Timing (ms): where the time went, readable in browsers' dev tools and by benchmarks.
            "Server-Timing": ", ".join(
                f"{name.removesuffix('_s')};dur={seconds * 1e3:.2f}" for name, seconds in result.timings.items()
            ),
        }
        if isinstance(result.body, bytes):
            return Response(content=result.body, media_type=result.media_type, headers=headers)
        return JSONResponse(result.body, headers=headers)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Readiness: the model is resolved and the cache answers."""
        checks: dict[str, Any] = {}
        try:
            checks["model_id"] = await self.model_id()
        except Exception as exc:  # any failure to reach a decoder means not ready
            checks["model_id"] = None
            checks["model_error"] = type(exc).__name__
        checks["cache"] = await self.cache.ping()
        ready = checks["model_id"] is not None and checks["cache"]
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready, **checks})
