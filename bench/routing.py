"""Decoders that keep their images: image-keyed consistent hashing (the deployment's router) vs Ray Serve's
default router (power of two choices), 3 decoder replicas, 12 images x 20 clicks interleaved as 12
annotators would click, one after another over HTTP."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import SEGMENT, Bench, Report, Row, image_base64, ms, sample_image

IMAGES = 12
CLICKS = 20
REPLICAS = 3


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _replica_stats(app: str = "sam") -> list[dict[str, Any]]:
    """Every decoder replica's stats (calls without an image key spread over the replicas)."""
    from ray import serve

    decoder = serve.get_deployment_handle("SamDecoder", app_name=app)
    found: dict[str, dict[str, Any]] = {}
    for _ in range(60):
        stats = decoder.stats.remote().result()
        found[stats["replica"]] = stats
        if len(found) == REPLICAS:
            break
    return list(found.values())


def _side(bench: Bench, router: dict[str, Any] | None) -> dict[str, Any]:
    import redis

    bench.deploy("vit_tiny", decoders=REPLICAS, decoder_threads=1, encoder_cpus=1, decoder_router=router)
    redis_client = redis.Redis.from_url(bench.redis_url)
    redis_client.flushdb()
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=bench.base_url, timeout=120) as client:
        ids = []
        for index in range(IMAGES):
            image = {"type": "base64", "value": image_base64(sample_image(100 + index), "JPEG")}
            response = client.post("/sam/embed_image", json={"image": image, "format": "metadata"})
            response.raise_for_status()
            ids.append(response.json()["image_id"])
        held: set[tuple[str, str]] = set()  # (replica, image) pairs: that replica has decoded that image
        hits, follow_ups, times = 0, 0, []
        sent_before = int(redis_client.info("stats")["total_net_output_bytes"])
        for round_index in range(CLICKS):
            for image_id in ids:
                point = [[float(rng.uniform(0, 2249)), float(rng.uniform(0, 1499))]]
                body = {"image_id": image_id, "point_coords": point, "point_labels": [1], "format": "rle"}
                started = time.perf_counter()
                response = client.post(SEGMENT, json=body)
                times.append(time.perf_counter() - started)
                response.raise_for_status()
                replica = response.headers["X-Decoder-Replica"]
                if round_index > 0:
                    follow_ups += 1
                    hits += (replica, image_id) in held
                held.add((replica, image_id))
        sent = int(redis_client.info("stats")["total_net_output_bytes"]) - sent_before
    stats = _replica_stats()
    return {
        "hit_rate": hits / follow_ups,
        "redis_per_click": sent / (IMAGES * CLICKS),
        "p50": _percentile(times, 50),
        "p99": _percentile(times, 99),
        "copies": [s["local_copies"] for s in stats],
        "rss": [s["rss_bytes"] for s in stats],
        "owners": len({replica for replica, _ in held}),
    }


def routing(bench: Bench, report: Report) -> None:
    from sam_core.model.decoder import OnnxDecoder

    print(f"[11] decoder routing: image-keyed consistent hashing vs the default, {REPLICAS} replicas", flush=True)
    # Export the decoders here first: a replica that finds no exported file loads torch and the checkpoint to
    # export it and keeps that memory for its life, which would weigh on whichever side deploys first.
    model = bench.load("vit_tiny")
    OnnxDecoder.for_model(model.sam, model.identity, bench.work / "cache", threads=1)
    default = _side(bench, {})
    ours = _side(bench, None)
    for name, side in (("consistent hash", ours), ("default", default)):
        print(f"    {name}: {side}")
    mib = 1024 * 1024
    report.add(
        Row(
            f"decoder local-copy hits after an image's first click ({IMAGES} images x {CLICKS} clicks, "
            f"{REPLICAS} replicas), image-keyed routing vs the default router",
            f"{ours['hit_rate']:.1%}",
            f"{default['hit_rate']:.1%}",
            ours["hit_rate"] / default["hit_rate"],
            ">= 95%",
            ours["hit_rate"] >= 0.95,
        )
    )
    report.add(
        Row(
            "Redis bytes sent per click, same run",
            f"{ours['redis_per_click']:,.0f} B",
            f"{default['redis_per_click']:,.0f} B",
            ours["redis_per_click"] / default["redis_per_click"],
        )
    )
    report.add(
        Row(
            "decoded copies held per decoder replica (each 4 MiB), and replica RSS, same run",
            f"{ours['copies']} ({', '.join(f'{r / mib:.0f}' for r in ours['rss'])} MiB)",
            f"{default['copies']} ({', '.join(f'{r / mib:.0f}' for r in default['rss'])} MiB)",
            sum(ours["copies"]) / max(1, sum(default["copies"])),
        )
    )
    report.add(
        Row(
            "click p50 / p99 over HTTP, same run",
            f"{ms(ours['p50'])} / {ms(ours['p99'])}",
            f"{ms(default['p50'])} / {ms(default['p99'])}",
            ours["p50"] / default["p50"],
        )
    )
