"""The shared cache: Redis bytes per cached image and per follow-up click, and encoder runs per annotation session
over 2 decoder replicas against the seed's per-process caches."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import Bench, Report, Row, median, sample_image


def redis_bytes(bench: Bench, report: Report) -> None:
    import redis

    print("[6] Redis bytes per cached image", flush=True)
    client = redis.Redis.from_url(bench.redis_url)
    per_image: dict[str, int] = {}
    for key in client.scan_iter(count=1000):
        name = key.decode()
        usage = client.memory_usage(key, samples=0) or 0
        # Keys are sam:{model}:{image hash}:{kind}; group an image's embedding and logits keys.
        image = name.rsplit(":", 1)[0]
        per_image[image] = per_image.get(image, 0) + int(usage)
    if not per_image:
        raise RuntimeError("no keys in the benchmark's Redis")
    nbytes = int(median(list(per_image.values())))
    float32 = 256 * 64 * 64 * 4
    report.add(
        Row(
            "Redis bytes per cached image (embedding + logits) vs float32 embedding",
            f"{nbytes:,d} B",
            f"{float32:,d} B",
            nbytes / float32,
            notes=[f"median over {len(per_image)} images, MEMORY USAGE of each key"],
        )
    )


def stored_bytes(client: Any, key: str) -> int:
    """The payload's bytes under a key: a string, or a hash of chunks (values over the chunk size)."""
    if client.type(key) == b"hash":
        return sum(len(chunk) for chunk in client.hvals(key))
    return int(client.strlen(key))


def encoder_runs(bench: Bench, report: Report, clicks: int) -> None:
    from ray import serve

    from sam_core.cache import KINDS, MemoryEmbeddingCache, cache_key
    from sam_core.model.encoder import ImageEncoder
    from sam_core.services.decoder import DecoderService
    from sam_core.services.encoder import EncoderService
    from sam_core.wire.messages import SegmentJob

    print(f"[7] encoder runs per {clicks}-click session, 2 decoder replicas vs 2 per-process-cache workers", flush=True)
    bench.deploy("vit_tiny", decoders=2, decoder_threads=1)
    encoder = serve.get_deployment_handle("SamEncoder", app_name="sam")
    before = encoder.stats.remote().result()["images_embedded"]
    pixels = sample_image(300)
    image = {"type": "base64", "value": harness.image_base64(pixels)}
    replicas = set()
    import redis

    redis_client = redis.Redis.from_url(bench.redis_url)
    sent_before, counted = 0, 0
    readers: set[str] = set()
    with httpx.Client(base_url=bench.base_url, timeout=120) as client:
        for index in range(clicks):
            point = [[float(200 + 90 * index), float(300 + 40 * index)]]
            # A real annotation client: the image on the first click, the id on the next ones.
            body: dict[str, Any] = {"image_id": "session", "point_coords": point, "point_labels": [1]}
            if index == 0:
                body["image"] = image
            response = client.post(harness.SEGMENT, json=body)
            response.raise_for_status()
            replica = response.headers["X-Decoder-Replica"]
            replicas.add(replica)
            if index == 0:
                continue  # the first click's embedding came inline from the encoder: nothing read from Redis
            if len(readers) == 2:
                counted += 1
            readers.add(replica)
            if len(readers) == 2 and not sent_before:  # from here on both replicas hold a local copy
                sent_before = int(redis_client.info("stats")["total_net_output_bytes"])
    served_runs = encoder.stats.remote().result()["images_embedded"] - before
    sent_per_click = (int(redis_client.info("stats")["total_net_output_bytes"]) - sent_before) / max(1, counted)
    model_id = encoder.model_id.remote().result()
    full_read = sum(stored_bytes(redis_client, cache_key(model_id, "session", kind)) for kind in KINDS)
    report.add(
        Row(
            "Redis bytes sent per follow-up click (local copies + tag check) vs a full read of the entry",
            f"{sent_per_click:,.0f} B",
            f"{full_read:,d} B",
            sent_per_click / full_read,
            notes=[
                f"Redis INFO total_net_output_bytes over the {counted} clicks after both replicas had answered "
                "one; reference: STRLEN of the image's keys"
            ],
        )
    )

    # The seed's design: each worker process holds the model and its own in-process cache; a round-robin
    # balancer spreads the session's clicks, and each request carries the image (so a worker that has not
    # seen it embeds it). Our services with per-process memory caches play the two workers.
    model = bench.load("vit_tiny")
    workers = []
    for _ in range(2):
        cache = MemoryEmbeddingCache(max_bytes=1 << 30, ttl_s=3600)
        decoder_service = DecoderService.from_settings(bench.settings("vit_tiny", redis_url=None), threads=1)
        decoder_service.cache = cache
        workers.append((EncoderService(ImageEncoder(model.sam), model.identity, cache, device="cpu"), decoder_service))
    seed_runs = 0

    async def seed_session() -> None:
        nonlocal seed_runs
        for index in range(clicks):
            encoder_service, decoder_service = workers[index % 2]
            job = SegmentJob(cache_key="session", point_coords=[[200.0 + 90 * index, 300.0]], point_labels=[1])
            if await decoder_service.cache.get_embedding(model.identity.model_id, "session") is None:
                embedding = encoder_service.embed_batch([pixels])[0]
                seed_runs += 1
                await encoder_service.store("session", embedding)
            await decoder_service.segment(job)

    asyncio.run(seed_session())
    report.add(
        Row(
            f"encoder runs per {clicks}-click session, 2 decoder replicas vs per-process cache x 2 workers",
            str(served_runs),
            str(seed_runs),
            served_runs / seed_runs,
            notes=[f"decoder replicas that answered: {len(replicas)}"],
        )
    )
