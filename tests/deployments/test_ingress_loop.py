"""The ingress never blocks its event loop: clicks stay fast while other clients upload 20 MP photos.

Base64, hashing, URL fetches, image decoding and the resize to the encoder's input frame run on one idle-
priority thread (large JSON bodies in a second pool), so the replica's event loop keeps routing follow-up
clicks while uploads are decoded, and the decoders keep their cores.
"""

from __future__ import annotations

import base64
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests.conftest import ServeApp, photo_jpeg
from tests.deployments.test_api import image_payload

pytestmark = pytest.mark.slow

UPLOADERS = 4
PHOTO_SHAPE = (3648, 5472)  # (height, width): 20 MP, a phone camera's photo
CLICKS = 60
MAX_P50_RATIO = 1.5
ROUNDS = 3
RAY_WORKER_NICENESS = 15  # Ray's default `worker_niceness`


def click_p50(http: httpx.Client, image_id: str, rng: np.random.Generator, clicks: int = CLICKS) -> tuple[float, str]:
    """Median seconds of json follow-up clicks on a cached image, one after another, and the medians of the
    stages the answers' Server-Timing headers report (ms)."""
    times = []
    stages: dict[str, list[float]] = {}
    for _ in range(clicks):
        body = {"image_id": image_id, "point_coords": [[float(rng.uniform(0, 319)), 100.0]], "point_labels": [1]}
        started = time.perf_counter()
        response = http.post("/sam/segment_image", json=body)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        for name, value in re.findall(r"(\w+);dur=([\d.]+)", response.headers["Server-Timing"]):
            stages.setdefault(name, []).append(float(value))
    breakdown = ", ".join(f"{name} {statistics.median(values):.1f}" for name, values in stages.items())
    return statistics.median(times), breakdown


UPLOADER_SCRIPT = """
import sys, threading, time, uuid, json
import httpx

url, body_path, clients = sys.argv[1], sys.argv[2], int(sys.argv[3])
head, tail = open(body_path, "rb").read().split(b'"image"', 1)
durations, failures, stop = [], [], threading.Event()

def upload_loop():
    with httpx.Client(base_url=url, timeout=300) as client:
        while not stop.is_set():
            body = head + b'"image_id": "loop-' + uuid.uuid4().hex.encode() + b'", "image"' + tail
            started = time.perf_counter()
            response = client.post("/sam/embed_image", content=body, headers={"content-type": "application/json"})
            if response.status_code != 200:
                failures.append(response.text[:200])
            durations.append(time.perf_counter() - started)
            print("done", flush=True)

threads = [threading.Thread(target=upload_loop, daemon=True) for _ in range(clients)]
for thread in threads:
    thread.start()
sys.stdin.read()  # until the test closes our stdin
stop.set()
for thread in threads:
    thread.join(timeout=300)
print(json.dumps({"durations": durations, "failures": failures}), flush=True)
"""


def loaded_round(
    http: httpx.Client, url: str, body_path: Path, image_id: str, rng: np.random.Generator
) -> tuple[float, str, float, str, dict[str, list]]:
    """One round: the click p50 idle, then while the uploaders run; returns both with their stage breakdowns
    and the uploaders' report (durations, failures)."""
    idle, idle_stages = click_p50(http, image_id, rng)
    # The uploading clients run in a process of their own at the service's CPU priority (Ray's workers
    # run at nice 15): on this one machine they stand for clients elsewhere, and must not outrank it.
    uploaders = subprocess.Popen(
        [sys.executable, "-c", UPLOADER_SCRIPT, url, str(body_path), str(UPLOADERS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=lambda: os.nice(RAY_WORKER_NICENESS),
    )
    assert uploaders.stdin is not None
    assert uploaders.stdout is not None
    try:
        assert uploaders.stdout.readline().strip() == b"done"  # the uploads are in full swing
        loaded, loaded_stages = click_p50(http, image_id, rng)
    finally:
        uploaders.stdin.close()
        output = uploaders.stdout.read().decode().strip().splitlines()
        uploaders.wait(timeout=300)
    return idle, idle_stages, loaded, loaded_stages, json.loads(output[-1])


def test_clicks_keep_their_speed_while_four_clients_upload_20_megapixel_photos(
    serve_app: ServeApp, tmp_path: Path
) -> None:
    """Each round measures the idle p50 right before the loaded one, so a machine slowed by work outside the
    service (CI neighbours) weighs on both; the best of up to ROUNDS rounds must meet the ratio. A ratio
    missed in every round is a real regression; one noisy round is not."""
    rng = np.random.default_rng()
    photo = photo_jpeg(rng, PHOTO_SHAPE, quality=90)
    # The body is made once; each upload names a new image_id, so every upload is decoded and embedded.
    body_path = tmp_path / "upload.json"
    body_path.write_bytes(
        orjson.dumps({"image": {"type": "base64", "value": base64.b64encode(photo).decode()}, "format": "metadata"})
    )

    ratios = []
    with httpx.Client(base_url=serve_app.url, timeout=120) as http:
        image_id = f"loop-clicks-{uuid.uuid4()}"
        pixels = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
        assert http.post("/sam/embed_image", json={"image": image_payload(pixels), "image_id": image_id}).is_success
        click_p50(http, image_id, rng, clicks=10)  # warm both decoder replicas' local copies
        for round_number in range(1, ROUNDS + 1):
            idle, idle_stages, loaded, loaded_stages, report = loaded_round(
                http, serve_app.url, body_path, image_id, rng
            )
            uploads = report["durations"]
            print(
                f"\nround {round_number}: click p50 idle {idle * 1e3:.1f} ms, while {UPLOADERS} clients upload "
                f"20 MP JPEGs ({len(photo) / 1e6:.1f} MB) {loaded * 1e3:.1f} ms ({loaded / idle:.2f}x); "
                f"{len(uploads)} uploads done, upload p50 {statistics.median(uploads):.2f} s\n"
                f"  Server-Timing p50 (ms) idle: {idle_stages}\n  loaded: {loaded_stages}"
            )
            assert not report["failures"], report["failures"][:3]
            assert len(uploads) >= 2, "the uploads did not overlap the clicks"
            ratios.append(loaded / idle)
            if ratios[-1] <= MAX_P50_RATIO:
                break
    assert min(ratios) <= MAX_P50_RATIO, f"click p50 loaded/idle {[round(r, 2) for r in ratios]} in every round"
