"""Follow-up clicks: latency and throughput over HTTP against the bare in-process decoder, and CPU by role."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    CLICK,
    SEGMENT,
    STAGES,
    Bench,
    Report,
    Row,
    image_base64,
    median,
    ms,
    parse_server_timing,
    sample_image,
)


@dataclass
class FollowUps:
    http_times: list[float]
    bare_times: list[float]
    timings: list[dict[str, float]]

    @property
    def ratio(self) -> float:
        return median(self.http_times) / median(self.bare_times)

    def outside_replica(self) -> list[float]:
        """Per click: the HTTP time minus the ingress's own time (proxy, HTTP, FastAPI parsing)."""
        return [h - t.get("total", 0.0) for h, t in zip(self.http_times, self.timings, strict=True)]

    def hop(self) -> list[float]:
        """Per click: the ingress's time minus the decoder replica's stages (the handle hop both ways)."""
        return [t.get("total", 0.0) - sum(t.get(s, 0.0) for s in STAGES) for t in self.timings]


def follow_up_latency(bench: Bench, report: Report, clicks: int, threads: int) -> None:
    from sam_core.settings import Settings

    print(f"[1] follow-up click latency: 1 decoder replica, {threads} threads, {clicks} clicks each side", flush=True)
    default = Settings.model_fields["decoder_spinning"].default
    other = measure_follow_ups(bench, clicks, threads, decoder_spinning=not default)
    runs = measure_follow_ups(bench, clicks, threads, decoder_spinning=default)
    report_follow_ups(report, runs)
    report.add(
        Row(
            f"follow-up over HTTP, decoder_spinning {default} (default) vs {not default} (p50)",
            ms(median(runs.http_times)),
            ms(median(other.http_times)),
            median(runs.http_times) / median(other.http_times),
            notes=[f"ratio to the bare call with decoder_spinning {not default}: {other.ratio:.2f}"],
        )
    )


def measure_follow_ups(bench: Bench, clicks: int, threads: int, **settings: Any) -> FollowUps:
    """Follow-up clicks over HTTP alternated with bare calls (ONNX Runtime's defaults, same threads)."""
    from sam_core.model.decoder import OnnxDecoder
    from sam_core.model.encoder import ImageEncoder
    from sam_core.model.prompts import build_prompt

    bench.deploy("vit_tiny", decoders=1, decoder_threads=threads, **settings)
    pixels = sample_image()
    model = bench.load("vit_tiny")
    embedding = ImageEncoder(model.sam).embed(pixels)
    bare = OnnxDecoder.for_model(model.sam, model.identity, bench.work / "cache", threads=threads)
    prompt = build_prompt(CLICK, [1], embedding.original_size)
    body = {"image_id": "latency", "point_coords": CLICK, "point_labels": [1], "format": "json"}
    http_times, bare_times, timings = [], [], []
    with httpx.Client(base_url=bench.base_url, timeout=120) as client:
        first = {**body, "image": {"type": "base64", "value": image_base64(pixels)}}
        client.post(SEGMENT, json=first).raise_for_status()
        for _ in range(5):  # warm both paths
            client.post(SEGMENT, json=body).raise_for_status()
            bare.decode(embedding, prompt)
        for _ in range(clicks):
            started = time.perf_counter()
            bare.decode(embedding, prompt)
            bare_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            response = client.post(SEGMENT, json=body)
            http_times.append(time.perf_counter() - started)
            response.raise_for_status()
            timings.append(parse_server_timing(response.headers.get("Server-Timing", "")))
    return FollowUps(http_times, bare_times, timings)


def report_follow_ups(report: Report, runs: FollowUps) -> None:
    http_times, bare_times, timings = runs.http_times, runs.bare_times, runs.timings
    http_p50, bare_p50 = median(http_times), median(bare_times)
    parts = {name: median([t.get(name, 0.0) for t in timings]) for name in (*STAGES, "total")}
    outside, hop = median(runs.outside_replica()), median(runs.hop())
    ratio = runs.ratio
    # Random weights give a mask of thousands of specks, whose contours cost far more than a real SAM mask's.
    # What the click would cost with a SAM-like mask's polygons (full size and low-res), timed here, is an estimate.
    sam_like_s = sam_like_polygon_seconds()
    estimate = (http_p50 - parts["encode"] + sam_like_s) / bare_p50
    report.add(
        Row(
            "follow-up click over HTTP vs bare decoder call (p50)",
            ms(http_p50),
            ms(bare_p50),
            ratio,
            "<= 1.3",
            ratio <= 1.3,
            notes=[
                f"p90 {ms(float(np.percentile(http_times, 90)))} vs {ms(float(np.percentile(bare_times, 90)))}",
                "in the decoder replica (Server-Timing p50): "
                f"cache read {ms(parts['load'])}, decode {ms(parts['decode'])}, polygons {ms(parts['encode'])}, "
                f"logits write {ms(parts['store'])}; ingress<->decoder hop {ms(hop)}; "
                f"proxy + HTTP {ms(outside)}",
                f"estimate with a SAM-like mask's polygons ({ms(sam_like_s)} instead of {ms(parts['encode'])}): "
                f"ratio {estimate:.2f}",
            ],
        )
    )


def sam_like_polygon_seconds(repeats: int = 20) -> float:
    """Median time of the json encoding (both polygons) of a SAM-like 1500x2250 mask (bench_masks' model)."""
    from bench_masks import sam_like_logits

    from sam_core.model.decoder import DecoderOutput
    from sam_core.wire.responses import encode_masks

    low_res, logits = sam_like_logits(np.random.default_rng(0))
    output = DecoderOutput(mask_logits=logits[None], iou_scores=np.ones(1, np.float32), low_res_logits=low_res[None])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        encode_masks(output.masks, output.low_res_logits, output.iou_scores, "json")
        times.append(time.perf_counter() - started)
    return median(times)


def bare_throughput(bench: Bench, seconds: float) -> tuple[float, str]:
    """The bare decoder's best decodes/s here: one 2-thread session, or two 1-thread sessions in parallel."""
    from sam_core.model.decoder import OnnxDecoder
    from sam_core.model.encoder import ImageEncoder
    from sam_core.model.prompts import build_prompt

    model = bench.load("vit_tiny")
    embedding = ImageEncoder(model.sam).embed(sample_image())
    prompt = build_prompt(CLICK, [1], embedding.original_size)
    cache = bench.work / "cache"

    def run(decoders: list[Any]) -> float:
        counts = [0] * len(decoders)
        deadline = time.perf_counter() + seconds

        def loop(index: int) -> None:
            while time.perf_counter() < deadline:
                decoders[index].decode(embedding, prompt)
                counts[index] += 1

        workers = [threading.Thread(target=loop, args=(i,)) for i in range(len(decoders))]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return sum(counts) / (time.perf_counter() - started)

    one_two_thread = [OnnxDecoder.for_model(model.sam, model.identity, cache, threads=2)]
    two_one_thread = [OnnxDecoder.for_model(model.sam, model.identity, cache, threads=1) for _ in range(2)]
    for decoder in one_two_thread + two_one_thread:
        decoder.decode(embedding, prompt)
    results = {
        "1 session x 2 threads": run(one_two_thread),
        "2 sessions x 1 thread": run(two_one_thread),
    }
    best = max(results, key=lambda k: results[k])
    return results[best], best


def cpu_seconds_by_role() -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process and by each kind of Ray Serve process (/proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    roles = {
        "ray::ProxyActor": "proxy",
        "ray::ServeReplica:sam:SamIngress": "ingress",
        "ray::ServeReplica:sam:SamDecoder": "decoders",
        "ray::ServeReplica:sam:SamEncoder": "encoder",
        "ray::ServeController": "controller",
    }
    totals = dict.fromkeys(["bench clients", *roles.values(), "redis + rest of Ray"], 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        if int(entry.name) == os.getpid():
            totals["bench clients"] += used
        elif command in roles:
            totals[roles[command]] += used
        elif command.startswith(("ray::", "redis-server")) or "/ray/" in command:
            totals["redis + rest of Ray"] += used
    return totals


async def http_throughput(base_url: str, image_ids: list[str], clients: int, seconds: float) -> tuple[float, int]:
    completed, errors = 0, 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def loop(index: int) -> None:
            nonlocal completed, errors
            body = {"image_id": image_ids[index % len(image_ids)], "point_coords": CLICK, "point_labels": [1]}
            while time.perf_counter() < deadline:
                response = await client.post(SEGMENT, json=body)
                if response.status_code == 200:
                    completed += 1
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop(i) for i in range(clients)))
    return completed / (time.perf_counter() - started), errors


def follow_up_throughput(bench: Bench, report: Report, seconds: float) -> None:
    print(f"[2] follow-up throughput: 2 decoder replicas x 1 CPU, 8 clients, {seconds:g} s each side", flush=True)
    bench.deploy("vit_tiny", decoders=2, decoder_threads=1)
    image_ids = [f"throughput-{i}" for i in range(4)]
    with httpx.Client(base_url=bench.base_url, timeout=120) as client:
        for i, image_id in enumerate(image_ids):
            body = {"image_id": image_id, "image": {"type": "base64", "value": image_base64(sample_image(i + 1))}}
            client.post("/sam/embed_image", json=body).raise_for_status()
    asyncio.run(http_throughput(bench.base_url, image_ids, 8, 3))  # warm
    cpu_before = cpu_seconds_by_role()
    served, errors = asyncio.run(http_throughput(bench.base_url, image_ids, 8, seconds))
    cpu_after = cpu_seconds_by_role()
    requests = served * seconds
    cpu_per_request = {role: (cpu_after[role] - cpu_before[role]) / requests for role in cpu_after}
    best, how = bare_throughput(bench, seconds)
    ratio = served / best
    report.add(
        Row(
            "follow-up throughput, 2 replicas, 8 clients vs bare decoder best",
            f"{served:.1f}/s",
            f"{best:.1f}/s",
            ratio,
            ">= 0.8",
            ratio >= 0.8,
            notes=[
                f"bare best: {how}; HTTP errors: {errors}; the 8 clients run on the same 2 cores",
                "CPU per served request: "
                + ", ".join(f"{role} {ms(value)}" for role, value in cpu_per_request.items() if value > 0.0005)
                + f" (bare decode: {ms(2 / best)} of CPU per call at its best rate)",
            ],
        )
    )
