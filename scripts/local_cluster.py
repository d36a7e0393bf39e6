"""A real multi-node Ray cluster on one Linux machine (root): each `ray start` node and the Redis server on a
host of its own (scripts/cluster_hosts.py), serve_config.yaml deployed with `serve deploy`.

    up | status | kill NAME | start NAME | cut NAME | heal NAME | deploy [CONFIG] | exec NAME CMD... | down

(scripts/local-cluster.sh is the entry point.) `start` brings a killed node back (not the head); `deploy` runs
`serve deploy` of a config (the cluster's own by default) and waits until the app runs; `exec` runs a command on
a node (its network, the nodes' environment, RAY_ADDRESS the head's), e.g. `exec head sam-serve warm DATA`, and
exits with its status.

`up` and `status` print one JSON object on their last line: url, redis, dashboard, config, and nodes (name,
role, ip; `status` adds each node's running replicas). Environment: SAM_CLUSTER_PREFIX (names, default samc),
SAM_CLUSTER_SUBNET (first three octets, default 10.77.0), SAM_CLUSTER_DIR (state and logs), SAM_CLUSTER_MODEL_TYPE
and SAM_CLUSTER_CHECKPOINT (default: a seeded random vit_tiny checkpoint, made in the state folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cluster_config import cluster_config, write_config
from cluster_hosts import Network
from cluster_nodes import BIN, DASHBOARD_PORT, METRICS_PORT, RAY_PORT, node_env, ray_dir, ray_start_args

REPO = Path(__file__).resolve().parent.parent
APP = "sam"
# (name, role, host number); the Redis host is one too, outside Ray.
HOSTS = [("head", "head", 10), ("encoder", "encoder", 11), ("decoder-1", "decoder", 12), ("decoder-2", "decoder", 13)]
REDIS = ("redis", "redis", 20)
HTTP_PORT, REDIS_PORT = 8000, 6379


def network() -> Network:
    return Network(os.environ.get("SAM_CLUSTER_PREFIX", "samc"), os.environ.get("SAM_CLUSTER_SUBNET", "10.77.0"))


def head_ip(net: Network) -> str:
    return net.address(HOSTS[0][2])


def state_dir(net: Network) -> Path:
    return Path(os.environ.get("SAM_CLUSTER_DIR", f"/tmp/sam-cluster-{net.prefix}"))


def describe(net: Network) -> dict[str, Any]:
    head, redis = net.address(HOSTS[0][2]), net.address(REDIS[2])
    state = state_dir(net)
    return {
        "url": f"http://{head}:{HTTP_PORT}",
        "redis": f"redis://{redis}:{REDIS_PORT}/0",
        "dashboard": f"http://{head}:{DASHBOARD_PORT}",
        "config": str(state / "serve_config.yaml"),
        "nodes": [
            {"name": name, "role": role, "ip": net.address(n)}
            | ({"metrics": f"http://{net.address(n)}:{METRICS_PORT}/metrics"} if role != "redis" else {})
            for name, role, n in [*HOSTS, REDIS]
        ],
    }


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        return json.loads(answer.read())


def wait_for(what: str, check: Any, timeout_s: float) -> Any:
    """Poll `check()` until it returns something true; raise after `timeout_s` with the last error."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (OSError, ValueError, urllib.error.URLError) as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not ready in {timeout_s:.0f} s (last error: {last})")


def start_redis(net: Network, state: Path) -> None:
    name, _, number = REDIS
    argv = ["redis-server", "--bind", "0.0.0.0", "--port", str(REDIS_PORT), "--protected-mode", "no", "--save", ""]
    argv += ["--appendonly", "no", "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"]
    net.spawn(name, argv, node_env(), str(state / "logs" / "redis.log"))
    ping = [str(BIN / "python"), "-c", f"import redis; redis.Redis('{net.address(number)}', {REDIS_PORT}).ping()"]
    wait_for("redis", lambda: os.spawnv(os.P_WAIT, ping[0], ping) == 0, 30)


def checkpoint(state: Path) -> tuple[str, str]:
    """(model_type, checkpoint path): the given one, or a seeded random vit_tiny made once in the state folder."""
    model_type = os.environ.get("SAM_CLUSTER_MODEL_TYPE", "vit_tiny")
    given = os.environ.get("SAM_CLUSTER_CHECKPOINT")
    if given:
        return model_type, str(Path(given).resolve())
    path = state / f"sam_{model_type}_random_seed0.pth"
    if not path.exists():
        make = [str(BIN / "sam-serve"), "make-checkpoint", "--model-type", model_type, "--out", str(path)]
        if os.spawnv(os.P_WAIT, make[0], make) != 0:
            raise RuntimeError(f"could not make a random {model_type} checkpoint")
    return model_type, str(path)


def application(dashboard: str) -> dict[str, Any] | None:
    apps: dict[str, Any] = get_json(f"{dashboard}/api/serve/applications/").get("applications", {})
    return apps.get(APP)


def up() -> dict[str, Any]:
    net = network()
    state = state_dir(net)
    if (state / "cluster.json").exists():
        raise SystemExit(f"a cluster is up ({state}/cluster.json): `local-cluster.sh down` first")
    (state / "logs").mkdir(parents=True, exist_ok=True)
    info = describe(net)
    net.create_bridge()
    for name, _, number in [*HOSTS, REDIS]:
        net.add_host(name, number)
    (state / "cluster.json").write_text(json.dumps(info))
    start_redis(net, state)
    model_type, path = checkpoint(state)
    env, logs = node_env(), state / "logs"
    head_name, head_role, head_number = HOSTS[0]
    head_args = ray_start_args(net, head_name, head_role, net.address(head_number), head_ip(net))
    net.run(head_name, head_args, env, str(logs / "head.log"), timeout_s=120)
    with ThreadPoolExecutor(len(HOSTS) - 1) as pool:
        started = [
            pool.submit(
                net.run,
                name,
                ray_start_args(net, name, role, net.address(n), head_ip(net)),
                env,
                str(logs / f"{name}.log"),
                120,
            )
            for name, role, n in HOSTS[1:]
        ]
        for future in started:
            future.result()
    config = cluster_config(
        REPO / "serve_config.yaml",
        redis_url=info["redis"],
        model_type=model_type,
        checkpoint=path,
        cache_dir=str(state / "models"),
    )
    write_config(config, Path(info["config"]))
    deploy(info)
    return info


def deploy(info: dict[str, Any], config: str | None = None, timeout_s: float = 300) -> None:
    """`serve deploy` the config (the cluster's own by default), then wait until the app runs and /readyz is 200."""
    argv = [str(BIN / "serve"), "deploy", config or info["config"], "--address", info["dashboard"]]
    if os.spawnve(os.P_WAIT, argv[0], argv, node_env()) != 0:
        raise RuntimeError("serve deploy failed")
    wait_for("the sam app", lambda: (application(info["dashboard"]) or {}).get("status") == "RUNNING", timeout_s)
    wait_for("/readyz", lambda: get_json(f"{info['url']}/readyz").get("ready"), 60)


def replicas_by_node(info: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Node IP -> deployment -> the ids of its replicas alive there (as X-Decoder-Replica names them), from Ray's
    state API."""
    dashboard = info["dashboard"]
    query = "detail=1&limit=10000&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
    actors = get_json(f"{dashboard}/api/v0/actors?{query}")["data"]["result"]["result"]
    nodes = get_json(f"{dashboard}/api/v0/nodes?limit=1000")["data"]["result"]["result"]
    ip_of = {node["node_id"]: node["node_ip"] for node in nodes if node["state"] == "ALIVE"}
    placed: dict[str, dict[str, list[str]]] = {}
    for actor in actors:
        # SERVE_REPLICA::APP#DEPLOYMENT#REPLICA_ID
        name = actor.get("name") or ""
        if name.startswith(f"SERVE_REPLICA::{APP}#") and actor.get("node_id") in ip_of:
            _, deployment, replica = name.split("#")
            placed.setdefault(ip_of[actor["node_id"]], {}).setdefault(deployment, []).append(replica)
    return placed


def status() -> dict[str, Any]:
    info = loaded()
    try:
        placed = replicas_by_node(info)
    except (OSError, ValueError, KeyError) as exc:
        placed, info["error"] = {}, f"the head's state API did not answer: {exc}"
    for node in info["nodes"]:
        here = placed.get(node["ip"], {})
        node["replicas"] = sorted(here)
        node["replica_ids"] = {deployment: sorted(ids) for deployment, ids in sorted(here.items())}
    return info


def loaded() -> dict[str, Any]:
    path = state_dir(network()) / "cluster.json"
    if not path.exists():
        raise SystemExit("no cluster is up (`local-cluster.sh up`)")
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def host_number(name: str) -> int:
    numbers = {host: number for host, _, number in [*HOSTS, REDIS]}
    if name not in numbers:
        raise SystemExit(f"unknown node {name!r}: one of {', '.join(numbers)}")
    return numbers[name]


def down() -> None:
    net = network()
    for name, _, number in [*reversed(HOSTS), REDIS]:
        net.remove_host(name, number)
    net.remove_bridge()
    state = state_dir(net)
    (state / "cluster.json").unlink(missing_ok=True)
    shutil.rmtree(ray_dir(net), ignore_errors=True)


def up_or_clean_up() -> None:
    try:
        print(json.dumps(up()))
    except BaseException:
        print(f"local-cluster: up failed; logs in {state_dir(network()) / 'logs'}", file=sys.stderr)
        if not os.environ.get("SAM_CLUSTER_KEEP_FAILED"):
            down()
        raise


def restart(net: Network, name: str) -> None:
    """Start a killed node again: `ray start` joins it to the head anew; Redis comes back empty."""
    state = state_dir(net)
    if net.pids(name):
        raise SystemExit(f"{name} is running: `kill {name}` first")
    if name == REDIS[0]:
        start_redis(net, state)
        return
    role = next(role for host, role, _ in HOSTS if host == name)
    if role == "head":
        raise SystemExit("the head holds the cluster: `down` and `up` instead")
    args = ray_start_args(net, name, role, net.address(host_number(name)), head_ip(net))
    net.run(name, args, node_env(), str(state / "logs" / f"{name}.log"), timeout_s=120)


def on_host(command: str, rest: list[str]) -> None:
    """kill / cut / heal / start NAME."""
    if len(rest) != 1:
        raise SystemExit(f"usage: local-cluster.sh {command} NAME")
    loaded()
    net, number = network(), host_number(rest[0])
    if command == "kill":
        print(f"killed {net.kill(rest[0])} processes on {rest[0]}", file=sys.stderr)
    elif command == "start":
        restart(net, rest[0])
    elif command == "cut":
        net.cut(number)
    else:
        net.heal(number)


def on_node(rest: list[str]) -> None:
    """exec NAME CMD...: CMD on that host, in the foreground."""
    if len(rest) < 2:
        raise SystemExit("usage: local-cluster.sh exec NAME CMD...")
    loaded()
    net, (name, *command) = network(), rest
    host_number(name)
    env = {**node_env(), "RAY_ADDRESS": f"{head_ip(net)}:{RAY_PORT}"}
    raise SystemExit(subprocess.run(["ip", "netns", "exec", net.namespace(name), *command], env=env).returncode)


def main(argv: list[str]) -> int:
    commands: dict[str, Callable[[list[str]], None]] = {
        "up": lambda rest: up_or_clean_up(),
        "status": lambda rest: print(json.dumps(status())),
        "deploy": lambda rest: deploy(loaded(), rest[0] if rest else None),
        "down": lambda rest: down(),
        "kill": lambda rest: on_host("kill", rest),
        "cut": lambda rest: on_host("cut", rest),
        "heal": lambda rest: on_host("heal", rest),
        "start": lambda rest: on_host("start", rest),
        "exec": on_node,
    }
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        raise SystemExit("local-cluster.sh needs root (network namespaces)")
    commands[argv[0]](argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
