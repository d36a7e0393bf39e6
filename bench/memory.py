"""Memory per replica: a decoder replica's RSS as its local copies fill to their bound, and the encoder's RSS
over 100 images of mixed sizes (4 requests at a time, so batches form)."""

from __future__ import annotations

import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import SEGMENT, Bench, Report, Row

COPY_BYTES = 4 * 1024 * 1024  # a decoded (1, 256, 64, 64) float32 embedding
BOUND_COPIES = 16
IMAGES = 100
CLICKED = 3 * BOUND_COPIES
MIB = 1024 * 1024


def mixed_image(rng: np.random.Generator) -> tuple[str, tuple[int, int]]:
    """A JPEG of flat shapes, 256-3000 px a side (each side drawn on its own), base64; and its (h, w)."""
    import base64

    height, width = (int(n) for n in rng.integers(256, 3001, size=2))
    image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 256, size=3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, size=2))
        draw.rectangle((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, size=3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode(), (height, width)


def _stats(deployment: str) -> dict[str, Any]:
    from ray import serve

    stats: dict[str, Any] = serve.get_deployment_handle(deployment, app_name="sam").stats.remote().result()
    return stats


def memory(bench: Bench, report: Report) -> None:
    from sam_core.model.decoder import OnnxDecoder

    print(f"[12] memory: decoder local copies bounded at {BOUND_COPIES} x 4 MiB, encoder over {IMAGES} images")
    model = bench.load("vit_tiny")
    OnnxDecoder.for_model(model.sam, model.identity, bench.work / "cache", threads=1)  # no replica exports
    bench.deploy(
        "vit_tiny", decoders=1, decoder_threads=1, encoder_cpus=1, decoder_local_cache_bytes=BOUND_COPIES * COPY_BYTES
    )
    rng = np.random.default_rng(0)
    images = [mixed_image(rng) for _ in range(IMAGES)]
    encoder_rss: dict[int, int] = {}
    with httpx.Client(base_url=bench.base_url, timeout=300) as client:

        def embed(image: tuple[str, tuple[int, int]]) -> str:
            body = {"image": {"type": "base64", "value": image[0]}, "format": "metadata"}
            response = client.post("/sam/embed_image", json=body)
            response.raise_for_status()
            image_id: str = response.json()["image_id"]
            return image_id

        ids: list[str] = []
        with ThreadPoolExecutor(4) as pool:
            for start in range(0, IMAGES, 10):
                ids.extend(pool.map(embed, images[start : start + 10]))
                encoder_rss[len(ids)] = _stats("SamEncoder")["rss_bytes"]
        encoder = _stats("SamEncoder")
        decoder_rss: dict[int, tuple[int, int, int]] = {}
        for index, image_id in enumerate(ids[:CLICKED], start=1):
            height, width = images[index - 1][1]
            body = {"image_id": image_id, "point_coords": [[width / 2, height / 2]], "point_labels": [1]}
            client.post(SEGMENT, json={**body, "format": "rle"}).raise_for_status()
            if index in (1, BOUND_COPIES, CLICKED):
                stats = _stats("SamDecoder")
                decoder_rss[index] = (stats["rss_bytes"], stats["local_copies"], stats["local_copy_bytes"])
    print(f"    encoder RSS by images embedded: { {n: round(r / MIB) for n, r in encoder_rss.items()} } MiB")
    print(f"    decoder (RSS, copies, copy bytes) by images clicked: {decoder_rss}")
    first, full, past = decoder_rss[1], decoder_rss[BOUND_COPIES], decoder_rss[CLICKED]
    report.add(
        Row(
            f"decoder replica RSS with its local copies full ({BOUND_COPIES} x 4 MiB bound) vs after one image",
            f"{full[0] / MIB:.0f} MiB ({full[1]} copies)",
            f"{first[0] / MIB:.0f} MiB (1 copy)",
            full[0] / first[0],
            notes=[
                f"after {CLICKED} images: {past[0] / MIB:.0f} MiB, {past[1]} copies of {past[2] / MIB:.0f} MiB "
                f"(the bound holds: decoder_local_cache_bytes)",
                f"growth from 1 to {BOUND_COPIES} copies: {(full[0] - first[0]) / MIB:.0f} MiB for "
                f"{(full[2] - first[2]) / MIB:.0f} MiB of copies",
            ],
        )
    )
    report.add(
        Row(
            f"encoder replica RSS after {IMAGES} images of 256-3000 px a side vs after the first 10",
            f"{encoder_rss[IMAGES] / MIB:.0f} MiB",
            f"{encoder_rss[10] / MIB:.0f} MiB",
            encoder_rss[IMAGES] / encoder_rss[10],
            notes=[
                f"{encoder['images_embedded']} images in {encoder['batches']} batches (4 requests at a time); "
                "RSS every 10 images: " + ", ".join(f"{r / MIB:.0f}" for r in encoder_rss.values()) + " MiB"
            ],
        )
    )
