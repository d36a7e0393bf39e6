#!/usr/bin/env bash
# The main job: set up, then run the whole service locally (Ray + Redis + the three deployments) on :8000.
# Offline default: the seeded random-weight vit_tiny model. Real weights: scripts/run.sh --model-type vit_b
# (downloads and verifies the official checkpoint). Any `sam-serve run` flag may follow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh >/dev/null
if [ "$#" -eq 0 ]; then
  set -- --model-type vit_tiny --random-weights
fi
exec .venv/bin/sam-serve run "$@"
