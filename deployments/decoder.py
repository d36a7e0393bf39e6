"""SamDecoder: the ONNX mask decoder as a Ray Serve deployment, CPU only, scaled on its own."""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import ray
from ray import serve

from deployments import metrics
from sam_core.service import DecoderService
from sam_core.settings import Settings
from sam_core.wire.schemas import SegmentJob, SegmentResult

log = logging.getLogger("ray.serve")


def _replica_cpus() -> int:
    """CPUs Ray assigned to this replica, rounded up (ONNX Runtime's intra-op threads)."""
    assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, math.ceil(assigned))


@serve.deployment(
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=4,
    max_queued_requests=64,
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
        threads = settings.decoder_threads or _replica_cpus()
        self.service = DecoderService.from_settings(settings, threads=threads)
        self.service.cache.read_observer = metrics.cache_read
        # One decode at a time per replica: they would only compete for the same cores.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam-decoder")
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        log.info("SamDecoder ready: model=%s threads=%d", self.service.identity.model_id, threads)

    async def segment(self, job: SegmentJob) -> SegmentResult:
        result = await self.service.segment(job, self.executor)
        metrics.decoder_timings(self.service.identity.model_id, result.timings)
        result.replica = self.replica_id
        return result

    async def model_id(self) -> str:
        return self.service.identity.model_id
