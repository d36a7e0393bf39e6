"""Properties of sam_core.model.prompts over arbitrary input: validation refuses by field or yields a sane Prompt,
and the transform into the 1024 input frame is segment-anything's, for any image size."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from segment_anything.utils.transforms import ResizeLongestSide

from sam_core.errors import InvalidInput
from sam_core.frames import INPUT_SIZE, preprocess_shape
from sam_core.model.prompts import MAX_POINTS, POINT_LABELS, Prompt, build_prompt, onnx_prompt_inputs, to_input_frame

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)
SLACK_PX = 0.5
"""Half a pixel either side of the image still counts as inside (see `_check_inside`)."""

# ---- strategies ----------------------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=20_000)
image_sizes = st.tuples(sizes, sizes)  # (height, width)

# Ints of any size: a JSON parser hands huge ones over as Python ints, which float() cannot take.
FLOAT_RANGE_INTS = st.one_of(st.integers(), st.integers(min_value=10**300, max_value=10**400))

# Everything JSON can carry (nan and +-inf included).
json_scalars = st.one_of(st.none(), st.booleans(), FLOAT_RANGE_INTS, st.floats(), st.text(max_size=5))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=5), max_leaves=20)
labels_values = st.sampled_from(sorted(POINT_LABELS))


@st.composite
def near_image_pairs(draw: st.DrawFn, size: tuple[int, int]) -> list[list[float]]:
    """[x, y] pairs around the image (mostly inside, some just outside), as ints or floats."""
    height, width = size
    n = draw(st.integers(min_value=0, max_value=6))
    far = FLOAT_RANGE_INTS | st.floats()
    coord_x = st.one_of(st.integers(-2, width + 2), st.floats(-2.0, width + 2.0), far)
    coord_y = st.one_of(st.integers(-2, height + 2), st.floats(-2.0, height + 2.0), far)
    return [[draw(coord_x), draw(coord_y)] for _ in range(n)]


@st.composite
def near_image_boxes(draw: st.DrawFn, size: tuple[int, int]) -> list[float]:
    height, width = size
    far = FLOAT_RANGE_INTS | st.floats()
    xs = st.floats(-2.0, width + 2.0) | far
    ys = st.floats(-2.0, height + 2.0) | far
    return [draw(xs), draw(ys), draw(xs), draw(ys)]


@st.composite
def prompt_fields(draw: st.DrawFn) -> tuple[object, object, tuple[int, int], object]:
    """(point_coords, point_labels, original_size, box): fully arbitrary JSON, or plausible near-misses."""
    size = draw(image_sizes)
    if draw(st.booleans()):
        return draw(json_values), draw(json_values), size, draw(st.none() | json_values)
    coords = draw(near_image_pairs(size))
    labels: object = draw(st.lists(labels_values, min_size=len(coords), max_size=len(coords)))
    if draw(st.integers(0, 9)) == 0:
        labels = draw(json_values)
    box = draw(st.none() | near_image_boxes(size) | json_values)
    return coords, labels, size, box


@st.composite
def valid_prompts(draw: st.DrawFn) -> tuple[Prompt, tuple[int, int], int, int]:
    """A Prompt that build_prompt accepted, its image size, the rows sent and the padding rows among them."""
    height, width = size = draw(image_sizes)
    n = draw(st.integers(min_value=0, max_value=8))
    xs = st.floats(-SLACK_PX, width + SLACK_PX)
    ys = st.floats(-SLACK_PX, height + SLACK_PX)
    labels = draw(st.lists(labels_values, min_size=n, max_size=n))
    # Padding rows sit at the seed's (0, 0); real points anywhere on the image (half-pixel slack included).
    coords = [[0.0, 0.0] if label == -1 else [draw(xs), draw(ys)] for label in labels]
    box = None
    if n == 0 or draw(st.booleans()):
        x0, x1 = sorted(draw(st.lists(xs, min_size=2, max_size=2, unique=True)))
        y0, y1 = sorted(draw(st.lists(ys, min_size=2, max_size=2, unique=True)))
        box = [x0, y0, x1, y1]
    prompt = build_prompt(coords, labels, size, box=box)
    return prompt, size, n, labels.count(-1)


def assert_inside(coords: np.ndarray, size: tuple[int, int]) -> None:
    height, width = size
    assert (coords[:, 0] >= -SLACK_PX).all(), coords
    assert (coords[:, 0] <= width + SLACK_PX).all(), coords
    assert (coords[:, 1] >= -SLACK_PX).all(), coords
    assert (coords[:, 1] <= height + SLACK_PX).all(), coords


# ---- build_prompt --------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(prompt_fields())
def test_build_prompt_refuses_only_with_invalid_input_and_otherwise_returns_a_consistent_prompt(
    fields: tuple[object, object, tuple[int, int], object],
) -> None:
    point_coords, point_labels, size, box = fields
    try:
        prompt = build_prompt(point_coords, point_labels, size, box=box)
    except InvalidInput as exc:
        # PT017: refusing is one allowed outcome (no pytest.raises); the code below checks the other.
        assert exc.field in {"point_coords", "point_labels", "box"}, exc  # noqa: PT017
        return

    n = len(prompt.point_labels)
    assert prompt.point_coords.shape == (n, 2)
    assert prompt.point_coords.dtype == np.float32
    assert prompt.point_labels.shape == (n,)
    assert n <= MAX_POINTS
    assert np.isfinite(prompt.point_coords).all()
    assert set(prompt.point_labels.tolist()) <= set(POINT_LABELS)
    assert n > 0 or prompt.box is not None
    real = prompt.point_labels != -1
    assert_inside(prompt.point_coords[real], size)
    if prompt.box is not None:
        assert prompt.box.shape == (4,)
        assert prompt.box.dtype == np.float32
        assert np.isfinite(prompt.box).all()
        # Not strict: x1 > x0 is checked in float64, and two close coordinates may meet in float32.
        assert prompt.box[2] >= prompt.box[0], prompt.box
        assert prompt.box[3] >= prompt.box[1], prompt.box
        assert_inside(prompt.box.reshape(2, 2), size)
        assert real.all(), "padding rows are dropped when a box is given"


@pytest.mark.parametrize(
    ("point_coords", "box"),
    [([[10**400, 1]], None), ([[1, 1]], [0, 0, 10**400, 5])],
    ids=["point_coords", "box"],
)
def test_build_prompt_refuses_integer_coordinates_too_big_for_a_float(point_coords: object, box: object) -> None:
    with pytest.raises(InvalidInput):
        build_prompt(point_coords, [1], (10, 10), box=box)


# ---- onnx_prompt_inputs --------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(valid_prompts())
def test_onnx_prompt_inputs_have_one_row_per_point_plus_box_corners_or_padding(
    case: tuple[Prompt, tuple[int, int], int, int],
) -> None:
    prompt, size, rows_sent, padding_rows = case
    coords, labels = onnx_prompt_inputs(prompt, size)

    expected_rows = rows_sent - padding_rows + 2 if prompt.box is not None else rows_sent + 1
    assert coords.dtype == np.float32
    assert labels.dtype == np.float32
    assert coords.shape == (1, expected_rows, 2)
    assert labels.shape == (1, expected_rows)
    if prompt.box is not None:
        assert labels[0, -2:].tolist() == [2.0, 3.0]
    else:
        assert labels[0, -1] == -1.0
        assert coords[0, -1].tolist() == [0.0, 0.0]

    # Inside the resized image in the 1024 frame, with the half-pixel slack scaled into that frame.
    new_h, new_w = preprocess_shape(size)
    slack_x = SLACK_PX * new_w / size[1]
    slack_y = SLACK_PX * new_h / size[0]
    tolerance = 1e-3  # float32 rounding of values up to ~1024
    assert max(new_h, new_w) == INPUT_SIZE
    assert (coords[0, :, 0] >= -slack_x - tolerance).all()
    assert (coords[0, :, 0] <= new_w + slack_x + tolerance).all()
    assert (coords[0, :, 1] >= -slack_y - tolerance).all()
    assert (coords[0, :, 1] <= new_h + slack_y + tolerance).all()


# ---- the 1024 input frame ------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    image_sizes,
    st.lists(st.tuples(st.floats(allow_nan=False), st.floats(allow_nan=False)), min_size=1, max_size=8),
)
def test_to_input_frame_matches_segment_anything_apply_coords(
    size: tuple[int, int], pairs: list[tuple[float, float]]
) -> None:
    coords = np.array(pairs, dtype=np.float64)
    with np.errstate(over="ignore"):  # coordinates near float max scale to inf, on both sides alike
        expected = ResizeLongestSide(INPUT_SIZE).apply_coords(coords, size)
        actual = to_input_frame(coords, size)
    np.testing.assert_array_equal(actual, expected)


@PROPERTY_SETTINGS
@given(image_sizes)
def test_preprocess_shape_puts_the_longest_side_at_1024_and_keeps_the_aspect_ratio(size: tuple[int, int]) -> None:
    old_h, old_w = size
    new_h, new_w = preprocess_shape(size)
    assert (new_h, new_w) == ResizeLongestSide.get_preprocess_shape(old_h, old_w, INPUT_SIZE)
    assert max(new_h, new_w) == INPUT_SIZE
    # Each side is the exact scaled side rounded half up, so aspect is kept to within half a pixel per side.
    scale = INPUT_SIZE / max(old_h, old_w)
    assert math.isclose(abs(new_h - old_h * scale), 0.5, abs_tol=1e-9) or abs(new_h - old_h * scale) < 0.5
    assert math.isclose(abs(new_w - old_w * scale), 0.5, abs_tol=1e-9) or abs(new_w - old_w * scale) < 0.5
