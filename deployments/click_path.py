"""What the click path (the ingress and the decoders) runs with: its nice level, and no per-request access log.

Ray starts every worker at nice 15 (its `worker_niceness`), below the raylet and GCS, so a replica loses the
CPU to any process at the default 0 on its node: a benchmark or batch client, another service, Redis. The click
path (the ingress and the decoders) runs at 0 instead, the setting Ray's own job supervisor uses, through the
`RAY_worker_niceness` variable in each replica's runtime env (Ray reads it as the worker starts; an
unprivileged process can raise its niceness but never lower it, so it has to be set before). The encoder keeps
Ray's 15: on a shared CPU node a long embedding then yields to clicks, and on a GPU node it mostly waits on the
device.
"""

from __future__ import annotations

from typing import Any, Final

CLICK_PATH_NICENESS: Final = 0

CLICK_PATH_RUNTIME_ENV: Final[dict[str, Any]] = {"env_vars": {"RAY_worker_niceness": str(CLICK_PATH_NICENESS)}}
"""The `runtime_env` of the ingress and decoder replicas (serve_config.yaml and k8s/rayservice.yaml say the same)."""

CLICK_PATH_LOGGING: Final[dict[str, Any]] = {"enable_access_log": False}
"""The ingress's and decoders' `logging_config`: no Ray Serve access-log line per request (2.3-6.3 ms a click
side by side, 0.95-0.98x); errors and warnings are still logged, and the request metrics count every call. Set
`enable_access_log: true` in serve_config.yaml to have the lines back."""
