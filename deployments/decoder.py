"""SamDecoder: the ONNX mask decoder as a Ray Serve deployment, CPU only, scaled on its own."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import ray
from ray import serve

from deployments import metrics
from deployments.click_path import CLICK_PATH_LOGGING, CLICK_PATH_RUNTIME_ENV
from deployments.replica_models import ReplicaModels
from deployments.resident_memory import resident_bytes
from sam_core.cache import LocallyCopiedCache
from sam_core.cache.configured import decoder_cache
from sam_core.model.build import ModelIdentity
from sam_core.model.decoder import DecoderGraph
from sam_core.services.decoder import DecoderService
from sam_core.services.generator import EverythingService
from sam_core.settings import Settings
from sam_core.wire.generator_schemas import EverythingJob
from sam_core.wire.messages import SegmentJob, SegmentResult

log = logging.getLogger("ray.serve")


def _replica_cpus() -> int:
    """CPUs Ray assigned to this replica, rounded up (ONNX Runtime's intra-op threads)."""
    assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, math.ceil(assigned))


CONSISTENT_HASH_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
"""Ray Serve's consistent-hash router: the ingress keys each decoder call by its image (`session_id`), so an
image's clicks land on the replica that holds its decoded copy; a replica added or removed moves only its
share of images; a replica at `max_ongoing_requests` hands the call to the next on the ring (up to 2)."""

ROUTER_CONFIG = {
    "request_router_class": CONSISTENT_HASH_ROUTER,
    "request_router_kwargs": {"num_virtual_nodes": 100, "num_fallback_replicas": 2},
}


class DecoderModel(NamedTuple):
    """One model's services on a decoder replica: clicks, and segment-everything runs."""

    clicks: DecoderService
    everything: EverythingService


@serve.deployment(
    ray_actor_options={"num_cpus": 1, "runtime_env": CLICK_PATH_RUNTIME_ENV},
    logging_config=CLICK_PATH_LOGGING,
    max_ongoing_requests=4,
    max_queued_requests=64,
    request_router_config=ROUTER_CONFIG,
    autoscaling_config={
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 5,
        "downscale_delay_s": 60,
    },
)
class SamDecoder:
    """Answers prompts for any image whose embedding is in the shared cache (or sent inline).

    Reads the embedding and the last low-res logits from the cache, decodes, writes the new logits back and
    encodes the masks here, so full-resolution arrays never travel back through the ingress.
    """

    def __init__(self, settings: Settings) -> None:
        self.threads = settings.decoder_threads or _replica_cpus()
        self.max_batch_bytes = settings.everything_max_batch_bytes
        # One cache for every model here: one connection pool, one budget of local copies (keys name the model).
        self.cache = decoder_cache(settings)
        self.cache.read_observer = metrics.cache_read
        self.models = ReplicaModels(settings, "decoder", self._model, self.cache)
        # One decode at a time per replica: they would only compete for the same cores.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-decoder")
        # Segment-everything runs take seconds to minutes: their own thread, so clicks never queue behind one.
        self.everything_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-everything")
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        log.info("SamDecoder ready: model=%s threads=%d", self.models.default.clicks.identity.model_id, self.threads)

    def _model(self, settings: Settings) -> DecoderModel:
        clicks = DecoderService.from_settings(settings, threads=self.threads, cache=self.cache)
        everything = EverythingService(clicks, threads=self.threads, max_batch_bytes=self.max_batch_bytes)
        return DecoderModel(clicks, everything)

    async def segment(self, job: SegmentJob) -> SegmentResult:
        _, model = await self.models.current()
        result = await model.clicks.segment(job, self.executor)
        metrics.decoder_timings(model.clicks.identity.model_id, result.timings)
        result.replica = self.replica_id
        return result

    async def segment_everything(self, job: EverythingJob) -> SegmentResult:
        """A generator run; Ray Serve cancels it when the caller goes away, and it stops at the next batch."""
        _, model = await self.models.current()
        model_id = model.clicks.identity.model_id
        started = time.perf_counter()
        state = {"logged": started, "done": 0}

        def progress(done: int, total: int) -> None:
            metrics.everything_points(model_id, done - int(state["done"]))
            state["done"] = done
            now = time.perf_counter()
            if now - state["logged"] >= 10.0 or done == total:
                state["logged"] = now
                log.info("segment everything: %d/%d points in %.1f s", done, total, now - started)

        try:
            result = await model.everything.run(job, self.everything_executor, progress=progress)
        except asyncio.CancelledError:
            log.info("segment everything cancelled after %.1f s: the caller went away", time.perf_counter() - started)
            metrics.everything_run(model_id, "cancelled")
            raise
        except Exception:
            metrics.everything_run(model_id, "failed")
            raise
        metrics.everything_run(model_id, "done")
        result.replica = self.replica_id
        return result

    async def __del__(self) -> None:
        """Serve's shutdown: the listing of loaded models stops counting this replica."""
        if hasattr(self, "models"):  # not when the constructor failed
            await self.models.shutdown()

    async def model_id(self) -> str:
        """The identity of the weights the call's model names (loading them here if need be)."""
        return (await self.identity()).model_id

    async def identity(self) -> ModelIdentity:
        """The call's model's type and checkpoint sha256 (the checkpoint resolved and verified here)."""
        _, model = await self.models.current()
        return model.clicks.identity

    async def graph(self, multimask: bool, low_res: bool = False) -> DecoderGraph:
        """An exported decoder file, for clients that decode clicks themselves (`GET /sam/decoder.onnx`)."""
        _, model = await self.models.current()
        return await asyncio.to_thread(model.clicks.graph, multimask=multimask, low_res=low_res)

    async def stats(self) -> dict[str, int | str]:
        """This replica's id, its local copies (count and bytes) and its resident memory."""
        copies = self.cache.copies if isinstance(self.cache, LocallyCopiedCache) else None
        return {
            "replica": self.replica_id,
            "local_copies": len(copies) if copies is not None else 0,
            "local_copy_bytes": copies.nbytes if copies is not None else 0,
            "models_held": len(self.models.held),
            "rss_bytes": resident_bytes(),
        }
