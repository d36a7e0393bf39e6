"""Prompt validation and the transform into the ONNX decoder's inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from segment_anything.utils.transforms import ResizeLongestSide

from sam_core.errors import InvalidInput
from sam_core.frames import preprocess_shape
from sam_core.model.prompts import build_prompt, onnx_prompt_inputs, to_input_frame


def test_input_frame_transform_matches_segment_anything() -> None:
    rng = np.random.default_rng()
    transform = ResizeLongestSide(1024)
    for _ in range(50):
        size = (int(rng.integers(1, 5000)), int(rng.integers(1, 5000)))
        coords = rng.uniform(0, 5000, size=(7, 2))
        assert preprocess_shape(size) == ResizeLongestSide.get_preprocess_shape(size[0], size[1], 1024)
        np.testing.assert_allclose(to_input_frame(coords, size), transform.apply_coords(coords, size))


def test_points_without_box_get_a_padding_row() -> None:
    prompt = build_prompt([[10, 20]], [1], (100, 200))
    coords, labels = onnx_prompt_inputs(prompt, (100, 200))
    assert coords.shape == (1, 2, 2)
    assert coords.dtype == np.float32
    np.testing.assert_array_equal(labels, [[1, -1]])
    np.testing.assert_allclose(coords[0, 1], [0, 0])


def test_box_becomes_corner_points_labelled_two_and_three_without_padding() -> None:
    prompt = build_prompt([[10, 20]], [0], (100, 200), box=[5, 6, 50, 60])
    coords, labels = onnx_prompt_inputs(prompt, (100, 200))
    np.testing.assert_array_equal(labels, [[0, 2, 3]])
    np.testing.assert_allclose(coords[0, 1:], to_input_frame(np.array([[5, 6], [50, 60]]), (100, 200)))


def test_padding_rows_are_dropped_when_a_box_is_given() -> None:
    # The seed's default point_coords [[0, 0]] / point_labels [-1] stay in a box-only request.
    prompt = build_prompt([[0, 0]], [-1], (100, 200), box=[5, 6, 50, 60])
    _, labels = onnx_prompt_inputs(prompt, (100, 200))
    np.testing.assert_array_equal(labels, [[2, 3]])


def test_seed_default_padding_prompt_is_accepted() -> None:
    prompt = build_prompt([[0, 0]], [-1], (100, 200))
    assert prompt.num_rows == 2


@pytest.mark.parametrize(
    ("coords", "labels", "box", "field"),
    [
        ([[math.nan, 1]], [1], None, "point_coords"),
        ([[math.inf, 1]], [1], None, "point_coords"),
        ([[1, 2, 3]], [1], None, "point_coords"),
        ([["1", 2]], [1], None, "point_coords"),
        ([[True, 2]], [1], None, "point_coords"),
        ("[[1, 2]]", [1], None, "point_coords"),
        ([[500, 5]], [1], None, "point_coords"),
        ([[5, -3]], [1], None, "point_coords"),
        ([[1, 2]], [1, 1], None, "point_labels"),
        ([[1, 2]], [7], None, "point_labels"),
        ([[1, 2]], [0.5], None, "point_labels"),
        ([[1, 2]], [True], None, "point_labels"),
        ([[1, 2]], 1, None, "point_labels"),
        ([[1, 2]] * 65, [1] * 65, None, "point_coords"),
        ([], [], None, "point_coords"),
        ([], [], [50, 10, 40, 20], "box"),
        ([], [], [10, 20, 10, 30], "box"),
        ([], [], [10, 20, 30], "box"),
        ([], [], [10, 20, 30, math.nan], "box"),
        ([], [], [10, 20, 300, 30], "box"),
    ],
)
def test_bad_prompt_names_the_field(coords: object, labels: object, box: object, field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        build_prompt(coords, labels, (100, 200), box=box)
    assert raised.value.field == field
    assert raised.value.reason


def test_a_mask_input_alone_is_a_prompt_of_only_the_padding_row() -> None:
    prompt = build_prompt([], [], (100, 200), has_mask_input=True)
    coords, labels = onnx_prompt_inputs(prompt, (100, 200))
    np.testing.assert_array_equal(labels, [[-1]])
    np.testing.assert_allclose(coords, [[[0, 0]]])


def test_no_point_no_box_and_no_mask_is_refused() -> None:
    with pytest.raises(InvalidInput) as raised:
        build_prompt([], [], (100, 200), has_mask_input=False)
    assert raised.value.field == "point_coords"
    assert "mask_input" in raised.value.reason
