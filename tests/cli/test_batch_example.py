"""The Ray Data example (examples/batch_segment.py) against the session's running app: box prompts in, COCO out."""

from __future__ import annotations

import csv
import importlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import APP_NAME, ServeApp, rle_to_mask

pytestmark = pytest.mark.slow

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"

# (file name, height, width): two formats, three sizes, none of them square.
IMAGES = [("first.png", 200, 300), ("second.jpg", 240, 160), ("third.png", 180, 320)]
GOOD_BOXES = [
    ("first.png", [20, 30, 150, 180], "cat"),
    ("first.png", [100, 10, 290, 120], "dog"),
    ("second.jpg", [5, 5, 150, 230], "cat"),
    ("second.jpg", [40, 60, 100, 120], ""),
    ("third.png", [10, 20, 300, 170], "dog"),
]
MISSING_FILE_ROW = ("absent.png", [0, 0, 10, 10], "cat")
OUTSIDE_BOX_ROW = ("third.png", [250, 10, 400, 100], "cat")  # x1 = 400 on a 320-wide image


def _batch_segment() -> ModuleType:
    if str(EXAMPLES_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLES_DIR))
    return importlib.import_module("batch_segment")


def _encoder_stats() -> dict[str, int]:
    from ray import serve

    stats: dict[str, int] = serve.get_deployment_handle("SamEncoder", app_name=APP_NAME).stats.remote().result()
    return stats


@dataclass
class PipelineRun:
    summary: dict[str, Any]
    coco: dict[str, Any]
    images_embedded: int
    """How many images the app's encoder embedded during the run."""


def _write_inputs(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng()
    images_dir = root / "images"
    images_dir.mkdir()
    for name, height, width in IMAGES:
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images_dir / name)
    prompts = root / "prompts.csv"
    with prompts.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "box", "label"])
        rows = [*GOOD_BOXES[:3], MISSING_FILE_ROW, *GOOD_BOXES[3:], OUTSIDE_BOX_ROW]
        for name, box, label in rows:
            writer.writerow([name, ",".join(str(c) for c in box), label])
    return images_dir, prompts


@pytest.fixture(scope="module")
def pipeline_run(serve_app: ServeApp, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """One run of the pipeline over fresh random images (embedding them is the point), shared by the tests."""
    root = tmp_path_factory.mktemp("batch")
    images_dir, prompts = _write_inputs(root)
    out = root / "out" / "annotations.json"
    before = _encoder_stats()["images_embedded"]
    summary = _batch_segment().run_pipeline(images_dir, prompts, out, app_name=APP_NAME, concurrency=2)
    after = _encoder_stats()["images_embedded"]
    return PipelineRun(summary=summary, coco=json.loads(out.read_text()), images_embedded=after - before)


def test_writes_every_image_with_its_size(pipeline_run: PipelineRun) -> None:
    images = {image["file_name"]: (image["height"], image["width"]) for image in pipeline_run.coco["images"]}
    assert images == {name: (height, width) for name, height, width in IMAGES}
    assert sorted(image["id"] for image in pipeline_run.coco["images"]) == [1, 2, 3]


def test_writes_one_annotation_per_valid_box_on_its_image(pipeline_run: PipelineRun) -> None:
    names = {image["id"]: image["file_name"] for image in pipeline_run.coco["images"]}
    written = sorted((names[a["image_id"]], a["prompt_box"]) for a in pipeline_run.coco["annotations"])
    assert written == sorted((name, [float(c) for c in box]) for name, box, _ in GOOD_BOXES)
    assert pipeline_run.summary["masks"] == len(GOOD_BOXES)


def test_annotation_rle_decodes_to_a_mask_of_its_image_size(pipeline_run: PipelineRun) -> None:
    sizes = {image["id"]: (image["height"], image["width"]) for image in pipeline_run.coco["images"]}
    for annotation in pipeline_run.coco["annotations"]:
        mask = rle_to_mask(annotation["segmentation"])
        assert mask.shape == sizes[annotation["image_id"]]


def test_annotation_area_bbox_and_score_agree_with_its_mask(pipeline_run: PipelineRun) -> None:
    for annotation in pipeline_run.coco["annotations"]:
        mask = rle_to_mask(annotation["segmentation"])
        assert math.isfinite(annotation["score"])
        assert annotation["area"] == int(mask.sum())
        if mask.any():
            ys, xs = np.nonzero(mask)
            x, y = float(xs.min()), float(ys.min())
            expected_bbox = [x, y, float(xs.max()) + 1 - x, float(ys.max()) + 1 - y]
            assert annotation["bbox"] == expected_bbox
        else:
            assert annotation["bbox"] == [0.0, 0.0, 0.0, 0.0]


def test_labels_become_coco_categories(pipeline_run: PipelineRun) -> None:
    categories = {c["id"]: c["name"] for c in pipeline_run.coco["categories"]}
    assert sorted(categories.values()) == ["cat", "dog", "object"]  # "object": the row without a label
    by_box = {tuple(a["prompt_box"]): categories[a["category_id"]] for a in pipeline_run.coco["annotations"]}
    assert by_box == {tuple(float(c) for c in box): label or "object" for _, box, label in GOOD_BOXES}


def test_reports_missing_file_and_box_outside_image_and_goes_on(pipeline_run: PipelineRun) -> None:
    summary = pipeline_run.summary
    assert summary["failures"] == 2
    assert summary["boxes"] == len(GOOD_BOXES) + 2
    failed = {f["image"]: f for f in summary["failed_rows"]}
    assert failed[MISSING_FILE_ROW[0]]["error"] == "MissingImage"
    assert failed[OUTSIDE_BOX_ROW[0]]["error"] == "InvalidInput"  # the app's own refusal
    assert "outside" in failed[OUTSIDE_BOX_ROW[0]]["reason"]


def test_embeds_each_image_once(pipeline_run: PipelineRun) -> None:
    assert pipeline_run.images_embedded == len(IMAGES)
    assert pipeline_run.summary["images_embedded"] == len(IMAGES)


def test_says_so_when_the_app_is_not_running(serve_app: ServeApp, tmp_path: Path) -> None:
    batch_segment = _batch_segment()
    images_dir, prompts = _write_inputs(tmp_path)
    with pytest.raises(batch_segment.AppNotRunning, match="'no-such-app' is not running"):
        batch_segment.run_pipeline(images_dir, prompts, tmp_path / "out.json", app_name="no-such-app")
    assert not (tmp_path / "out.json").exists()
