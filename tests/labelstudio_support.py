"""What the Label Studio tests share: the SDK's own brush decoder (run in Label Studio's venv, which cannot share
ours), a second labelling config, and, from bench/labelstudio_side.py (which the benchmark uses too), the file
host that checks tokens as Label Studio's does and requests shaped as Label Studio sends them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

# bench/ is no package: its modules are imported by top-level name, as a benchmark script imports them. Appended,
# so that no installed module is shadowed by a benchmark module's name.
sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))

from labelstudio_side import BRUSH_CONFIG, FileHost, keypoint, predict_body, rectangle

__all__ = [
    "BRUSH_CONFIG",
    "LS_VENV",
    "POLYGON_CONFIG",
    "FileHost",
    "keypoint",
    "predict_body",
    "rectangle",
    "sdk_decode_brush",
]

REPO = Path(__file__).resolve().parents[1]
LS_VENV = REPO / ".venv-labelstudio"
LS_PYTHON = LS_VENV / "bin" / "python"

POLYGON_CONFIG = """<View>
  <Image name="picture" value="$img"/>
  <PolygonLabels name="outline" toName="picture"><Label value="Cell"/></PolygonLabels>
  <KeyPointLabels name="kp" toName="picture" smart="true"><Label value="Cell" smart="true"/></KeyPointLabels>
</View>"""


def sdk_decode_brush(rle: list[int], shape: tuple[int, int]) -> np.ndarray:
    """label-studio-sdk's own `decode_rle` of a brush region, as a (H, W) bool mask (its alpha channel)."""
    script = (
        "import json, sys; from label_studio_sdk.converter.brush import decode_rle; "
        "sys.stdout.buffer.write(decode_rle(json.load(sys.stdin)).tobytes())"
    )
    out = subprocess.run(
        [str(LS_PYTHON), "-c", script], input=json.dumps(rle).encode(), capture_output=True, check=True, timeout=120
    ).stdout
    return np.frombuffer(out, np.uint8).reshape(shape[0], shape[1], 4)[:, :, 3] > 127
