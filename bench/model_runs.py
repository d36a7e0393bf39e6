"""Cold requests, decoder and encoder options, and output encodings: the model's own costs and its answers' bytes.

Redis bytes and encoder runs per session are in cache_runs.py."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import Bench, Report, Row, median, ms, sample_image


def cold_request(bench: Bench, report: Report, model_type: str, repeats: int) -> None:
    from segment_anything import SamPredictor

    print(f"[3] cold request, {model_type}: {repeats} new images each side, encoder replica 2 CPUs", flush=True)
    bench.deploy(model_type, decoders=1, decoder_threads=2)
    predictor = SamPredictor(bench.load(model_type).sam)
    click = np.array(harness.CLICK)
    served, reference, encoder_times = [], [], []
    stages: list[dict[str, float]] = []
    with httpx.Client(base_url=bench.base_url, timeout=600) as client:
        for index in range(repeats + 1):  # the first pair warms both paths
            pixels = sample_image(100 + index)
            body = {
                "image": {"type": "base64", "value": harness.image_base64(pixels)},
                "point_coords": harness.CLICK,
                "point_labels": [1],
            }
            started = time.perf_counter()
            predictor.set_image(pixels)
            predictor.predict(point_coords=click, point_labels=np.array([1]), multimask_output=True)
            elapsed_reference = time.perf_counter() - started
            started = time.perf_counter()
            response = client.post(harness.SEGMENT, json=body)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if index:
                served.append(elapsed)
                reference.append(elapsed_reference)
                encoder_times.append(float(response.headers.get("X-Process-Time", "nan")))
                stages.append(harness.parse_server_timing(response.headers.get("Server-Timing", "")))
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
                f"{ms(median([sum(t.get(k, 0.0) for k in harness.STAGES) for t in stages]))}); "
                "the rest is the PNG body over HTTP and the proxy",
                "SamPredictor in-process: the same image as an array, no decode, no transfer, no polygons",
            ],
        )
    )


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
        point = [[float(rng.uniform(0, harness.WIDTH)), float(rng.uniform(0, harness.HEIGHT))]]
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


def low_res_graph(bench: Bench, report: Report, clicks: int) -> None:
    """The decoder as it runs (the low-res graph, the masks returned upscaled with OpenCV) against the full graph
    with SAM's upscaling inside (what it ran before), on a 1500x2250 image: single and multimask, 1 and 2 threads,
    alternated click by click; and how many mask pixels differ."""
    from sam_core.model.decoder import OnnxDecoder, make_session
    from sam_core.model.encoder import ImageEncoder
    from sam_core.model.prompts import build_prompt, onnx_prompt_inputs

    print(f"[l] decoder low-res graph vs full graph: {clicks} clicks each, alternated", flush=True)
    model = bench.load("vit_tiny")
    embedding = ImageEncoder(model.sam).embed(sample_image())
    rng = np.random.default_rng(1)
    for threads in (1, 2):
        decoder = OnnxDecoder.for_model(model.sam, model.identity, bench.work / "cache", threads=threads)
        for multimask in (False, True):
            full = make_session(decoder.paths[multimask, False], threads=threads)
            times: dict[str, list[float]] = {"low": [], "full": []}
            differing = 0
            for _ in range(clicks):
                point = [[float(rng.uniform(0, harness.WIDTH)), float(rng.uniform(0, harness.HEIGHT))]]
                prompt = build_prompt(point, [1], embedding.original_size)
                coords, labels = onnx_prompt_inputs(prompt, embedding.original_size)
                feeds = {
                    "image_embeddings": embedding.embedding,
                    "point_coords": coords,
                    "point_labels": labels,
                    "mask_input": np.zeros((1, 1, 256, 256), np.float32),
                    "has_mask_input": np.zeros(1, np.float32),
                    "orig_im_size": np.array(embedding.original_size, np.float32),
                }
                started = time.perf_counter()
                out = decoder.decode(embedding, prompt, multimask=multimask)
                masks = out.masks
                times["low"].append(time.perf_counter() - started)
                started = time.perf_counter()
                reference = full.run(None, feeds)[0][0]
                reference = (reference[1:] if multimask else reference) > 0
                times["full"].append(time.perf_counter() - started)
                differing += int((masks != reference).sum())
            low, whole = median(times["low"]), median(times["full"])
            kind = "multimask" if multimask else "single-mask"
            report.add(
                Row(
                    f"decoder {kind}, {threads} thread(s), 1500x2250: low-res graph + upscale outside vs full graph",
                    ms(low),
                    ms(whole),
                    low / whole,
                    notes=[f"mask pixels differing over {clicks} clicks: {differing} of {masks.size * clicks:,}"],
                )
            )


def encoder_batching(bench: Bench, report: Report, model_type: str, batch: int, repeats: int) -> None:
    import torch
    from segment_anything import SamPredictor

    from sam_core.services.configured import configured_encoder

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
