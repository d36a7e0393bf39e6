"""`sam-serve segment`: an image segmented in-process from the command line, one prompt or one per --box."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sam_cli.main import main
from tests.conftest import rle_to_mask

SIZE = (240, 320)  # height, width


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pixels = np.random.default_rng().integers(0, 256, size=(*SIZE, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("cli-segment") / "image.png"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def segment(
    capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path, decoder_dir: Path, image: Path, *extra: str
) -> tuple[int, Any]:
    flags = ["--model-type", "vit_tiny", "--checkpoint", str(tiny_checkpoint), "--cache-dir", str(decoder_dir)]
    code = main(["segment", *flags, "--device", "cpu", "--image", str(image), "--format", "rle", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else captured.err


def test_one_box_answers_at_the_top_level(
    capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path, decoder_dir: Path, image_file: Path
) -> None:
    code, answer = segment(capsys, tiny_checkpoint, decoder_dir, image_file, "--box", "20,30,200,180")

    assert code == 0
    assert answer["image_size"] == list(SIZE)
    mask = rle_to_mask(answer["rle"])
    assert mask.shape == SIZE
    assert int(mask.sum()) == answer["mask_pixels"]
    assert "results" not in answer


def test_several_boxes_are_one_prompt_each_answered_as_alone(
    capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path, decoder_dir: Path, image_file: Path
) -> None:
    boxes = ["20,30,200,180", "100,10,310,230", "5,5,60,90"]

    code, answer = segment(capsys, tiny_checkpoint, decoder_dir, image_file, *(f"--box={b}" for b in boxes))

    assert code == 0
    assert [result["box"] for result in answer["results"]] == [[float(c) for c in b.split(",")] for b in boxes]
    for box, result in zip(boxes, answer["results"], strict=True):
        _, alone = segment(capsys, tiny_checkpoint, decoder_dir, image_file, f"--box={box}")
        assert result["rle"] == alone["rle"]
        assert result["iou_scores"] == alone["iou_scores"]


def test_several_boxes_with_a_point_are_refused(
    capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path, decoder_dir: Path, image_file: Path
) -> None:
    code, error = segment(
        capsys, tiny_checkpoint, decoder_dir, image_file, "--box=20,30,200,180", "--box=5,5,60,90", "--point=50,50"
    )

    assert code == 2
    assert "several --box" in error
