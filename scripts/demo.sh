#!/usr/bin/env bash
# The main job, offline: set up, make the random-weight test model and a sample image, segment it with a click.
# Real weights: SAM_MODEL_TYPE=vit_b scripts/demo.sh downloads and verifies the official checkpoint instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh >/dev/null
mkdir -p .artifacts
MODEL_TYPE=${SAM_MODEL_TYPE:-vit_tiny}
ARGS=(--model-type "$MODEL_TYPE" --cache-dir .artifacts/cache)
if [ "$MODEL_TYPE" = vit_tiny ]; then
  .venv/bin/sam-serve make-checkpoint --model-type vit_tiny --seed 0 --out .artifacts/sam_vit_tiny_seed0.pth >/dev/null
  ARGS+=(--checkpoint .artifacts/sam_vit_tiny_seed0.pth)
fi
IMAGE=${1:-.artifacts/sample.png}
if [ ! -f "$IMAGE" ]; then
  .venv/bin/python - "$IMAGE" <<'PY'
import sys
from PIL import Image, ImageDraw
image = Image.new("RGB", (2250, 1500), (40, 90, 160))
draw = ImageDraw.Draw(image)
draw.ellipse((600, 300, 1500, 1200), fill=(230, 200, 40))
draw.rectangle((1700, 200, 2100, 700), fill=(200, 40, 60))
image.save(sys.argv[1])
PY
fi
.venv/bin/sam-serve segment "${ARGS[@]}" --image "$IMAGE" --point 1050,750 --format none --out .artifacts/mask.png
echo "demo: mask written to .artifacts/mask.png"
