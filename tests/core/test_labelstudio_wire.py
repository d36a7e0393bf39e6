"""Label Studio's wire format without a server: its config, its interactive context in percent, its brush RLE."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sam_core.errors import InvalidInput
from sam_core.wire.labelstudio import brush_rle, context_prompt, parse_label_config, region
from tests import labelstudio_support as support

CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/><Label value="Other"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="Object" smart="true"/></RectangleLabels>
</View>"""


SIZE = (400, 300)


def keypoint(x: float, y: float, *, positive: bool | None = True, size: tuple[int, int] = SIZE) -> dict[str, Any]:
    return support.keypoint(x, y, size, positive=positive)


def rectangle(x: float, y: float, w: float, h: float) -> dict[str, Any]:
    return support.rectangle(x, y, w, h, SIZE)


def read_brush_rle(rle: list[int], shape: tuple[int, int]) -> np.ndarray:
    """An independent reader of the format (thi.ng rle-pack, as label-studio-sdk's decode_rle reads it)."""
    bits = "".join(f"{byte:08b}" for byte in rle)
    position = 0

    def take(n: int) -> int:
        nonlocal position
        value = int(bits[position : position + n], 2)
        position += n
        return value

    count, word = take(32), take(5) + 1
    sizes = [take(4) + 1 for _ in range(4)]
    out = np.zeros(count, np.uint8)
    i = 0
    while i < count:
        repeat = take(1)
        j = i + 1 + take(sizes[take(2)])
        if repeat:
            out[i:j] = take(word)
        else:
            for k in range(i, j):
                out[k] = take(word)
        i = j
    return out.reshape(*shape, 4)[:, :, 3] > 0


def test_the_config_names_the_image_and_the_brush_control() -> None:
    config = parse_label_config(CONFIG)
    assert (config.image_name, config.image_value, config.output_tag, config.output_name) == (
        "image",
        "image",
        "BrushLabels",
        "tag",
    )
    assert config.output_labels == ("Object", "Other")


@pytest.mark.parametrize("bad", ["", "<View", "<View><Image name='i' value='$i'/></View>"])
def test_a_config_without_what_we_answer_with_is_refused(bad: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_label_config(bad)
    assert refused.value.field == "label_config"


def test_percent_points_and_box_become_pixels_at_the_edges() -> None:
    prompt = context_prompt({"result": [keypoint(0, 0), keypoint(100, 100, positive=False), rectangle(25, 50, 75, 50)]})
    assert prompt is not None
    assert prompt.point_coords == [[0.0, 0.0], [400.0, 300.0]]
    assert prompt.point_labels == [1, 0]
    assert prompt.box == [100.0, 150.0, 400.0, 300.0]
    assert prompt.label == "Object"


def test_without_is_positive_a_negative_label_excludes() -> None:
    point = keypoint(50, 50, positive=None)
    point["value"]["keypointlabels"] = ["Background"]
    prompt = context_prompt({"result": [point, keypoint(10, 10, positive=None)]})
    assert prompt is not None
    assert prompt.point_labels == [0, 1]


def test_no_context_is_no_prompt() -> None:
    assert context_prompt(None) is None
    assert context_prompt({"result": []}) is None


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({**keypoint(10, 10), "type": "polygonlabels"}, "params.context.result.0.type"),
        (keypoint(120, 10), "params.context.result.0.value.x"),
        ({**keypoint(10, 10), "original_width": 0}, "params.context.result.0"),
        ({"type": "keypointlabels"}, "params.context.result.0"),
    ],
)
def test_a_bad_context_item_is_refused_by_name(item: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        context_prompt({"result": [item]})
    assert refused.value.field == field


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (120, 180), (300, 300)])
def test_brush_rle_reads_back_as_the_mask(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng()
    mask = rng.random(shape) < rng.uniform(0.05, 0.95)
    mask[: shape[0] // 2] = False  # long runs (over 65,536 values) as well as short ones
    assert np.array_equal(read_brush_rle(brush_rle(mask), shape), mask)


def test_a_brush_region_carries_the_chosen_label_and_the_size() -> None:
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    answer = region(mask, 0.9, parse_label_config(CONFIG), "Other")
    assert answer["type"] == "brushlabels"
    assert answer["value"]["brushlabels"] == ["Other"]
    assert (answer["original_width"], answer["original_height"]) == (40, 30)
    assert np.array_equal(read_brush_rle(answer["value"]["rle"], (30, 40)), mask)
    assert region(mask, 0.9, parse_label_config(CONFIG), "Unknown")["value"]["brushlabels"] == ["Object"]
