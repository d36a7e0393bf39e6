"""SamIngress: the service's calls (embed, warm, segment, segment everything), shared by its HTTP routes and
`DeploymentHandle` callers (Ray Data pipelines), so handle callers skip the JSON round trip but get the same
validation and errors. Every embedding comes by one path (`deployments.embeddings`); the routes are
`deployments.routes`, attached per replica by `__serve_build_asgi_app__` (nothing at import).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments import crop_embeddings, labelstudio, metrics
from deployments.api import make_api
from deployments.click_path import CLICK_PATH_LOGGING, CLICK_PATH_RUNTIME_ENV
from deployments.decoder_file import DecoderFiles
from deployments.embeddings import CACHE_DOWN, Embeddings
from deployments.limits import configure_guards
from deployments.model_routing import ModelRouting
from deployments.off_loop import off_loop
from deployments.replica_presence import ReplicaPresence
from deployments.ui import UiFiles
from sam_core.cache.configured import cache_from_settings
from sam_core.errors import CacheMiss, CacheUnavailable, Overloaded
from sam_core.settings import ImageLimits, Settings
from sam_core.wire.generator_schemas import SegmentEverythingRequest
from sam_core.wire.image_ids import DEFAULT_TENANT, check_content_id, image_keys
from sam_core.wire.jobs import client_embedding, explicit_mask_input, prompt_mask_inputs, segment_job
from sam_core.wire.messages import EmbedResult, SegmentJob, SegmentResult, WarmImage, WarmResult
from sam_core.wire.npy import embedding_to_npy
from sam_core.wire.schemas import EMBED_ROUTE, SEGMENT_ROUTE, EmbedImageRequest, EmbedImageResponse, SegmentImageRequest

log = logging.getLogger("ray.serve")


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25, "runtime_env": CLICK_PATH_RUNTIME_ENV},
    logging_config=CLICK_PATH_LOGGING,
    max_ongoing_requests=64,
    max_queued_requests=256,
)
@serve.ingress()
class SamIngress:
    """Validates requests and routes them: the encoder only for an image not cached, a decoder for prompts."""

    def __init__(self, encoder: DeploymentHandle, decoder: DeploymentHandle, settings: Settings) -> None:
        self.settings = settings
        self.cache = cache_from_settings(settings)
        self.cache.read_observer = metrics.cache_read
        self.routing = ModelRouting(settings, encoder, decoder, self.cache)
        self.embeddings = Embeddings(self.routing, self.cache, settings, ReplicaPresence.of(encoder.deployment_name))
        self.decoder_files = DecoderFiles(self.routing)
        self.ui_files = UiFiles(settings.ui_dir)
        configure_guards(settings)
        self.replica_id = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The replica's HTTP app, over this ingress's calls (Serve calls it once, after `__init__`)."""
        return make_api(self, labelstudio.LabelStudioBackend(self.segment, self.routing, self.settings))

    async def embed(self, request: EmbedImageRequest, tenant: str = DEFAULT_TENANT) -> EmbedResult:
        """Embed an image unless its embedding is cached; returns metadata (and the .npy when binary).

        `tenant`: whose `image_id`s these are (HTTP: the token's; handle callers: the default tenant's).
        """
        started = time.perf_counter()
        model = self.routing.resolve(request)
        found = await self.embeddings.find(model, request, tenant, in_hand=True)
        embedding = found.embedding
        assert embedding is not None, "in_hand=True gives the embedding"
        response = EmbedImageResponse(
            image_id=found.keys.reply_id,
            original_size=embedding.original_size,
            cached=found.cached,
            time=time.perf_counter() - started,
        )
        npy = embedding_to_npy(embedding.embedding) if request.format == "binary" else None
        metrics.request_served(EMBED_ROUTE, request.format, found.source, time.perf_counter() - started)
        return EmbedResult(response=response, embedding=embedding.embedding, npy=npy)

    async def warm(self, request: EmbedImageRequest | WarmImage, tenant: str = DEFAULT_TENANT) -> WarmResult:
        """Embed the image into the shared cache unless it is there (`sam-serve warm`): keyed as `embed` keys it,
        checked from the entry's header alone, and nothing comes back but whether it was cached. A `WarmImage`
        comes decoded and resized by the caller (the ingress's image thread is spared)."""
        model = self.routing.named(request.model) if isinstance(request, WarmImage) else self.routing.resolve(request)
        image_id, cached = await self.embeddings.warm(model, request, tenant)
        return WarmResult(image_id=image_id, cached=cached)

    async def warm_cached(
        self, content_ids: list[str], model: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> list[bool]:
        """Whether each image (its `sha256:` content id) is cached for `model` (None: the default): asked by
        `sam-serve warm`'s workers before they decode, so a rerun decodes nothing."""
        return await self.embeddings.cached(self.routing.named(model), content_ids, tenant)

    async def image_limits(self) -> ImageLimits:
        """The limits this app holds images to: `sam-serve warm`'s workers decode under the same ones."""
        return self.settings.images

    async def segment(self, request: SegmentImageRequest, tenant: str = DEFAULT_TENANT) -> SegmentResult:
        """Masks for the request's prompt; the body is JSON-ready (json/rle/png) or npz bytes (binary).

        `tenant`: whose `image_id`s and low-res logits these are (as for `embed`).
        """
        started = time.perf_counter()
        model = self.routing.resolve(request)
        job = await self._job(request)
        check_content_id(request.image_id, None, has_embeddings=request.embeddings is not None)
        if request.embeddings is not None:
            job.embedding = await off_loop(client_embedding, request, self.settings.images)
            if request.image_id is not None:
                keys = image_keys(tenant, request.image_id)
                job.cache_key, job.logits_key = keys.cache_key, keys.logits_key
            return self._finish(await self._decode(model, job), job, request.image_id, started, source="client")
        found = await self.embeddings.find(model, request, tenant)
        job.cache_key, job.logits_key = found.keys.cache_key, found.keys.logits_key
        # The bytes sent win: a decoder answers only from an entry of this image.
        job.content_id, job.embedding = found.content_id, found.embedding
        try:
            result = await self._decode(model, job)
        except (CacheMiss, CacheUnavailable) as exc:
            if found.image is None and isinstance(exc, CacheUnavailable):
                raise CacheUnavailable(CACHE_DOWN, field="image_id") from exc
            if found.image is None or found.embedding is not None:
                raise
            # The entry left the cache (evicted) or the cache went down before the decoder read it.
            job.embedding = await self.embeddings.again(model, found)
            result = await self._decode(model, job)
        return self._finish(result, job, found.keys.reply_id, started, source=found.source, stages=found.stages)

    async def segment_everything(
        self, request: SegmentEverythingRequest, tenant: str = DEFAULT_TENANT
    ) -> SegmentResult:
        """Every mask of an image (`SamAutomaticMaskGenerator`'s algorithm, run by a decoder replica)."""
        return await crop_embeddings.segment_everything(self, request, tenant)

    async def readiness(self) -> dict[str, Any]:
        """`ready`: the default model is resolved (a decoder answered) and the cache answers; and each check."""
        checks: dict[str, Any] = {}
        try:
            checks["model_id"] = await self.routing.model_id(self.routing.default)
        except Exception as exc:  # noqa: BLE001 - any failure to reach a decoder means not ready
            checks["model_id"] = None
            checks["model_error"] = type(exc).__name__
        checks["cache"] = await self.cache.ping()
        return {"ready": checks["model_id"] is not None and checks["cache"], **checks}

    @staticmethod
    async def _job(request: SegmentImageRequest) -> SegmentJob:
        """The request's decoder job, its mask inputs decoded off the loop."""
        job = segment_job(request)
        if request.mask_input is not None:
            job.mask_input = await off_loop(explicit_mask_input, request)
        if request.prompts is not None and any(prompt.mask_input is not None for prompt in request.prompts):
            await off_loop(prompt_mask_inputs, request, job)
        return job

    async def _decode(self, model: str, job: SegmentJob) -> SegmentResult:
        """One decoder call, retried once on another replica if the first one died mid-call.

        Decoding is idempotent (the only write is the low-res logits, rewritten with the same value), so a
        retry is safe; the router has dropped the dead replica by the time the retry is sent.
        """
        decoder = self.routing.decoder(model, job.cache_key).segment
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
