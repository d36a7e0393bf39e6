#!/usr/bin/env bash
# A real multi-node Ray cluster on this machine (Linux, root): each Ray node and Redis in a network namespace
# with its own IP, serve_config.yaml deployed with `serve deploy`. See scripts/local_cluster.py.
#   up | status | kill NAME | cut NAME | heal NAME | down
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh >&2
exec .venv/bin/python scripts/local_cluster.py "$@"
