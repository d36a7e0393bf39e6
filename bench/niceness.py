"""The click path's nice level: two copies of the app side by side, the ingress and decoder replicas of one at
the deployments' nice 0 and of the other at Ray's 15, requests alternated between them; quiet, and with one
CPU-bound process at nice 0 beside them (a neighbour on the node: a batch client, another service)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CLICK, SEGMENT, Bench, Report, Row, image_base64, median, ms, sample_image
from prompts import boxes_on_the_image

from deployments.niceness import CLICK_PATH_NICENESS

RAY_NICENESS = 15
ROUNDS = 5
CLICKS = 8


def niceness(bench: Bench, report: Report) -> None:
    from ray import serve

    print(f"[13] click path at nice {CLICK_PATH_NICENESS} vs {RAY_NICENESS}: two apps side by side", flush=True)
    apps = {CLICK_PATH_NICENESS: "nice-ours", RAY_NICENESS: "nice-ray"}
    serve.delete("sam")  # two apps' replicas must fit the benchmark's Ray CPUs
    for level, name in apps.items():
        bench.deploy("vit_tiny", decoders=1, decoder_threads=2, encoder_cpus=0.5, click_path_niceness=level, name=name)
    try:
        times = _alternated(bench, apps)
    finally:
        for name in apps.values():
            serve.delete(name)
    labels = {
        "click": f"follow-up click (json), quiet node, p50 of {ROUNDS * CLICKS}",
        "click-busy": f"follow-up click (json), one busy process at nice 0 beside, p50 of {ROUNDS * CLICKS}",
        "boxes": f"20 boxes in one request (rle), quiet node, p50 of {ROUNDS}",
    }
    for kind, label in labels.items():
        ours, ray = median(times[(kind, CLICK_PATH_NICENESS)]), median(times[(kind, RAY_NICENESS)])
        report.add(
            Row(
                f"click path at nice {CLICK_PATH_NICENESS} vs Ray's {RAY_NICENESS}, side by side: {label}",
                ms(ours),
                ms(ray),
                ours / ray,
            )
        )


def _alternated(bench: Bench, apps: dict[int, str]) -> dict[tuple[str, int], list[float]]:
    """Seconds per request by (kind, nice level): rounds alternate which app goes first."""
    pixels = sample_image(5)
    click = {"image_id": "nice", "point_coords": CLICK, "point_labels": [1], "format": "json"}
    boxes = {"image_id": "nice", "prompts": [{"box": b} for b in boxes_on_the_image(20)], "format": "rle"}
    times: dict[tuple[str, int], list[float]] = {}
    with httpx.Client(base_url=bench.base_url, timeout=600) as client:
        for name in apps.values():
            image = {"type": "base64", "value": image_base64(pixels)}
            client.post(f"/{name}/sam/embed_image", json={"image": image, "image_id": "nice"}).raise_for_status()
            for body in (click, boxes):
                client.post(f"/{name}{SEGMENT}", json=body).raise_for_status()  # warm

        def timed(kind: str, level: int, body: Mapping[str, object]) -> None:
            started = time.perf_counter()
            client.post(f"/{apps[level]}{SEGMENT}", json=body).raise_for_status()
            times.setdefault((kind, level), []).append(time.perf_counter() - started)

        for neighbour in (False, True):
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None
            try:
                for round_index in range(ROUNDS):
                    levels = list(apps) if round_index % 2 == 0 else list(reversed(apps))
                    for level in levels:
                        for _ in range(CLICKS):
                            timed("click-busy" if neighbour else "click", level, click)
                        if not neighbour:
                            timed("boxes", level, boxes)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    return times
