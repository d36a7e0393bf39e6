"""Ray Serve's direct ingress (Ray 2.60, `RAY_SERVE_ENABLE_DIRECT_INGRESS=1`: no proxy actor; each ingress
replica serves HTTP itself, on a port of its own from 30000) against the proxy, on the follow-up click: each mode
in a Ray session of its own (the switch is read as Serve's processes start), modes alternated `--rounds` times,
each run's click p50 over HTTP divided by its own bare decode p50 (so the machine's drift between sessions
cancels out).

Not the service's default: with more than one ingress replica, or on KubeRay, the replicas' ports need a load
balancer in front (Ray's `RAY_SERVE_ENABLE_HA_PROXY=1` runs HAProxy for that).

Run: .venv/bin/python bench/direct_ingress.py [--rounds 2]   (~1 min a run here)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DIRECT_PORTS = range(30000, 30050)


def _one_run(mode: str) -> dict[str, Any]:
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import httpx
    from clicks import measure_follow_ups
    from harness import local_bench

    with local_bench() as bench:
        deploy = bench.deploy

        def deploy_then_find_the_port(*args: Any, **kwargs: Any) -> None:
            deploy(*args, **kwargs)
            if mode != "direct":
                return
            for candidate in DIRECT_PORTS:
                try:
                    if httpx.get(f"http://127.0.0.1:{candidate}/healthz", timeout=1).status_code == 200:
                        bench.base_url = f"http://127.0.0.1:{candidate}"
                        return
                except httpx.HTTPError:
                    continue
            raise SystemExit("no ingress replica answered on a direct-ingress port")

        bench.deploy = deploy_then_find_the_port  # type: ignore[method-assign]
        runs = measure_follow_ups(bench, 30, 2)
        http, bare = statistics.median(runs.http_times), statistics.median(runs.bare_times)
        return {"mode": mode, "url": bench.base_url, "http_ms": http * 1e3, "bare_ms": bare * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mode", choices=("direct", "proxy"), help=argparse.SUPPRESS)  # one child run
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(_one_run(args.mode)), flush=True)
        return
    results: dict[str, list[dict[str, Any]]] = {"direct": [], "proxy": []}
    for _ in range(args.rounds):
        for mode in ("direct", "proxy"):
            env = {k: v for k, v in os.environ.items() if k != "RAY_SERVE_ENABLE_DIRECT_INGRESS"}
            if mode == "direct":
                env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
            child = subprocess.run(
                [sys.executable, __file__, "--mode", mode], env=env, capture_output=True, text=True, timeout=900
            )
            lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
            if not lines:
                raise SystemExit(f"the {mode} run failed:\n{child.stderr[-3000:]}")
            run = json.loads(lines[-1])
            results[mode].append(run)
            print(f"{mode}: click p50 {run['http_ms']:.1f} ms, bare decode p50 {run['bare_ms']:.1f} ms, {run['url']}")
    ratio = {mode: [r["http_ms"] / r["bare_ms"] for r in runs] for mode, runs in results.items()}
    print(
        "follow-up click over HTTP / bare decode, direct ingress vs proxy: "
        + ", ".join(f"{d:.2f} vs {p:.2f} ({d / p:.2f}x)" for d, p in zip(ratio["direct"], ratio["proxy"], strict=True))
    )


if __name__ == "__main__":
    main()
