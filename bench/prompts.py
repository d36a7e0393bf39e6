"""Many boxes on one image: one request with `prompts` vs a request per box over HTTP, vs a bare in-process loop
of ONNX decodes (the same boxes, the same encoding), on one decoder replica."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import HEIGHT, SEGMENT, WIDTH, Bench, Report, Row, image_base64, median, ms, sample_image


def boxes_on_the_image(count: int, seed: int = 0) -> list[list[float]]:
    """`count` boxes of 40-600 pixels a side, inside the 1500x2250 sample image."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(count):
        w, h = rng.uniform(40, 600, size=2)
        x0, y0 = rng.uniform(0, WIDTH - w - 1), rng.uniform(0, HEIGHT - h - 1)
        boxes.append([round(float(x0), 1), round(float(y0), 1), round(float(x0 + w), 1), round(float(y0 + h), 1)])
    return boxes


def many_boxes(bench: Bench, report: Report, boxes: int = 50, repeats: int = 3, threads: int = 2) -> None:
    from sam_core.model.decoder import OnnxDecoder
    from sam_core.model.encoder import ImageEncoder
    from sam_core.model.prompts import build_prompt
    from sam_core.wire.responses import encode_masks

    print(f"[8] {boxes} boxes on one image: one request vs {boxes} requests vs a bare loop ({repeats} rounds)")
    bench.deploy("vit_tiny", decoders=1, decoder_threads=threads)
    pixels = sample_image(3)
    model = bench.load("vit_tiny")
    embedding = ImageEncoder(model.sam).embed(pixels)
    bare = OnnxDecoder.for_model(model.sam, model.identity, bench.work / "cache", threads=threads)
    box_list = boxes_on_the_image(boxes)
    prompts = [build_prompt([], [], embedding.original_size, box=box) for box in box_list]

    def bare_loop() -> None:
        for prompt in prompts:
            out = bare.decode(embedding, prompt)
            encode_masks(out.masks, out.low_res_logits, out.iou_scores, "rle")

    one, each, loop = [], [], []
    with httpx.Client(base_url=bench.base_url, timeout=600) as client:
        image = {"type": "base64", "value": image_base64(pixels)}
        client.post("/sam/embed_image", json={"image": image, "image_id": "boxes", "format": "metadata"})
        many_body = {"image_id": "boxes", "prompts": [{"box": box} for box in box_list], "format": "rle"}
        client.post(SEGMENT, json=many_body).raise_for_status()  # warm
        for _ in range(repeats):
            started = time.perf_counter()
            answer = client.post(SEGMENT, json=many_body)
            one.append(time.perf_counter() - started)
            answer.raise_for_status()
            assert len(answer.json()["results"]) == boxes, "one result per box"
            started = time.perf_counter()
            for box in box_list:
                single = {"image_id": "boxes", "point_coords": [], "point_labels": [], "box": box, "format": "rle"}
                client.post(SEGMENT, json=single).raise_for_status()
            each.append(time.perf_counter() - started)
            started = time.perf_counter()
            bare_loop()
            loop.append(time.perf_counter() - started)
    one_s, each_s, loop_s = median(one), median(each), median(loop)
    report.add(
        Row(
            f"{boxes} boxes, one request (prompts) vs {boxes} single requests (rle, p50)",
            ms(one_s),
            ms(each_s),
            one_s / each_s,
            "<= 0.333",
            one_s / each_s <= 1 / 3,
            [
                f"{boxes / one_s:.1f} boxes/s on one decoder replica of {threads} threads (single requests: "
                f"{boxes / each_s:.1f})"
            ],
        )
    )
    report.add(
        Row(
            f"{boxes} boxes, one request (prompts) vs a bare loop of ONNX decodes + rle (p50)",
            ms(one_s),
            ms(loop_s),
            one_s / loop_s,
            "<= 1.2",
            one_s / loop_s <= 1.2,
        )
    )
