"""Bounded load over loopback: 16 concurrent clients mixing new images and follow-up clicks with no errors and
flat memory; beyond capacity, fast 503s instead of a growing queue.

CI runs a short version; the full run is
`SAM_LOAD_SECONDS=60 .venv/bin/python -m pytest -m load -s tests/e2e/test_load.py`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import APP_NAME, ServeApp, second_app

pytestmark = [pytest.mark.slow, pytest.mark.load]

CLIENTS = 16
SECONDS = float(os.environ.get("SAM_LOAD_SECONDS", "15"))
NEW_IMAGE_SHARE = 0.1


def png_base64(rng: np.random.Generator) -> str:
    pixels = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def replica_rss_mb(app_name: str) -> dict[str, float]:
    """Resident memory of each replica process of the app, found by Ray's process titles in /proc."""
    sizes: dict[str, float] = {}
    marker = f"ServeReplica:{app_name}:".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if marker not in cmdline:
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        rss_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        deployment = cmdline.split(marker, 1)[1].split(b"\x00", 1)[0].decode(errors="replace")
        sizes[f"{deployment}:{proc.name}"] = rss_kb / 1024
    return sizes


async def client_loop(url: str, deadline: float, seed: int) -> tuple[list[float], list[str]]:
    rng = np.random.default_rng(seed)
    latencies: list[float] = []
    errors: list[str] = []
    images: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        while time.monotonic() < deadline:
            body: dict[str, Any] = {"point_coords": [[float(rng.integers(0, 160)), 60.0]], "point_labels": [1]}
            if not images or rng.random() < NEW_IMAGE_SHARE:
                images.append(f"load-{uuid.uuid4()}")
                body["image"] = {"type": "base64", "value": png_base64(rng)}
                body["image_id"] = images[-1]
            else:
                body["image_id"] = images[int(rng.integers(len(images)))]
            started = time.perf_counter()
            response = await http.post("/sam/segment_image", json=body)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.text[:200]}")
    return latencies, errors


async def run_clients(url: str, clients: int, seconds: float) -> tuple[list[float], list[str]]:
    deadline = time.monotonic() + seconds
    results = await asyncio.gather(*(client_loop(url, deadline, seed) for seed in range(clients)))
    return [t for r in results for t in r[0]], [e for r in results for e in r[1]]


def test_sixteen_clients_mixing_new_images_and_clicks_see_no_errors_and_flat_memory(serve_app: ServeApp) -> None:
    asyncio.run(run_clients(serve_app.url, 4, 3))  # warm-up: every replica has served and allocated
    rss_before = replica_rss_mb(APP_NAME)

    latencies, errors = asyncio.run(run_clients(serve_app.url, CLIENTS, SECONDS))

    rss_after = replica_rss_mb(APP_NAME)
    p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
    print(
        f"\nload: {CLIENTS} clients x {SECONDS:.0f} s: {len(latencies)} requests, {len(errors)} errors, "
        f"p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms"
    )
    for name in sorted(rss_after):
        print(f"  RSS {name}: {rss_before.get(name, float('nan')):.0f} -> {rss_after[name]:.0f} MB")
    assert not errors, errors[:5]
    assert len(latencies) >= CLIENTS
    for name, after in rss_after.items():
        if name in rss_before:
            assert after < rss_before[name] * 1.3 + 50, f"{name} grew from {rss_before[name]:.0f} to {after:.0f} MB"


OVERLOAD_APP = "sam-overload"


@pytest.fixture
def overload_app(serve_app: ServeApp) -> Iterator[str]:
    """An app with one decoder that takes 1 request at a time and queues at most 2 more."""
    limits = {"max_ongoing_requests": 1, "max_queued_requests": 2}
    with second_app(OVERLOAD_APP, serve_app.settings, decoder_options=limits):
        yield f"{serve_app.url}/{OVERLOAD_APP}"


def test_overload_gets_fast_503s_not_an_unbounded_queue(overload_app: str) -> None:
    rng = np.random.default_rng()
    image_id = f"overload-{uuid.uuid4()}"
    with httpx.Client(base_url=overload_app, timeout=60) as http:
        body = {"image": {"type": "base64", "value": png_base64(rng)}, "image_id": image_id}
        assert http.post("/sam/embed_image", json=body).status_code == 200

    async def burst() -> list[tuple[int, float, str]]:
        async with httpx.AsyncClient(base_url=overload_app, timeout=60) as http:

            async def one(x: int) -> tuple[int, float, str]:
                started = time.perf_counter()
                response = await http.post(
                    "/sam/segment_image",
                    json={"image_id": image_id, "point_coords": [[float(x), 50.0]], "point_labels": [1]},
                )
                return response.status_code, time.perf_counter() - started, response.text

            return await asyncio.gather(*(one(x) for x in range(40)))

    results = asyncio.run(burst())
    statuses = [status for status, _, _ in results]
    shed = [(elapsed, text) for status, elapsed, text in results if status == 503]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 3
    assert shed, "no request was shed with a 503 under 40 concurrent clicks"
    assert all('"reason"' in text for _, text in shed), shed[:3]
    assert max(elapsed for elapsed, _ in shed) < 5.0
