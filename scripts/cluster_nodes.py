"""Each Ray node of the local cluster: its `ray start` command and environment (scripts/local_cluster.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cluster_config import NODE_RESOURCES
from cluster_hosts import Network

BIN = Path(sys.executable).parent  # the venv's ray, serve, sam-serve and redis client tools
RAY_PORT, DASHBOARD_PORT, METRICS_PORT = 6379, 8265, 8080
# A dead node is declared dead in ~3 s instead of Ray's default ~30 s (GCS health checks: every second, 3 misses).
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "2000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    # Each node's Prometheus endpoint (http://IP:8080/metrics) refreshed every second instead of every 10.
    "RAY_metrics_report_interval_ms": "1000",
}


def ray_dir(net: Network) -> Path:
    """The nodes' Ray temp dirs: short, since Unix socket paths inside them must stay under 108 bytes."""
    return Path(f"/tmp/sam-ray-{net.prefix}")


def node_env() -> dict[str, str]:
    """The nodes' environment: this one without SAM_* or RAY_ADDRESS (the deployed config is the one source of
    settings), the venv's tools first on PATH, fast failure detection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM_") and k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # One mode on every node and tool (a head would otherwise pick token auth from ~/.ray/auth_token when it is
    # there); the cluster's bridge reaches only this machine.
    env["RAY_AUTH_MODE"] = "disabled"
    return {**env, **FAST_FAILURE_DETECTION}


def ray_start_args(net: Network, name: str, role: str, ip: str, head_ip: str) -> list[str]:
    """`ray start` for one node. Each node has its own temp dir (its logs and Unix sockets): the namespaces share
    one filesystem, and nodes started together in one dir would race for the same socket names."""
    cpus, resources = NODE_RESOURCES[role]
    args = [str(BIN / "ray"), "start", f"--node-ip-address={ip}", f"--num-cpus={cpus}", "--num-gpus=0"]
    args += [f"--temp-dir={ray_dir(net) / name}", f"--metrics-export-port={METRICS_PORT}"]
    args += [f"--resources={json.dumps(resources)}", "--object-store-memory=200000000", "--disable-usage-stats"]
    if role == "head":
        args += [f"--port={RAY_PORT}", "--head", "--dashboard-host=0.0.0.0", f"--dashboard-port={DASHBOARD_PORT}"]
        return args
    return [*args, f"--address={head_ip}:{RAY_PORT}"]
