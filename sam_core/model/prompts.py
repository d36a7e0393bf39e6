"""Prompts: validate points, labels and boxes, and turn them into the ONNX decoder's inputs.

Coordinates arrive in original-image pixels as (x, y); the decoder wants them in the 1024 input frame, scaled
exactly as `ResizeLongestSide.apply_coords` does. That transform is re-stated here in numpy (and tested
against segment-anything's) so that CPU decoder replicas need not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sam_core.errors import InvalidInput
from sam_core.frames import preprocess_shape

POINT_LABELS = {
    -1: "padding (ignored)",
    0: "background",
    1: "foreground",
    2: "box top-left",
    3: "box bottom-right",
}

MAX_POINTS = 64


@dataclass(frozen=True)
class Prompt:
    """One decoder prompt in original-image pixels.

    Attributes:
        point_coords: (N, 2) float32 array of (x, y) points in original-image pixels; N may be 0.
        point_labels: (N,) int array; 1 foreground, 0 background, -1 padding, 2/3 box corners given as points.
        box: (4,) float32 array (x0, y0, x1, y1) in original-image pixels, or None.
    """

    point_coords: np.ndarray
    point_labels: np.ndarray
    box: np.ndarray | None = None

    @property
    def num_rows(self) -> int:
        """Rows of `point_coords` the ONNX model will see (clicks, box corners, padding)."""
        return len(self.point_labels) + (2 if self.box is not None else 1)


def to_input_frame(coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Scale (..., 2) (x, y) coordinates from original-image pixels to the 1024 input frame."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(original_size)
    scaled = np.array(coords, dtype=np.float64, copy=True)
    scaled[..., 0] *= new_w / old_w
    scaled[..., 1] *= new_h / old_h
    return scaled


def _finite_pairs(value: object, field: str, *, expected: int | None = None) -> np.ndarray:
    """A list of [x, y] number pairs as an (N, 2) float64 array, or InvalidInput naming the field."""
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise InvalidInput("must be a list of [x, y] pairs", field=field)
    rows: list[tuple[float, float]] = []
    for i, pair in enumerate(value):
        if (
            not isinstance(pair, Sequence)
            or isinstance(pair, str | bytes)
            or len(pair) != 2
            or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in pair)
        ):
            raise InvalidInput(f"item {i} must be a pair of numbers [x, y]", field=field)
        try:
            x, y = float(pair[0]), float(pair[1])
        except OverflowError:  # an integer beyond float range
            raise InvalidInput(f"item {i} has a coordinate out of range", field=field) from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InvalidInput(f"item {i} has a non-finite coordinate", field=field)
        rows.append((x, y))
    if expected is not None and len(rows) != expected:
        raise InvalidInput(f"expected {expected} pairs, got {len(rows)}", field=field)
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def _check_inside(coords: np.ndarray, original_size: tuple[int, int], field: str) -> None:
    height, width = original_size
    # Half a pixel of slack either way: clicks on the last pixel's edge are still on the image.
    outside = (coords[:, 0] < -0.5) | (coords[:, 0] > width + 0.5)
    outside |= (coords[:, 1] < -0.5) | (coords[:, 1] > height + 0.5)
    if outside.any():
        i = int(np.argmax(outside))
        raise InvalidInput(
            f"item {i} ({coords[i, 0]:g}, {coords[i, 1]:g}) lies outside the {width}x{height} image",
            field=field,
        )


def _labels(value: object) -> list[int]:
    """A list of POINT_LABELS integers (integral floats accepted), or InvalidInput naming `point_labels`."""
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise InvalidInput("must be a list of integers", field="point_labels")
    labels: list[int] = []
    for i, label in enumerate(value):
        is_integral = isinstance(label, int) or (isinstance(label, float) and label.is_integer())
        if isinstance(label, bool) or not is_integral or int(label) not in POINT_LABELS:
            allowed = ", ".join(f"{k} ({v})" for k, v in POINT_LABELS.items())
            raise InvalidInput(f"item {i} is {label!r}; labels are {allowed}", field="point_labels")
        labels.append(int(label))
    return labels


def _box(value: object, original_size: tuple[int, int]) -> np.ndarray:
    """[x0, y0, x1, y1] on the image with x1 > x0 and y1 > y0 as a (4,) float64 array, or InvalidInput
    naming `box`."""
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str | bytes)
        or len(value) != 4
        or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in value)
    ):
        raise InvalidInput("must be [x0, y0, x1, y1] numbers", field="box")
    try:
        box = np.array([float(c) for c in value], dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        raise InvalidInput("has a coordinate out of range", field="box") from None
    if not np.isfinite(box).all():
        raise InvalidInput("has a non-finite coordinate", field="box")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise InvalidInput("needs x1 > x0 and y1 > y0 ([x0, y0, x1, y1])", field="box")
    _check_inside(box.reshape(2, 2), original_size, "box")
    return box


def build_prompt(
    point_coords: object,
    point_labels: object,
    original_size: tuple[int, int],
    *,
    box: object = None,
    has_mask_input: bool = False,
    max_points: int = MAX_POINTS,
) -> Prompt:
    """Validate a request's prompt against the image it targets.

    Args:
        point_coords: [[x, y], ...] in original-image pixels (may be empty when a box is given).
        point_labels: one label per point, each in POINT_LABELS.
        original_size: (height, width) of the original image.
        box: [x0, y0, x1, y1] in original-image pixels, or None.
        has_mask_input: a mask input comes with the prompt: it is a prompt by itself, so empty point lists
            without a box are then valid (the decoder sees only the padding row, as in Roboflow inference).
        max_points: the most points one prompt may carry.

    Raises:
        InvalidInput naming `point_coords`, `point_labels` or `box` and the reason.
    """
    coords = _finite_pairs(point_coords, "point_coords")
    if len(coords) > max_points:
        raise InvalidInput(f"at most {max_points} points per prompt, got {len(coords)}", field="point_coords")
    labels = _labels(point_labels)
    if len(labels) != len(coords):
        raise InvalidInput(
            f"{len(labels)} labels for {len(coords)} points: give one label per point", field="point_labels"
        )
    if not labels and box is None and not has_mask_input:
        # Roboflow inference's "no prompt" is its default padding row ([[0, 0]] / [-1]), not empty lists; empty lists
        # with neither a box nor a mask are almost always a client bug, so they are refused, not guessed at.
        raise InvalidInput("give at least one point, a box or a mask_input", field="point_coords")
    # Every row must lie on the image, padding rows (label -1, Roboflow inference's default sits at (0, 0)) included:
    # the model ignores their position, but an unchecked one could be any finite float64 (inf in float32).
    _check_inside(coords, original_size, "point_coords")
    real = np.array(labels, dtype=np.int64) != -1

    box_array = None if box is None else _box(box, original_size)
    label_array = np.array(labels, dtype=np.int64)
    if box_array is not None:
        # SAM pads the prompt only when there is no box; padding rows sent with a box (Roboflow inference's default
        # [[0, 0]] / [-1] left in place) would add a row and change which mask the single-mask model returns.
        coords, label_array = coords[real], label_array[real]
    return Prompt(
        point_coords=coords.astype(np.float32),
        point_labels=label_array,
        box=None if box_array is None else box_array.astype(np.float32),
    )


def onnx_prompt_inputs(prompt: Prompt, original_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The ONNX decoder's `point_coords` (1, K, 2) in the 1024 frame and `point_labels` (1, K), float32.

    As SamPredictor does: a box becomes two corner points labelled 2 and 3 after the clicks; without a box a
    (0, 0) point labelled -1 pads the prompt (the prompt encoder's `pad=True`).
    """
    coords = [prompt.point_coords.astype(np.float64)]
    labels = [prompt.point_labels.astype(np.float64)]
    if prompt.box is not None:
        coords.append(prompt.box.reshape(2, 2).astype(np.float64))
        labels.append(np.array([2.0, 3.0]))
    else:
        coords.append(np.zeros((1, 2)))
        labels.append(np.array([-1.0]))
    all_coords = np.concatenate(coords, axis=0)
    all_labels = np.concatenate(labels, axis=0)
    input_coords = to_input_frame(all_coords, original_size)
    return input_coords[None].astype(np.float32), all_labels[None].astype(np.float32)
