"""Many prompts in one ONNX run (`bench/report.py --only batch`): a low-res graph exported with a batch axis over
prompts, B boxes a run, against one box a run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
from harness import Bench, Report, Row, median, ms, sample_image


def prompt_batch(bench: Bench, report: Report, boxes: int = 48, rounds: int = 3) -> None:
    """Many prompts in one ONNX run: `boxes` boxes on the 1500x2250 image decoded by a low-res graph exported
    with a batch axis over prompts, B boxes a run, against one box a run (the service's loop), alternated round
    by round; 2 threads, the CUDA provider where there is one. Scores and logits must match B=1's."""
    from sam_core.model.decoder import make_session
    from sam_core.model.decoder_export import export_decoder
    from sam_core.model.encoder import ImageEncoder
    from sam_core.model.prompts import build_prompt, onnx_prompt_inputs

    print(f"[b] many prompts in one ONNX run: {boxes} boxes, {rounds} rounds alternated", flush=True)
    model = bench.load("vit_tiny")
    embedding = ImageEncoder(model.sam).embed(sample_image())
    path = export_decoder(
        model.sam, bench.work / "batch" / "single-lowres-batch.onnx", multimask=False, low_res=True, prompt_batch=True
    )
    session = make_session(path, threads=2, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(boxes):
        x0, x1 = sorted(rng.uniform(0, harness.WIDTH, 2))
        y0, y1 = sorted(rng.uniform(0, harness.HEIGHT, 2))
        prompt = build_prompt([], [], embedding.original_size, box=[x0, y0, x1, y1])
        rows.append(onnx_prompt_inputs(prompt, embedding.original_size))
    coords = np.concatenate([c for c, _ in rows])
    labels = np.concatenate([lab for _, lab in rows])

    def run(size: int) -> np.ndarray:
        out = []
        for start in range(0, boxes, size):
            count = len(coords[start : start + size])
            feeds = {
                "image_embeddings": embedding.embedding,
                "point_coords": coords[start : start + size],
                "point_labels": labels[start : start + size],
                "mask_input": np.zeros((count, 1, 256, 256), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
            }
            out.append(session.run(None, feeds)[1])
        return np.concatenate(out)

    sizes = (1, 4, 16, boxes)
    reference = run(1)
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            started = time.perf_counter()
            logits = run(size)
            times[size].append(time.perf_counter() - started)
            assert np.allclose(logits, reference, atol=1e-4), f"batch of {size}: logits differ"
    one = median(times[1])
    device = session.get_providers()[0].removesuffix("ExecutionProvider")
    for size in sizes[1:]:
        report.add(
            Row(
                f"{boxes} boxes, {size} a run vs 1 a run (one ONNX session, {device}, 2 threads)",
                ms(median(times[size])),
                ms(one),
                median(times[size]) / one,
                notes=[f"{ms(median(times[size]) / boxes)} a box vs {ms(one / boxes)}"],
            )
        )
