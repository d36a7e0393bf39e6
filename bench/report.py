"""The benchmark report: every ratio the performance issue asks for, each against its reference measured in
the same run on the same machine.

Starts its own redis-server, a local Ray cluster and the three-deployment app (random-weight SAM: the decoder
is the real SAM mask decoder and vit_b's encoder is the real ViT-B, so their costs are real; masks are not),
then measures, alternating each measurement with its reference where both are timings:

  1. follow-up click over HTTP (keep-alive, cached embedding, one point, json polygons) vs one bare
     in-process ONNX decoder call with the same threads;
  2. follow-up throughput, 2 decoder replicas under 8 concurrent HTTP clients, vs the bare decoder's best
     throughput here (the better of one 2-thread session and two 1-thread sessions side by side);
  3. cold request (new JPEG image over HTTP) vs `SamPredictor.set_image` + `predict` in this process, for
     vit_tiny and (unless --quick) vit_b;
  4. encoder images/s, a batch vs one image at a time, on the device at hand;
  5. output encodings of a 1500x2250 mask and of a 1x256x64x64 embedding vs the seed's formats;
  6. Redis bytes per cached image vs a float32 embedding;
  7. encoder runs per 20-click session over 2 decoder replicas vs a per-process cache with 2 workers.

Run: .venv/bin/python bench/report.py [--quick] [--json report.json]   (~6 min here; --quick ~2 min)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sam_cli.local_redis import LocalRedis, free_port
from sam_core.errors import ConfigurationError
from sam_core.wire.schemas import SEGMENT_ROUTE

HEIGHT, WIDTH = 1500, 2250
SEGMENT = SEGMENT_ROUTE
CLICK = [[1050.0, 750.0]]


@dataclass
class Row:
    """One line of the report: a measurement, its reference from the same run, and the target if any."""

    name: str
    ours: str
    reference: str
    ratio: float
    target: str = ""
    met: bool | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        verdict = "" if row.met is None else (" MET" if row.met else " MISSED")
        print(f"  -> {row.name}: {row.ours} vs {row.reference} = {row.ratio:.3g}x {row.target}{verdict}", flush=True)
        for note in row.notes:
            print(f"     {note}", flush=True)

    def print_table(self) -> None:
        headers = ("measure", "ours", "reference (same run)", "ratio", "target")
        cells = [
            (r.name, r.ours, r.reference, f"{r.ratio:.3g}", f"{r.target} {'met' if r.met else 'MISSED'}".strip())
            if r.met is not None
            else (r.name, r.ours, r.reference, f"{r.ratio:.3g}", r.target)
            for r in self.rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        line = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
        print("\n| " + line + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for cell in cells:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) + " |")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def sample_image(variant: int = 0) -> np.ndarray:
    """A 1500x2250 RGB image of flat shapes; `variant` moves one shape so every variant hashes differently.

    No pixel noise: random weights turn noise into masks of thousands of specks (5,558 contours, 15 ms of
    contour tracing), nothing like a real SAM mask; flat shapes give a mask of a few smooth regions.
    """
    image = Image.new("RGB", (WIDTH, HEIGHT), (40, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((600, 300, 1500, 1200), fill=(230, 200, 40))
    offset = 7 * variant
    draw.rectangle((1700 - offset, 200, 2100 - offset, 700), fill=(200, 40, 60))
    return np.asarray(image).copy()


def image_base64(pixels: np.ndarray, image_format: str = "PNG") -> str:
    """PNG (lossless) by default: JPEG's ringing is noise that random weights turn into specky masks."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_server_timing(header: str) -> dict[str, float]:
    """`load;dur=1.20, decode;dur=30.1` -> {"load": 0.0012, "decode": 0.0301} (seconds)."""
    timings = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if rest:
            timings[name] = float(rest) / 1e3
    return timings


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """The project's own local redis-server launcher, on a free port, for the length of the run."""
    try:
        server = LocalRedis(workdir=workdir)
    except ConfigurationError as exc:
        raise SystemExit(exc.reason) from None
    server.start()
    try:
        yield server.url
    finally:
        server.close()


class Bench:
    """The running pieces: work dir, Redis, the Serve app and an HTTP client, plus in-process references."""

    def __init__(self, work: Path, redis_url: str, port: int) -> None:
        self.work = work
        self.redis_url = redis_url
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.checkpoints: dict[str, Path] = {}

    def checkpoint(self, model_type: str) -> Path:
        from sam_core.model.build import make_random_checkpoint

        if model_type not in self.checkpoints:
            self.checkpoints[model_type], _ = make_random_checkpoint(
                model_type, self.work / f"{model_type}.pth", seed=0
            )
        return self.checkpoints[model_type]

    def settings(self, model_type: str, **overrides: Any) -> Any:
        from sam_core.settings import Settings

        values: dict[str, Any] = {
            "model_type": model_type,
            "checkpoint": str(self.checkpoint(model_type)),
            "redis_url": self.redis_url,
            "cache_dir": self.work / "cache",
        }
        return Settings(**{**values, **overrides})

    def deploy(
        self, model_type: str, *, decoders: int, decoder_threads: int, encoder_cpus: float = 2, **settings: Any
    ) -> None:
        """(Re)deploy the app; each replica's num_cpus sets its threads, as in production."""
        from ray import serve

        from deployments.app import compose

        app = compose(
            self.settings(model_type, decoder_threads=decoder_threads, **settings),
            encoder_options={"ray_actor_options": {"num_cpus": encoder_cpus}},
            decoder_options={
                "num_replicas": decoders,
                "autoscaling_config": None,
                "ray_actor_options": {"num_cpus": decoder_threads},
            },
        )
        serve.run(app, name="sam", route_prefix="/")

    def load(self, model_type: str) -> Any:
        from sam_core.model.build import load_model

        return load_model(model_type, checkpoint=self.checkpoint(model_type), cache_dir=self.work / "cache")


# ---- 1. follow-up latency ---------------------------------------------------------------------------------


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


STAGES = ("load", "decode", "encode", "store")


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
    # Random weights give a mask of thousands of specks, whose contours cost ~10x a real SAM mask's. What the
    # click would cost with a SAM-like mask's polygons (full size and low-res), timed here, is an estimate.
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
    from sam_core.service import encode_output

    low_res, logits = sam_like_logits(np.random.default_rng(0))
    output = DecoderOutput(mask_logits=logits[None], iou_scores=np.ones(1, np.float32), low_res_logits=low_res[None])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        encode_output(output, "json")
        times.append(time.perf_counter() - started)
    return median(times)


# ---- 2. follow-up throughput ------------------------------------------------------------------------------


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


# ---- 3. cold request --------------------------------------------------------------------------------------


def cold_request(bench: Bench, report: Report, model_type: str, repeats: int) -> None:
    from segment_anything import SamPredictor

    print(f"[3] cold request, {model_type}: {repeats} new images each side, encoder replica 2 CPUs", flush=True)
    bench.deploy(model_type, decoders=1, decoder_threads=2)
    predictor = SamPredictor(bench.load(model_type).sam)
    click = np.array(CLICK)
    served, reference, encoder_times = [], [], []
    stages: list[dict[str, float]] = []
    with httpx.Client(base_url=bench.base_url, timeout=600) as client:
        for index in range(repeats + 1):  # the first pair warms both paths
            pixels = sample_image(100 + index)
            body = {
                "image": {"type": "base64", "value": image_base64(pixels)},
                "point_coords": CLICK,
                "point_labels": [1],
            }
            started = time.perf_counter()
            predictor.set_image(pixels)
            predictor.predict(point_coords=click, point_labels=np.array([1]), multimask_output=True)
            elapsed_reference = time.perf_counter() - started
            started = time.perf_counter()
            response = client.post(SEGMENT, json=body)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if index:
                served.append(elapsed)
                reference.append(elapsed_reference)
                encoder_times.append(float(response.headers.get("X-Process-Time", "nan")))
                stages.append(parse_server_timing(response.headers.get("Server-Timing", "")))
    ratio = median(served) / median(reference)
    report.add(
        Row(
            f"cold request over HTTP vs SamPredictor set_image+predict, {model_type}",
            ms(median(served)),
            ms(median(reference)),
            ratio,
            "<= 1.1",
            ratio <= 1.1,
            notes=[
                f"ingress time {ms(median(encoder_times))} (Server-Timing p50: image decode "
                f"{ms(median([t.get('image', 0.0) for t in stages]))}, encoder call "
                f"{ms(median([t.get('encoder', 0.0) for t in stages]))}, decoder replica "
                f"{ms(median([sum(t.get(k, 0.0) for k in STAGES) for t in stages]))}); "
                "the rest is the PNG body over HTTP and the proxy",
                "SamPredictor in-process: the same image as an array, no decode, no transfer, no polygons",
            ],
        )
    )


# ---- decoder options ----------------------------------------------------------------------------------------


def decoder_options(bench: Bench, report: Report, clicks: int) -> None:
    """int8 vs fp32 (time, mask IoU), single-mask vs multimask model, 2 threads vs 1: bare calls, alternated."""
    from sam_core.model.decoder import OnnxDecoder
    from sam_core.model.encoder import ImageEncoder
    from sam_core.model.prompts import build_prompt

    print(f"[d] decoder options: {clicks} clicks each, alternated", flush=True)
    model = bench.load("vit_tiny")
    embedding = ImageEncoder(model.sam).embed(sample_image())
    cache = bench.work / "cache"
    fp32 = OnnxDecoder.for_model(model.sam, model.identity, cache, threads=2)
    int8 = OnnxDecoder.for_model(model.sam, model.identity, cache, threads=2, quantized=True)
    one_thread = OnnxDecoder.for_model(model.sam, model.identity, cache, threads=1)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"fp32": [], "int8": [], "multimask": [], "1 thread": []}
    ious = []
    for _ in range(clicks):
        point = [[float(rng.uniform(0, WIDTH)), float(rng.uniform(0, HEIGHT))]]
        prompt = build_prompt(point, [1], embedding.original_size)
        outputs = {}
        for name, decoder, multimask in (
            ("fp32", fp32, False),
            ("int8", int8, False),
            ("multimask", fp32, True),
            ("1 thread", one_thread, False),
        ):
            started = time.perf_counter()
            outputs[name] = decoder.decode(embedding, prompt, multimask=multimask)
            times[name].append(time.perf_counter() - started)
        a, b = outputs["fp32"].masks[0], outputs["int8"].masks[0]
        union = np.logical_or(a, b).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(a, b).sum() / union))
    p50 = {name: median(values) for name, values in times.items()}
    report.add(
        Row(
            "decoder int8 (dynamic quantisation) vs fp32, one click, p50",
            ms(p50["int8"]),
            ms(p50["fp32"]),
            p50["int8"] / p50["fp32"],
            "IoU >= 0.98",
            min(ious) >= 0.98,
            notes=[f"binary-mask IoU vs fp32, {clicks} random clicks: min {min(ious):.3f}, mean {np.mean(ious):.3f}"],
        )
    )
    for name, reference in (
        ("decoder single-mask model vs multimask model (multimask_output false vs true)", "multimask"),
        ("decoder 2 intra-op threads vs 1 (ONNX Runtime, a replica's CPUs)", "1 thread"),
    ):
        report.add(Row(name, ms(p50["fp32"]), ms(p50[reference]), p50["fp32"] / p50[reference]))


# ---- 4. encoder batching ----------------------------------------------------------------------------------


def encoder_batching(bench: Bench, report: Report, model_type: str, batch: int, repeats: int) -> None:
    import torch
    from segment_anything import SamPredictor

    from sam_core.service import configured_encoder

    print(f"[4] encoder, {model_type}: batch of {batch} vs one at a time vs SamPredictor", flush=True)
    model = bench.load(model_type)
    defaults = bench.settings(model_type)  # the service's encoder options
    encoder = configured_encoder(model, defaults, max_batch_size=batch)
    predictor = SamPredictor(model.sam)
    images = [sample_image(200 + i) for i in range(batch)]
    encoder.embed(images[0])  # warm-up
    batched, single, reference = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for image in images:
            predictor.set_image(image)
        reference.append(time.perf_counter() - started)
        started = time.perf_counter()
        encoder.embed_batch(images)
        batched.append(time.perf_counter() - started)
        started = time.perf_counter()
        for image in images:
            encoder.embed(image)
        single.append(time.perf_counter() - started)
    batched_rate, single_rate = batch / min(batched), batch / min(single)
    reference_rate = batch / min(reference)
    options = (
        f"{defaults.encoder_dtype}, fused attention {defaults.encoder_fused_attention}, "
        f"channels-last {defaults.encoder_channels_last}, compile {defaults.encoder_compile}"
    )
    report.add(
        Row(
            f"encoder images/s, {model_type}, batch {batch} vs 1 at a time ({model.device})",
            f"{batched_rate:.3g}/s",
            f"{single_rate:.3g}/s",
            batched_rate / single_rate,
            notes=[f"torch {torch.__version__}, {torch.get_num_threads()} threads; service options: {options}"],
        )
    )
    best = max(batched_rate, single_rate)
    report.add(
        Row(
            f"encoder images/s, {model_type}, service (best of batched/single) vs SamPredictor fp32 one at a time",
            f"{best:.3g}/s",
            f"{reference_rate:.3g}/s",
            best / reference_rate,
            ">= 4 (GPU)",
            notes=["the issue's 4x target is for a GPU; none was lent, so this is the CPU figure"],
        )
    )


# ---- 5. encodings -----------------------------------------------------------------------------------------


def size_of(value: object) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    return len(json.dumps(value, separators=(",", ":")).encode())


def encodings(report: Report, repeats: int) -> None:
    from bench_masks import median_ms as timed_ms
    from bench_masks import npz, sam_like_logits

    from sam_core.wire import masks as sam_masks
    from sam_core.wire import npy as sam_npy

    print("[5] output encodings vs the seed's formats", flush=True)
    rng = np.random.default_rng(0)
    low_res, logits = sam_like_logits(rng)
    mask = logits > 0
    seed_ms, seed_value = timed_ms(lambda: npz(True, masks=logits[None], low_res_masks=low_res[None]), repeats)
    seed_bytes = size_of(seed_value)
    ours: list[tuple[str, Callable[[], object]]] = [
        ("polygon json", lambda: sam_masks.mask_to_polygon(mask)),
        ("COCO RLE json", lambda: sam_masks.encode_rle(mask)),
        ("PNG 1-bit", lambda: sam_masks.encode_png(mask)),
        ("binary npz (bool masks + logits)", lambda: sam_npy.segment_to_npz(mask[None], low_res[None])),
    ]
    for name, fn in ours:
        took, value = timed_ms(fn, repeats)
        nbytes = size_of(value)
        report.add(
            Row(
                f"mask 1500x2250, {name} vs seed float npz_compressed: bytes",
                f"{nbytes:,d} B",
                f"{seed_bytes:,d} B",
                nbytes / seed_bytes,
                notes=[f"time {took:.2f} ms vs {seed_ms:.1f} ms = {took / seed_ms:.3g}x"],
            )
        )
    embedding = (rng.standard_normal((1, 256, 64, 64)) * 0.1).astype(np.float32)
    seed_json_ms, seed_json = timed_ms(
        lambda: json.dumps(embedding.tolist(), separators=(",", ":")), max(1, repeats // 3)
    )
    seed_json_bytes = len(str(seed_json))
    npy_ms, npy = timed_ms(lambda: sam_npy.embedding_to_npy(embedding), repeats)
    report.add(
        Row(
            "embedding 1x256x64x64, .npy binary vs seed JSON list: bytes",
            f"{size_of(npy):,d} B",
            f"{seed_json_bytes:,d} B",
            size_of(npy) / seed_json_bytes,
            notes=[f"time {npy_ms:.2f} ms vs {seed_json_ms:.1f} ms (tolist + dumps) = {npy_ms / seed_json_ms:.3g}x"],
        )
    )


# ---- 6. Redis bytes, 7. encoder runs per session --------------------------------------------------------


def redis_bytes(bench: Bench, report: Report) -> None:
    import redis

    print("[6] Redis bytes per cached image", flush=True)
    client = redis.Redis.from_url(bench.redis_url)
    per_image: dict[str, int] = {}
    for key in client.scan_iter(count=1000):
        name = key.decode()
        usage = client.memory_usage(key) or 0
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


def encoder_runs(bench: Bench, report: Report, clicks: int) -> None:
    from ray import serve

    from sam_core.cache import KINDS, MemoryEmbeddingCache, cache_key
    from sam_core.model.encoder import ImageEncoder
    from sam_core.service import DecoderService, EncoderService
    from sam_core.wire.schemas import SegmentJob

    print(f"[7] encoder runs per {clicks}-click session, 2 decoder replicas vs 2 per-process-cache workers", flush=True)
    bench.deploy("vit_tiny", decoders=2, decoder_threads=1)
    encoder = serve.get_deployment_handle("SamEncoder", app_name="sam")
    before = encoder.stats.remote().result()["images_embedded"]
    pixels = sample_image(300)
    image = {"type": "base64", "value": image_base64(pixels)}
    replicas = set()
    import redis

    redis_client = redis.Redis.from_url(bench.redis_url)
    sent_before, counted, readers = 0, 0, set()
    with httpx.Client(base_url=bench.base_url, timeout=120) as client:
        for index in range(clicks):
            point = [[float(200 + 90 * index), float(300 + 40 * index)]]
            # A real annotation client: the image on the first click, the id on the next ones.
            body: dict[str, Any] = {"image_id": "session", "point_coords": point, "point_labels": [1]}
            if index == 0:
                body["image"] = image
            response = client.post(SEGMENT, json=body)
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
    full_read = sum(int(redis_client.strlen(cache_key(model_id, "session", kind))) for kind in KINDS)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip vit_b (cold request and encoder batching)")
    parser.add_argument("--clicks", type=int, default=40, help="follow-up clicks each side")
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput window each side")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        help="comma-separated sections: latency,throughput,session,redis,cold,decoder,encoder,encodings",
    )
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    started = time.perf_counter()
    report = Report()
    print(
        f"sam-serve benchmark {time.strftime('%Y-%m-%d')}: {threads} CPUs, torch {torch.__version__}, "
        f"ray {ray.__version__}, cuda {'yes' if torch.cuda.is_available() else 'no'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        port = free_port()
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            bench = Bench(Path(tmp), redis_url, port)
            sections: list[tuple[str, Callable[[], object]]] = [
                ("latency", lambda: follow_up_latency(bench, report, args.clicks, threads=2)),
                ("throughput", lambda: follow_up_throughput(bench, report, args.seconds)),
                ("session", lambda: encoder_runs(bench, report, clicks=20)),
                ("redis", lambda: redis_bytes(bench, report)),
                ("cold", lambda: cold_request(bench, report, "vit_tiny", repeats=5)),
                ("decoder", lambda: decoder_options(bench, report, clicks=20)),
                ("encoder", lambda: encoder_batching(bench, report, "vit_tiny", batch=4, repeats=3)),
                ("cold", lambda: args.quick or cold_request(bench, report, "vit_b", repeats=2)),
                ("encoder", lambda: args.quick or encoder_batching(bench, report, "vit_b", batch=2, repeats=1)),
                ("encodings", lambda: encodings(report, repeats=5)),
            ]
            for name, section in sections:
                if not args.only or name in args.only:
                    section()
        finally:
            serve.shutdown()
            ray.shutdown()
    report.print_table()
    print(f"\nbenchmark took {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in report.rows], indent=2))


if __name__ == "__main__":
    main()
