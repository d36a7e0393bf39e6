"""A real multi-node Ray cluster for the tests in this folder: `scripts/local-cluster.sh up` (each Ray node and Redis
in a network namespace of its own), torn down after the module; the helpers use only its commands and HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local-cluster.sh"
sys.path.insert(0, str(REPO / "scripts"))  # the cluster's own modules, for the config test

CAN_RUN = os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("redis-server") is not None


class Cluster:
    """The cluster's commands and the info `up` printed (url, redis, dashboard, config, nodes)."""

    def __init__(self, env: dict[str, str], info: dict[str, Any]) -> None:
        self.env = env
        self.info = info
        self.url: str = info.get("url", "")

    def run(self, *args: str, timeout_s: float = 300) -> str:
        done = subprocess.run(
            ["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=timeout_s
        )
        assert done.returncode == 0, f"local-cluster.sh {' '.join(args)}: {done.stderr[-3000:]}"
        return done.stdout

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(self.run("status").strip().splitlines()[-1])
        return status

    def node(self, name: str) -> dict[str, Any]:
        return next(node for node in self.status()["nodes"] if node["name"] == name)

    def replicas(self, deployment: str) -> dict[str, list[str]]:
        """Node name -> ids of the deployment's running replicas there (nodes with none left out)."""
        return {
            node["name"]: node["replica_ids"][deployment]
            for node in self.status()["nodes"]
            if deployment in node.get("replica_ids", {})
        }

    def wait(self, what: str, check: Callable[[], Any], timeout_s: float) -> float:
        """Seconds until `check()` is true; fails after `timeout_s`."""
        started = time.monotonic()
        while not check():
            assert time.monotonic() - started < timeout_s, f"{what}: not within {timeout_s} s"
            time.sleep(0.5)
        return time.monotonic() - started

    def encoder_metric(self, name: str) -> float:
        """A metric of the encoder node summed over its labels (Prometheus text from the node's Ray metrics
        endpoint; a line starting with `name`, so `..._bucket{le="1.0"` picks one bucket)."""
        with urllib.request.urlopen(self.node("encoder")["metrics"], timeout=5) as answer:
            text = answer.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def encoder_runs(self) -> float:
        """Encoder forward passes on the encoder node: the count of its batch-size histogram
        (`sam_encoder_batch_size`; the exported `_sum` is not exact here)."""
        return self.encoder_metric("ray_sam_encoder_batch_size_count")

    def actor_nodes(self, class_name: str) -> set[str]:
        """The nodes on which actors of `class_name` ran (alive or dead), from the head's state API."""
        dashboard = self.info["dashboard"]
        name = urllib.parse.quote(class_name)
        query = f"detail=1&limit=10000&filter_keys=class_name&filter_predicates=%3D&filter_values={name}"
        with urllib.request.urlopen(f"{dashboard}/api/v0/actors?{query}", timeout=10) as answer:
            actors = json.loads(answer.read())["data"]["result"]["result"]
        with urllib.request.urlopen(f"{dashboard}/api/v0/nodes?limit=1000", timeout=10) as answer:
            nodes = json.loads(answer.read())["data"]["result"]["result"]
        name_of = {node["ip"]: node["name"] for node in self.info["nodes"]}
        ip_of = {node["node_id"]: node["node_ip"] for node in nodes}
        return {name_of.get(ip_of.get(actor.get("node_id"), ""), "?") for actor in actors}

    def config(self) -> dict[str, Any]:
        """The Serve config `up` deployed."""
        config: dict[str, Any] = yaml.safe_load(Path(self.info["config"]).read_text())
        return config


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not CAN_RUN:
        pytest.skip("the local cluster needs root, iproute2 and redis-server")
    tag = os.getpid() % 200
    env = {
        **os.environ,
        "SAM_CLUSTER_PREFIX": f"sct{tag}",
        "SAM_CLUSTER_SUBNET": f"10.201.{tag}",
        "SAM_CLUSTER_DIR": str(tmp_path_factory.mktemp("cluster")),
    }
    cluster = Cluster(env, {})
    try:
        cluster.info = json.loads(cluster.run("up", timeout_s=420).strip().splitlines()[-1])
        cluster.url = cluster.info["url"]
        yield cluster
    finally:
        cluster.run("down")
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"sct{tag}-" not in left, f"namespaces left after down: {left}"


def png_base64(rng: np.random.Generator, size: tuple[int, int] = (300, 400)) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def click_body(image_id: str, **extra: Any) -> dict[str, Any]:
    return {"image_id": image_id, "point_coords": [[120, 90]], "point_labels": [1], "format": "rle", **extra}


def answer(response: httpx.Response) -> Any:
    """A segment answer without its timings: equal answers mean equal masks and scores."""
    body = response.json()
    return {key: value for key, value in body.items() if key != "time"}
