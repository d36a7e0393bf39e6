"""SamIngress: the HTTP API (FastAPI) and the handle API; validates, decodes images, routes to encoder/decoder.

(No `from __future__ import annotations` here: FastAPI must see the request models as real types
through the signatures Ray Serve rewrites.)

The same `embed` and `segment` methods serve HTTP routes and `DeploymentHandle` calls (Ray Data pipelines),
so handle callers skip the JSON round trip but get the same validation and errors.
"""

import asyncio
import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import metrics
from deployments.limits import BearerAuth, BodySizeLimit
from sam_core.cache import round_to_storage
from sam_core.embedding import EncoderInput, ImageEmbedding
from sam_core.errors import CacheMiss, CacheUnavailable, InvalidInput, Overloaded, SamServeError, UnknownModel
from sam_core.frames import EMBEDDING_SHAPE, MASK_INPUT_SHAPE, preprocess_shape
from sam_core.images import EncodedImage, check_image_size, encoder_input, read_image
from sam_core.masks import mask_input_array, polygons_to_mask
from sam_core.npy import decode_npy_base64, embedding_to_npy
from sam_core.schemas import (
    EMBED_ROUTE,
    SEGMENT_ROUTE,
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

T = TypeVar("T")

PARSE_WORKERS = 2
"""Threads for parsing and writing large bodies: JSON over `INLINE_JSON_BYTES`, .npy and JSON-list embeddings,
mask inputs, the json embedding answer (12.5 MB of text)."""

IMAGE_WORKERS = 1
"""Threads for client images: base64, hashing, URL fetches, pixel decoding and the resize to the encoder's
input frame (a 20 MP JPEG is ~0.2 s of CPU). One thread, scheduled as idle work (SCHED_IDLE): a burst of
uploads queues here instead of taking the cores that follow-up clicks on cached images need, and never
holds the event loop."""

INLINE_JSON_BYTES = 256 * 1024
"""Bodies up to this size (every click) are parsed on the loop: well under a millisecond, and no wait for a
worker busy with someone's upload."""

_pools: dict[str, ThreadPoolExecutor] = {}


def _lower_thread_priority() -> None:
    """Run this thread under SCHED_IDLE: it gets a core only when the process's other threads (and the
    decoder replicas beside it) leave one free. Linux schedules threads one by one; elsewhere a no-op."""
    with contextlib.suppress(AttributeError, OSError):  # no SCHED_IDLE here: plain priority then
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


def _pool(name: str) -> ThreadPoolExecutor:
    if name not in _pools:
        if name == "image":
            _pools[name] = ThreadPoolExecutor(IMAGE_WORKERS, "sam-ingress-image", initializer=_lower_thread_priority)
        else:
            _pools[name] = ThreadPoolExecutor(PARSE_WORKERS, "sam-ingress-parse")
    return _pools[name]


async def off_loop(function: Callable[..., T], *args: Any, pool: str = "parse", **kwargs: Any) -> T:
    """Run `function(*args, **kwargs)` in one of the ingress's bounded pools ("parse" or "image")."""
    call = functools.partial(function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool(pool), call)


class _OffLoopJSONRequest(Request):
    """A request whose JSON body is parsed (by orjson) in the worker pool rather than on the event loop.

    A seed client's JSON-list embedding is a 21 MB body; parsed on the loop it would stall every other
    request of the replica for a quarter of a second.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = _parse_json(body) if len(body) <= INLINE_JSON_BYTES else await off_loop(_parse_json, body)
        return self._json


def _parse_json(body: bytes) -> Any:
    """orjson, which is strict JSON; what it refuses goes to the standard library, which also reads the NaN and
    Infinity that Python's `json.dumps` writes, so the request model can refuse those naming their field."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


class _OffLoopJSONRoute(APIRoute):
    """FastAPI's documented hook for a custom Request class: every API route parses its body off the loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parse_off_loop(request: Request) -> Response:
            return await handler(_OffLoopJSONRequest(request.scope, request.receive))

        return parse_off_loop


# FastAPIOffline: FastAPI with Swagger UI's and ReDoc's assets served from the installed package, so /docs
# works on a cluster without internet access.
api = FastAPIOffline(
    title="sam-serve",
    description="Segment Anything on Ray Serve: cached image embeddings, prompts answered by any decoder replica.",
    version="0.1.0",
)
api.router.route_class = _OffLoopJSONRoute

CONTENT_HASH_PREFIX = "sha256:"
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
    """What `embed` returns to handle callers: the response (json and metadata formats: no `embeddings` list;
    the array is `embedding`), and the .npy bytes when the format is binary."""

    response: EmbedImageResponse
    embedding: np.ndarray
    """The float32 (1, 256, 64, 64) embedding, as the cache holds it."""
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
async def _replica_died(request: Request, exc: Exception) -> JSONResponse:
    return _error_response(request, 503, "ReplicaUnavailable", None, "a model replica failed during the request: retry")


# Serve's own words for the same event (a replica gone before or while it was chosen; a deployment with none).
api.add_exception_handler(ReplicaUnavailableError, _replica_died)
api.add_exception_handler(DeploymentUnavailableError, _replica_died)


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

    async def _read_image(self, request: EmbedImageRequest | SegmentImageRequest) -> EncodedImage:
        """The request's image bytes and their hash (base64 decoding or the URL fetch, off the loop)."""
        if request.image is None:
            raise InvalidInput("send the image (or an image_id whose embedding is cached)", field="image")
        image = request.image
        return await off_loop(read_image, image.type, image.value, self.settings.images, field="image", pool="image")

    async def _encoder_input(self, encoded: EncodedImage) -> EncoderInput:
        """The image decoded and resized to the encoder's input frame (off the loop, on the image thread): only
        for an image whose embedding is not cached."""
        return await off_loop(encoder_input, encoded, self.settings.images, pool="image")

    async def _encode(self, image: EncoderInput, cache_key: str) -> ImageEmbedding:
        try:
            embedding: ImageEmbedding = await self.encoder.embed.remote(image, cache_key)
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
        encoded = None
        key = request.image_id
        if key is None:
            # Keyed by the hash of the bytes as sent, taken before any decode: a repeat image costs no decode.
            encoded = await self._read_image(request)
            key = CONTENT_HASH_PREFIX + encoded.content_sha256
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
            image = await self._encoder_input(encoded or await self._read_image(request))
            embedding = await self._encode(image, key)
        response = EmbedImageResponse(
            image_id=key,
            original_size=embedding.original_size,
            cached=cached is not None,
            time=time.perf_counter() - started,
        )
        npy = embedding_to_npy(embedding.embedding) if request.format == "binary" else None
        source = "encoder" if cached is None else "cache"
        metrics.request_served(EMBED_ROUTE, request.format, source, time.perf_counter() - started)
        return EmbedResult(response=response, embedding=embedding.embedding, npy=npy)

    def _client_embedding(self, request: SegmentImageRequest) -> ImageEmbedding:
        """A client's embedding and `orig_im_size`, checked (CPU-heavy for a JSON list: call off the loop).

        Rounded to the cache's storage precision as every embedding is, so the embeddings a client got from
        the embed route (already rounded) decode exactly as the image's cached entry does.
        """
        if request.orig_im_size is None:
            raise InvalidInput("required with embeddings: [height, width] of the original image", field="orig_im_size")
        original_size = (int(request.orig_im_size[0]), int(request.orig_im_size[1]))
        # The decoder upsamples its masks to this size: an unchecked one could ask for any output size.
        check_image_size(original_size, self.settings.images, field="orig_im_size")
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

    @staticmethod
    def _mask_input(request: SegmentImageRequest) -> np.ndarray | None:
        """The request's explicit mask input as (1, 1, 256, 256) float32, or None (call off the loop)."""
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
            mask_input=await off_loop(self._mask_input, request) if request.mask_input is not None else None,
            use_mask_input_cache=request.use_mask_input_cache,
            multimask_output=request.multimask_output,
            format=request.format,
        )
        if request.embeddings is not None:
            job.embedding = await off_loop(self._client_embedding, request)
            return self._finish(await self._decode(job), job, started, source="client")

        encoded: EncodedImage | None = None
        stages: dict[str, float] = {}
        if job.cache_key is None:
            # The hash of the bytes as sent, before any decode: a cached repeat image is never decoded.
            encoded = await self._read_image(request)
            job.cache_key = CONTENT_HASH_PREFIX + encoded.content_sha256
        if not self.cache.shared:
            job.embedding = await self.cache.get_embedding(await self.model_id(), job.cache_key)
        elif request.image is not None and not await self._probably_cached(job.cache_key):
            # A new image goes straight to the encoder: asking a decoder first costs a whole handle hop.
            return await self._encode_and_decode(job, request, encoded, started, stages)
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
        return await self._encode_and_decode(job, request, encoded, started, stages)

    async def _encode_and_decode(
        self,
        job: SegmentJob,
        request: SegmentImageRequest,
        encoded: EncodedImage | None,
        started: float,
        stages: dict[str, float],
    ) -> SegmentResult:
        """A new image: decode it, embed it (the encoder caches it), then decode with the embedding inline."""
        loading = time.perf_counter()
        image = await self._encoder_input(encoded or await self._read_image(request))
        stages["image_s"] = time.perf_counter() - loading
        encoding = time.perf_counter()
        assert job.cache_key is not None, "segment() names the entry before encoding"
        job.embedding = await self._encode(image, job.cache_key)
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
        except (RayActorError, ReplicaUnavailableError):
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
        body: dict[str, Any] = result.response.model_dump(exclude={"embeddings"})
        if request.format == "metadata":
            return Response(content=orjson.dumps(body), media_type="application/json")
        # The seed's field: the embedding as nested lists. orjson writes the float32 array directly, off the
        # loop (12.5 MB of text, ~26 ms; tolist() + json.dumps took ~640 ms for 21.7 MB).
        body["embeddings"] = result.embedding
        content = await off_loop(orjson.dumps, body, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(content=content, media_type="application/json")

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

    @api.get(
        "/readyz",
        responses={
            200: {"description": "ready: the model is resolved and the cache answers"},
            503: {"description": "not ready: no decoder answered, or the cache is down"},
        },
    )
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
