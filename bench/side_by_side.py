"""Two copies of the app side by side, one option apart, requests alternated between them (rounds alternate
which goes first), so both meet the same machine at the same moments:

- the click path's nice level: the ingress and decoder replicas at the deployments' nice 0 vs Ray's 15, quiet
  and with one CPU-bound process at nice 0 beside them (a neighbour on the node: a batch client, a service);
- Ray Serve's access log (a line per request in each replica) on vs off;
- ONNX Runtime's spin-waiting threads in the decoder (`decoder_spinning`) on vs off.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CLICK, SEGMENT, Bench, Report, Row, image_base64, median, ms, sample_image
from prompts import boxes_on_the_image

from deployments.click_path import CLICK_PATH_NICENESS

RAY_NICENESS = 15
ROUNDS = 5
CLICKS = 8

KINDS = {
    "click": f"follow-up click (json), quiet node, p50 of {ROUNDS * CLICKS}",
    "click-busy": f"follow-up click (json), one busy process at nice 0 beside, p50 of {ROUNDS * CLICKS}",
    "boxes": f"20 boxes in one request (rle), quiet node, p50 of {ROUNDS}",
}


def niceness(bench: Bench, report: Report) -> None:
    print(f"[13] click path at nice {CLICK_PATH_NICENESS} vs {RAY_NICENESS}: two apps side by side", flush=True)
    _compare(
        bench,
        report,
        {"nice-ours": {"click_path_niceness": CLICK_PATH_NICENESS}, "nice-ray": {"click_path_niceness": RAY_NICENESS}},
        f"click path at nice {CLICK_PATH_NICENESS} vs Ray's {RAY_NICENESS}",
        neighbour=True,
    )


def access_log(bench: Bench, report: Report) -> None:
    print("[14] Ray Serve's access log off (the click path's own) vs on: two apps side by side", flush=True)
    _compare(
        bench,
        report,
        {"log-off": {}, "log-on": {"access_log": True}},
        "access log off vs on",
        neighbour=False,
    )


def spinning(bench: Bench, report: Report) -> None:
    from sam_core.settings import Settings

    default = Settings.model_fields["decoder_spinning"].default
    print(f"[15] decoder_spinning {default} (default) vs {not default}: two apps side by side", flush=True)
    _compare(
        bench,
        report,
        {"spin-default": {"decoder_spinning": default}, "spin-other": {"decoder_spinning": not default}},
        f"decoder_spinning {default} (default) vs {not default}",
        neighbour=True,
    )


SERVE_ONE_LOOP = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
"""Two of Ray Serve's "throughput optimized" switches (RAY_SERVE_THROUGHPUT_OPTIMIZED=1 sets them, with direct
ingress, which needs a load balancer in front of the replicas' own ports): the replica's code and its handles'
router on the replica's one event loop instead of a thread and a loop of their own."""

SERVE_GRPC = {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"}
"""Another of them: handle calls between replicas (the ingress's to the decoders) over gRPC, not Ray actor calls."""


def serve_loops(bench: Bench, report: Report) -> None:
    print("[22] Ray Serve's replica threads and handle transport, each vs its default: two apps", flush=True)
    _compare(
        bench,
        report,
        {"one-loop": {"serve_env": SERVE_ONE_LOOP}, "own-threads": {"serve_env": {}}},
        "user code and router on the replica's loop vs in their own threads",
        neighbour=False,
    )
    _compare(
        bench,
        report,
        {"grpc": {"serve_env": SERVE_GRPC}, "actor-calls": {"serve_env": {}}},
        "handle calls over gRPC vs Ray actor calls",
        neighbour=False,
    )


def _compare(bench: Bench, report: Report, apps: dict[str, dict[str, Any]], title: str, *, neighbour: bool) -> None:
    """Deploy `apps` (name -> Bench.deploy options; the first is ours), alternate requests, report the ratios."""
    from ray import serve

    serve.delete("sam")  # two apps' replicas must fit the benchmark's Ray CPUs
    for name, options in apps.items():
        bench.deploy("vit_tiny", decoders=1, decoder_threads=2, encoder_cpus=0.5, name=name, **options)
    try:
        times = _alternated(bench, list(apps), neighbour=neighbour)
    finally:
        for name in apps:
            serve.delete(name)
    ours_name, theirs_name = apps
    for kind, label in KINDS.items():
        if (kind, ours_name) not in times:
            continue
        ours, theirs = median(times[(kind, ours_name)]), median(times[(kind, theirs_name)])
        report.add(Row(f"{title}, side by side: {label}", ms(ours), ms(theirs), ours / theirs))


def _alternated(bench: Bench, apps: list[str], *, neighbour: bool) -> dict[tuple[str, str], list[float]]:
    """Seconds per request by (kind, app): rounds alternate which app goes first."""
    pixels = sample_image(5)
    click = {"image_id": "side", "point_coords": CLICK, "point_labels": [1], "format": "json"}
    boxes = {"image_id": "side", "prompts": [{"box": b} for b in boxes_on_the_image(20)], "format": "rle"}
    times: dict[tuple[str, str], list[float]] = {}
    with httpx.Client(base_url=bench.base_url, timeout=600) as client:
        for name in apps:
            image = {"type": "base64", "value": image_base64(pixels)}
            client.post(f"/{name}/sam/embed_image", json={"image": image, "image_id": "side"}).raise_for_status()
            for body in (click, boxes):
                client.post(f"/{name}{SEGMENT}", json=body).raise_for_status()  # warm

        def timed(kind: str, name: str, body: Mapping[str, object]) -> None:
            started = time.perf_counter()
            client.post(f"/{name}{SEGMENT}", json=body).raise_for_status()
            times.setdefault((kind, name), []).append(time.perf_counter() - started)

        for busy_beside in (False, True) if neighbour else (False,):
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy_beside else None
            try:
                for round_index in range(ROUNDS):
                    for name in apps if round_index % 2 == 0 else list(reversed(apps)):
                        for _ in range(CLICKS):
                            timed("click-busy" if busy_beside else "click", name, click)
                        if not busy_beside:
                            timed("boxes", name, boxes)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    return times
