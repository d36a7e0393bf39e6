"""Segment everything: POST /sam/segment_everything (a new image: encoder, then the generator on one decoder
replica) vs `SamAutomaticMaskGenerator.generate` in this process (its own `set_image` and torch decoder), on
the same weights and image, the generator's default filters, alternated."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Bench, Report, Row, image_base64, median, sample_image

EVERYTHING = "/sam/segment_everything"


def everything(
    bench: Bench, report: Report, settings: tuple[tuple[int, int], ...] = ((8, 2), (32, 1)), threads: int = 2
) -> None:
    """One row per (points_per_side, repeats); each repeat embeds the image anew on both sides."""
    from segment_anything import SamAutomaticMaskGenerator

    print(f"[9] segment everything vs SamAutomaticMaskGenerator in process, points per side {settings}")
    bench.deploy("vit_tiny", decoders=1, decoder_threads=threads)
    pixels = sample_image(4)
    model = bench.load("vit_tiny")
    image = {"type": "base64", "value": image_base64(pixels)}
    with httpx.Client(base_url=bench.base_url, timeout=3600) as client:
        warm = {"image": image, "image_id": "warm", "points_per_side": 1}
        client.post(EVERYTHING, json=warm).raise_for_status()
        for points_per_side, repeats in settings:
            ours, theirs, counts = [], [], set()
            for _ in range(repeats):
                body = {"image": image, "image_id": f"everything-{uuid.uuid4()}", "points_per_side": points_per_side}
                started = time.perf_counter()
                answer = client.post(EVERYTHING, json=body)
                ours.append(time.perf_counter() - started)
                answer.raise_for_status()
                started = time.perf_counter()
                records = SamAutomaticMaskGenerator(model.sam, points_per_side=points_per_side).generate(pixels)
                theirs.append(time.perf_counter() - started)
                counts.add((len(answer.json()["masks"]), len(records)))
                print(
                    f"    {points_per_side} per side: ours {ours[-1]:.1f} s, in process {theirs[-1]:.1f} s", flush=True
                )
            ours_s, theirs_s = median(ours), median(theirs)
            points = points_per_side**2
            report.add(
                Row(
                    f"segment everything, {points_per_side} points per side, vit_tiny 1500x2250 (new image, s)",
                    f"{ours_s:.1f} s",
                    f"{theirs_s:.1f} s",
                    ours_s / theirs_s,
                    "<= 1.2",
                    ours_s / theirs_s <= 1.2,
                    [
                        f"{points / ours_s:.1f} points/s on one decoder replica of {threads} threads "
                        f"(in process: {points / theirs_s:.1f}); masks (ours, generator): {sorted(counts)}"
                    ],
                )
            )
