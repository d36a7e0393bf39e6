"""SamIngress: the HTTP API (FastAPI) and the handle API; validates, decodes images, routes to encoder/decoder.

(No `from __future__ import annotations` here: FastAPI must see the request models as real types
through the signatures Ray Serve rewrites.)

The same `embed` and `segment` methods serve HTTP routes and `DeploymentHandle` calls (Ray Data pipelines),
so handle callers skip the JSON round trip but get the same validation and errors.
"""

import logging
import time
from typing import Any

import orjson
from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments import everything, labelstudio, metrics
from deployments.api import make_api
from deployments.click_path import CLICK_PATH_LOGGING, CLICK_PATH_RUNTIME_ENV
from deployments.decoder_file import ONNX_MEDIA_TYPE, DecoderFiles
from deployments.http_errors import ERROR_RESPONSES
from deployments.limits import configure_guards, tenant_of
from deployments.models import ServedModels
from deployments.new_images import NewImages
from deployments.off_loop import off_loop
from deployments.ui import UI_PREFIX, VENDOR_PREFIX, UiFiles, embedding_headers, redirect_to_page
from sam_core.cache.configured import cache_from_settings
from sam_core.embedding import same_content
from sam_core.errors import CacheMiss, CacheUnavailable, Overloaded
from sam_core.settings import MODEL_ID_PATTERN, Settings
from sam_core.wire.everything import EVERYTHING_ROUTE, SegmentEverythingRequest, SegmentEverythingResponse
from sam_core.wire.image_ids import DEFAULT_TENANT, check_client_image_id, check_content_id, image_keys
from sam_core.wire.images import EncodedImage
from sam_core.wire.jobs import client_embedding, explicit_mask_input, prompt_mask_inputs, segment_job
from sam_core.wire.npy import embedding_to_npy
from sam_core.wire.schemas import (
    DECODER_FILE_ROUTE,
    EMBED_ROUTE,
    MODELS_ROUTE,
    SEGMENT_ROUTE,
    EmbedImageRequest,
    EmbedImageResponse,
    EmbedResult,
    SegmentImageRequest,
    SegmentImageResponse,
    SegmentJob,
    SegmentPromptsResponse,
    SegmentResult,
    ServedModelsResponse,
    WarmResult,
)

log = logging.getLogger("ray.serve")


api = make_api()


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25, "runtime_env": CLICK_PATH_RUNTIME_ENV},
    logging_config=CLICK_PATH_LOGGING,
    max_ongoing_requests=64,
    max_queued_requests=256,
)
@serve.ingress(api)
class SamIngress:
    """Validates requests, decodes images, and routes: encoder only on a cache miss, decoder for prompts."""

    def __init__(self, encoder: DeploymentHandle, decoder: DeploymentHandle, settings: Settings) -> None:
        self.settings = settings
        self.cache = cache_from_settings(settings)
        self.cache.read_observer = metrics.cache_read
        self.models = ServedModels(settings, encoder, decoder, self.cache)
        self.images = NewImages(self.models, self.cache, settings)
        self.decoder_files = DecoderFiles(self.models)
        self.ui_files = UiFiles(settings.ui_dir)
        api.state.labelstudio = labelstudio.LabelStudioBackend(self.segment, self.models, settings)
        configure_guards(settings)
        self.replica_id = serve.get_replica_context().replica_id.unique_id

    # ---- shared by HTTP and handle calls ----------------------------------------------------------------

    async def embed(self, request: EmbedImageRequest, tenant: str = DEFAULT_TENANT) -> EmbedResult:
        """Embed an image unless its embedding is cached; returns metadata (and the .npy when binary).

        `tenant`: whose `image_id`s these are (HTTP: the token's; handle callers: the default tenant's).
        """
        started = time.perf_counter()
        model = self.models.resolve(request)
        model_id = await self.models.model_id(model)
        keys, encoded = await self.images.keyed(request, tenant)
        cached = None
        try:
            cached = await self.cache.get_embedding(model_id, keys.cache_key)
        except CacheUnavailable as exc:
            if encoded is None:
                raise CacheUnavailable(
                    "the embedding cache is unavailable: resend the request with the image", field="image_id"
                ) from exc
        if cached is not None and encoded is not None and not same_content(cached.content_id, encoded.content_id):
            cached = None  # the bytes sent win: embedded below, and the id re-pointed to them
        embedding, source = cached, "cache"
        if embedding is None:
            if encoded is None:
                raise CacheMiss("no cached embedding for this image_id: send the image", field="image_id")
            found, source = await self.images.embed_once(model, keys.cache_key, encoded, {}, inline=True)
            assert found is not None, "inline=True gives the embedding"
            embedding = found
        response = EmbedImageResponse(
            image_id=keys.reply_id,
            original_size=embedding.original_size,
            cached=cached is not None,
            time=time.perf_counter() - started,
        )
        npy = embedding_to_npy(embedding.embedding) if request.format == "binary" else None
        metrics.request_served(EMBED_ROUTE, request.format, source, time.perf_counter() - started)
        return EmbedResult(response=response, embedding=embedding.embedding, npy=npy)

    async def warm(self, request: EmbedImageRequest, tenant: str = DEFAULT_TENANT) -> WarmResult:
        """Embed the image into the shared cache unless it is there (`sam-serve warm`): keyed as `embed` keys it,
        checked from the entry's header alone, and nothing comes back but whether it was cached."""
        image_id, cached = await self.images.warm(self.models.resolve(request), request, tenant)
        return WarmResult(image_id=image_id, cached=cached)

    async def segment(self, request: SegmentImageRequest, tenant: str = DEFAULT_TENANT) -> SegmentResult:
        """Masks for the request's prompt; the body is JSON-ready (json/rle/png) or npz bytes (binary).

        `tenant`: whose `image_id`s and low-res logits these are (as for `embed`).
        """
        started = time.perf_counter()
        model = self.models.resolve(request)
        job = await self._job(request)
        check_content_id(request.image_id, None, has_embeddings=request.embeddings is not None)
        if request.embeddings is not None:
            job.embedding = await off_loop(client_embedding, request, self.settings.images)
            if request.image_id is not None:
                keys = image_keys(tenant, request.image_id)
                job.cache_key, job.logits_key = keys.cache_key, keys.logits_key
            return self._finish(await self._decode(model, job), job, request.image_id, started, source="client")

        keys, encoded = await self.images.keyed(request, tenant)
        job.cache_key, job.logits_key = keys.cache_key, keys.logits_key
        if encoded is not None:
            # The bytes sent win: a decoder answers only from an entry of this image.
            job.content_id = encoded.content_id
        stages: dict[str, float] = {}
        if not self.cache.shared:
            cached = await self.cache.get_embedding(await self.models.model_id(model), keys.cache_key)
            job.embedding = cached if cached is not None and same_content(cached.content_id, job.content_id) else None
        elif encoded is not None and not await self.images.probably_cached(model, keys.cache_key, job.content_id):
            # A new image goes straight to the encoder: asking a decoder first costs a whole handle hop.
            return await self._encode_and_decode(model, job, keys.reply_id, encoded, started, stages)
        try:
            result = await self._decode(model, job)
            return self._finish(result, job, keys.reply_id, started, source="cache", stages=stages)
        except CacheMiss:
            if encoded is None:
                raise
        except CacheUnavailable as exc:
            if encoded is None:
                raise CacheUnavailable(
                    "the embedding cache is unavailable: resend the request with the image", field="image_id"
                ) from exc
        return await self._encode_and_decode(model, job, keys.reply_id, encoded, started, stages)

    @staticmethod
    async def _job(request: SegmentImageRequest) -> SegmentJob:
        """The request's decoder job, its mask inputs decoded off the loop."""
        job = segment_job(request)
        if request.mask_input is not None:
            job.mask_input = await off_loop(explicit_mask_input, request)
        if request.prompts is not None and any(prompt.mask_input is not None for prompt in request.prompts):
            await off_loop(prompt_mask_inputs, request, job)
        return job

    async def _encode_and_decode(
        self,
        model: str,
        job: SegmentJob,
        reply_id: str,
        encoded: EncodedImage,
        started: float,
        stages: dict[str, float],
    ) -> SegmentResult:
        """A new image: embedded once for every concurrent request of it (single flight), then decoded, with
        the embedding inline when this request's flight has it in hand."""
        assert job.cache_key is not None, "segment() names the entry before encoding"
        job.embedding, source = await self.images.embed_once(
            model, job.cache_key, encoded, stages, inline=not self.cache.shared
        )
        try:
            result = await self._decode(model, job)
        except CacheMiss:
            if job.embedding is not None:
                raise
            # Landed in the shared cache by another replica and evicted before this decode: embed it here.
            image = await self.images.encoder_input(encoded)
            job.embedding = await self.images.encode(model, image, job.cache_key)
            result = await self._decode(model, job)
        return self._finish(result, job, reply_id, started, source=source, stages=stages)

    async def _decode(self, model: str, job: SegmentJob) -> SegmentResult:
        """One decoder call, retried once on another replica if the first one died mid-call.

        Decoding is idempotent (the only write is the low-res logits, rewritten with the same value), so a
        retry is safe; the router has dropped the dead replica by the time the retry is sent.
        """
        decoder = self.models.decoder(model, job.cache_key).segment
        try:
            result: SegmentResult = await decoder.remote(job)
        except (RayActorError, ReplicaUnavailableError):
            log.warning("decoder replica died during a request; retrying once")
            result = await decoder.remote(job)
        except BackPressureError as exc:
            raise Overloaded("the decoders are at capacity: retry shortly") from exc
        return result

    @staticmethod
    def _finish(
        result: SegmentResult,
        job: SegmentJob,
        reply_id: str | None,
        started: float,
        *,
        source: str,
        stages: dict[str, float] | None = None,
    ) -> SegmentResult:
        """Stamp the id and times on a decoder's answer; `source`: where the embedding came from.

        `stages`: the ingress's own timings (image decode, encoder call), added to the decoder replica's.
        """
        result.timings.update(stages or {})
        if isinstance(result.body, dict):
            result.body["image_id"] = reply_id
            result.body["time"] = time.perf_counter() - started
        result.timings["total_s"] = time.perf_counter() - started
        metrics.request_served(SEGMENT_ROUTE, job.format, source, result.timings["total_s"])
        return result

    async def segment_everything(
        self, request: SegmentEverythingRequest, tenant: str = DEFAULT_TENANT
    ) -> SegmentResult:
        """Every mask of an image (`SamAutomaticMaskGenerator`'s algorithm, run by a decoder replica)."""
        return await everything.segment_everything(self, request, tenant)

    # ---- HTTP -------------------------------------------------------------------------------------------

    @api.post(
        EMBED_ROUTE,
        response_model=EmbedImageResponse,
        responses={200: {"content": {"application/octet-stream": {}}}, **ERROR_RESPONSES},
    )
    async def embed_image(self, request: EmbedImageRequest, http: Request) -> Response:
        check_client_image_id(request.image_id)
        result = await self.embed(request, tenant_of(http))
        if result.npy is not None:
            headers = embedding_headers(result.response)
            return Response(content=result.npy, media_type="application/octet-stream", headers=headers)
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
            200: {"model": SegmentImageResponse | SegmentPromptsResponse, "content": {"application/octet-stream": {}}},
            **ERROR_RESPONSES,
        },
    )
    async def segment_image(self, request: SegmentImageRequest, http: Request) -> Response:
        check_client_image_id(request.image_id)
        result = await self.segment(request, tenant_of(http))
        headers = {
            "X-Process-Time": f"{result.timings.get('total_s', 0.0):.6f}",
            "X-Decoder-Replica": result.replica or "",
            "X-Ingress-Replica": self.replica_id,
            # W3C Server-Timing (ms): where the time went, readable in browsers' dev tools and by benchmarks.
            "Server-Timing": ", ".join(
                f"{name.removesuffix('_s')};dur={seconds * 1e3:.2f}" for name, seconds in result.timings.items()
            ),
        }
        if isinstance(result.body, bytes):
            return Response(content=result.body, media_type=result.media_type, headers=headers)
        return JSONResponse(result.body, headers=headers)

    @api.post(EVERYTHING_ROUTE, response_model=SegmentEverythingResponse, responses=ERROR_RESPONSES)
    async def segment_everything_route(self, request: SegmentEverythingRequest, http: Request) -> Response:
        """Every mask of an image: the request holds the generator's parameters; a client that disconnects
        stops the run at its next batch of points."""
        check_client_image_id(request.image_id)
        result = await self.segment_everything(request, tenant_of(http))
        return JSONResponse(result.body, headers={"X-Decoder-Replica": result.replica or ""})

    @api.get(
        DECODER_FILE_ROUTE,
        response_class=Response,
        responses={
            200: {"content": {ONNX_MEDIA_TYPE: {}}},
            304: {"description": "the client's copy is current"},
            404: ERROR_RESPONSES[404],
        },
    )
    async def decoder_file(
        self, request: Request, multimask: bool = False, model: str | None = Query(None, pattern=MODEL_ID_PATTERN)
    ) -> Response:
        """A served model's decoder graph (ONNX), to decode clicks in the client on embeddings from
        `/sam/embed_image` (binary); `multimask`: the three-mask graph (its masks 1-3 are SamPredictor's);
        `model`: the served model's id (unset: the default)."""
        return await self.decoder_files.response(request, self.models.named(model), multimask=multimask)

    @api.get(MODELS_ROUTE, response_model=ServedModelsResponse, responses=ERROR_RESPONSES)
    async def served_models(self) -> ServedModelsResponse:
        """The served models: id, architecture, checkpoint sha256, the id in cache keys once a decoder resolved
        it, and how many encoder and decoder replicas hold each loaded (null without a shared cache)."""
        return await self.models.listing()

    @api.get("/", include_in_schema=False)
    async def root(self, request: Request) -> Response:
        return redirect_to_page(request)

    @api.get(UI_PREFIX, include_in_schema=False)
    @api.get(UI_PREFIX + "{name}", include_in_schema=False)
    async def page_file(self, request: Request, name: str = "index.html") -> Response:
        """The labelling page: embeds an image here, then decodes clicks in the browser (or on the server)."""
        return await self.ui_files.response(request, self.ui_files.page_path(name))

    @api.get(VENDOR_PREFIX + "{name}", include_in_schema=False)
    async def page_vendor_file(self, request: Request, name: str) -> Response:
        return await self.ui_files.response(request, self.ui_files.vendor_path(name))

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
            checks["model_id"] = await self.models.model_id(self.models.default)
        except Exception as exc:  # noqa: BLE001 - any failure to reach a decoder means not ready
            checks["model_id"] = None
            checks["model_error"] = type(exc).__name__
        checks["cache"] = await self.cache.ping()
        ready = checks["model_id"] is not None and checks["cache"]
        return JSONResponse(status_code=200 if ready else 503, content={"ready": ready, **checks})
