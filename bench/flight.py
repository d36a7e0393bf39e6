"""Single flight: 8 concurrent cold requests for one new image through 2 ingress replicas (vit_tiny,
1500x2250 JPEG, one click each) vs one cold request alone; counts the encoder's runs for the 8."""

from __future__ import annotations

import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import SEGMENT, Bench, Report, Row, image_base64, median, sample_image

CONCURRENT = 8


def _cold(url: str, body: dict[str, Any]) -> tuple[float, str]:
    with httpx.Client(base_url=url, timeout=300) as client:
        started = time.perf_counter()
        response = client.post(SEGMENT, json=body)
        seconds = time.perf_counter() - started
        response.raise_for_status()
        return seconds, response.headers["X-Ingress-Replica"]


def single_flight(bench: Bench, report: Report, repeats: int = 3) -> None:
    from ray import serve

    print(
        f"[10] single flight: {CONCURRENT} concurrent cold requests for one image over 2 ingress replicas", flush=True
    )
    bench.deploy("vit_tiny", decoders=2, decoder_threads=1, ingresses=2)
    encoder = serve.get_deployment_handle("SamEncoder", app_name="sam")
    click = {"point_coords": [[700.0, 500.0]], "point_labels": [1], "format": "rle"}
    _cold(bench.base_url, {"image": {"type": "base64", "value": image_base64(sample_image(40), "JPEG")}, **click})
    alone, together, runs, ingresses = [], [], [], set()
    for repeat in range(repeats):
        # A new image on each side of each repeat (a new content hash: no cache hit, no shared run).
        single = {"image": {"type": "base64", "value": image_base64(sample_image(50 + repeat), "JPEG")}, **click}
        alone.append(_cold(bench.base_url, {**single, "image_id": f"alone-{uuid.uuid4()}"})[0])
        image = {"type": "base64", "value": image_base64(sample_image(60 + repeat), "JPEG")}
        body = {"image": image, **click}
        before = encoder.stats.remote().result()["images_embedded"]
        started = time.perf_counter()
        with ThreadPoolExecutor(CONCURRENT) as pool:
            answers = list(pool.map(lambda b: _cold(bench.base_url, b), [body] * CONCURRENT))
        together.append(time.perf_counter() - started)
        runs.append(encoder.stats.remote().result()["images_embedded"] - before)
        ingresses |= {replica for _, replica in answers}
        print(f"    one cold {alone[-1]:.2f} s; {CONCURRENT} at once {together[-1]:.2f} s, encoder runs {runs[-1]}")
    alone_s, together_s = median(alone), median(together)
    report.add(
        Row(
            f"encoder runs for {CONCURRENT} concurrent cold requests of one new image (2 ingress replicas)",
            f"{max(runs)} (each of {repeats} repeats: {runs})",
            f"{CONCURRENT} requests",
            max(runs) / CONCURRENT,
            "1 run",
            max(runs) == 1,
            notes=[f"answered by {len(ingresses)} ingress replicas"],
        )
    )
    report.add(
        Row(
            f"{CONCURRENT} concurrent cold requests of one new image vs one cold request alone (wall time)",
            f"{together_s:.2f} s",
            f"{alone_s:.2f} s",
            together_s / alone_s,
            notes=["vit_tiny, 1500x2250 JPEG, one click each; before single flight: 4 requests ran the encoder 4x"],
        )
    )
