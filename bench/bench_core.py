"""Times of the model library on this machine: embeds (tiny and vit_b random weights) and one decoder call.

Run: .venv/bin/python bench/bench_core.py [--skip-vit-b]. Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sam_core.model.build import load_model, make_random_checkpoint
from sam_core.model.decoder import OnnxDecoder
from sam_core.model.encoder import ImageEncoder
from sam_core.model.prompts import build_prompt

HEIGHT, WIDTH = 1500, 2250


def timed(fn: object, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-vit-b", action="store_true", help="skip the ~30 s vit_b embed")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path, _ = make_random_checkpoint("vit_tiny", work / "tiny.pth", seed=0)
        tiny = load_model("vit_tiny", checkpoint=path, cache_dir=work, device="cpu")
        encoder = ImageEncoder(tiny.sam)
        encoder.embed(image)  # warm-up
        embed_times = timed(lambda: encoder.embed(image), 5)
        rows.append(("vit_tiny embed, 1 image (median of 5)", f"{statistics.median(embed_times) * 1e3:.0f} ms"))
        batch_times = timed(lambda: encoder.embed_batch([image] * 4), 2)
        rows.append(("vit_tiny embed, batch of 4 (per image)", f"{min(batch_times) / 4 * 1e3:.0f} ms"))

        embedding = encoder.embed(image)
        decoder = OnnxDecoder.for_model(tiny.sam, tiny.identity, work, threads=threads)
        prompt = build_prompt([[1000, 700]], [1], embedding.original_size)
        decoder.decode(embedding, prompt)
        times = timed(lambda: decoder.decode(embedding, prompt), args.repeats)
        rows.append(
            (
                f"decoder, 1 click, single mask, {HEIGHT}x{WIDTH} out, {threads} threads",
                f"p50 {statistics.median(times) * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms",
            )
        )
        quantized = OnnxDecoder.for_model(tiny.sam, tiny.identity, work, threads=threads, quantized=True)
        quantized.decode(embedding, prompt)
        q_times = timed(lambda: quantized.decode(embedding, prompt), args.repeats)
        rows.append(("decoder int8, same call", f"p50 {statistics.median(q_times) * 1e3:.1f} ms"))

        if not args.skip_vit_b:
            path_b, _ = make_random_checkpoint("vit_b", work / "vit_b.pth", seed=0)
            base = load_model("vit_b", checkpoint=path_b, cache_dir=work, device="cpu")
            started = time.perf_counter()
            ImageEncoder(base.sam).embed(image)
            rows.append(("vit_b (random weights) embed, 1 image, one run", f"{time.perf_counter() - started:.1f} s"))

    width = max(len(name) for name, _ in rows)
    print(f"torch {torch.__version__}, {threads} CPUs, device cpu")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
