"""`sam-serve run`: one command starts Ray, a private Redis and the app, serves HTTP, and stops cleanly.

Runs the real console script in a subprocess (its own local Ray cluster, independent of the session's).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from sam_cli.local_redis import free_port
from sam_core.client import SamClient, SegmentArrays

READY_DEADLINE_S = 150.0
"""Ray start-up, the random checkpoint and the ONNX export take ~30-60 s on the 2-core machine; more under load."""
EXIT_DEADLINE_S = 60.0
CHILDREN_GONE_DEADLINE_S = 30.0

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class ProcessInfo:
    """A process seen in /proc; `start_ticks` tells it apart from a later process given the same pid."""

    pid: int
    name: str
    start_ticks: int


def _read_stat(pid: int) -> tuple[str, str, int, int] | None:
    """(name, state, parent pid, start time in clock ticks) of a live process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
    return name, fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> list[ProcessInfo]:
    """Every live descendant of `root` (ray's own psutil is not a dependency of ours: read /proc)."""
    children: dict[int, list[ProcessInfo]] = {}
    for entry in Path("/proc").iterdir():
        stat = _read_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None:
            name, _, parent, start = stat
            children.setdefault(parent, []).append(ProcessInfo(int(entry.name), name, start))
    found, pending = [], [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child.pid)
    return found


def _alive(process: ProcessInfo) -> bool:
    stat = _read_stat(process.pid)
    return stat is not None and stat[3] == process.start_ticks and stat[1] != "Z"


def _wait_gone(processes: list[ProcessInfo], timeout: float) -> list[ProcessInfo]:
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _alive(p)]
    return alive


def _command() -> list[str]:
    script = Path(sys.executable).with_name("sam-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sam_cli"]


def _wait_until_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Until the command says it is ready and /readyz agrees (HTTP answers a little before serve.run returns)."""
    deadline = time.monotonic() + READY_DEADLINE_S
    with httpx.Client(timeout=5.0) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"sam-serve run exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            if f"ready at {url}" in log.read_text(errors="replace"):
                try:
                    if http.get(f"{url}/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
    pytest.fail(f"sam-serve run not ready after {READY_DEADLINE_S} s:\n{log.read_text()[-4000:]}")


def _eventually_exports(url: str, prefix: str, deadline_s: float = 30.0) -> bool:
    """Whether the metrics endpoint lists a metric starting with `prefix` within the deadline (Ray exports
    what the replicas record every few seconds)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if prefix in httpx.get(url, timeout=5.0).text:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    return False


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_serves_with_a_private_redis_and_stops_cleanly(stop_signal: signal.Signals, tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to follow the command's child processes")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SAM_REDIS_URL", "RAY_ADDRESS")}
    log = tmp_path / "run.log"
    command = [
        *_command(),
        "run",
        "--model-type",
        "vit_tiny",
        "--random-weights",
        "--port",
        str(port),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--decoder-replicas",
        "1",
        "--num-cpus",
        "4",
    ]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    descendants: list[ProcessInfo] = []
    try:
        _wait_until_ready(process, url, log)
        descendants = _descendants(process.pid)
        redis_servers = [p for p in descendants if p.name == "redis-server"]
        assert len(redis_servers) == 1, f"expected one private redis-server, found {redis_servers}"

        rng = np.random.default_rng()
        image = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
        image_id = f"test-cli-run-{uuid.uuid4()}"
        with SamClient(url, timeout=60.0) as sam:
            assert sam.embed_image(image, image_id=image_id).original_size == (240, 320)
            answer = sam.segment_image(image_id=image_id, point_coords=[[100.0, 80.0]], format="binary")
        assert isinstance(answer, SegmentArrays)
        assert answer.masks.shape == (1, 240, 320)
        # The metrics address it prints answers with the deployments' own metrics.
        metrics_line = re.search(r"Prometheus metrics at (\S+)", log.read_text())
        assert metrics_line is not None, log.read_text()[-4000:]
        assert _eventually_exports(metrics_line.group(1), "ray_sam_"), (
            f"no ray_sam_* metrics at {metrics_line.group(1)}"
        )

        process.send_signal(stop_signal)
        assert process.wait(timeout=EXIT_DEADLINE_S) == 0, log.read_text()[-4000:]
        alive = _wait_gone(descendants, CHILDREN_GONE_DEADLINE_S)
        assert not alive, f"left running after exit: {alive}"
        output = log.read_text()
        assert "RANDOM WEIGHTS" in output
        assert "private redis-server" in output
        assert "sam-serve: stopped" in output
    finally:
        # On failure, stop what this test started: the CLI's process group and each of its descendants.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for child in descendants:
            if _alive(child):
                os.kill(child.pid, signal.SIGKILL)
