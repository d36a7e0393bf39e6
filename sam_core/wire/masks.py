"""Mask encodings: polygons (Roboflow inference's json), COCO RLE and PNG out, json `mask_input` polygons in.

Two pixel frames meet here. Masks at **original-image pixels** ((H, W), what `masks` means in a response) and
masks in SAM's **256x256 low-res frame** (`low_res_masks` and every `mask_input`). Encoders keep whatever
frame their array is in; the docstrings say which frame Roboflow inference's wire contract expects. Everything a
client sends is validated here and refused with `InvalidInput` naming the field; nothing is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pycocotools.mask as coco_mask

from sam_core.errors import InvalidInput
from sam_core.frames import LOW_RES_SHAPE, MASK_INPUT_SHAPE

MAX_POLYGON_POINTS = 10_000
"""Most vertices accepted in one json `mask_input`, all polygons together. In the 256x256 frame an outline
from `mask_to_polygon` has at most ~1,000 (CHAIN_APPROX_SIMPLE keeps only the ends of straight runs)."""

MAX_POLYGONS = 256
"""Most polygons (rings) accepted in one json `mask_input`."""

_PNG_PARAMS = [
    cv2.IMWRITE_PNG_BILEVEL, 1,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
    cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
]  # fmt: skip


# ---- polygons (Roboflow inference's json format) ----------------------------------------------------------------


def _as_bool_mask(mask: np.ndarray, ndim: int | None = None) -> np.ndarray:
    """A C-contiguous bool copy (or view) of a bool or integer (nonzero = inside) mask; floats are refused."""
    mask = np.asarray(mask)
    assert mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer), (
        f"mask must be bool (threshold logits at 0 first), got {mask.dtype}"
    )
    assert ndim is None or mask.ndim == ndim, f"mask must have {ndim} dims, got shape {mask.shape}"
    if mask.dtype != np.bool_:
        mask = mask != 0
    return mask if mask.flags.c_contiguous else mask.copy(order="C")  # ascontiguousarray makes 0-d 1-d


def _external_contours(mask: np.ndarray) -> list[np.ndarray]:
    """External contours of a (H, W) mask as OpenCV returns them, (N, 1, 2) int32 arrays of (x, y)."""
    mask_u8 = _as_bool_mask(mask, ndim=2).view(np.uint8)
    if mask_u8.size == 0:
        return []
    # CHAIN_APPROX_SIMPLE keeps only the ends of straight (horizontal, vertical, diagonal) runs: the same
    # pixels outline as CHAIN_APPROX_NONE (fillPoly redraws it exactly) with ~4-10x fewer vertices, and it
    # is what Roboflow inference uses, so vertex lists match Roboflow inference's.
    contours, _ = cv2.findContours(mask_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return list(contours)


def _contour_size(contour: np.ndarray) -> tuple[float, int]:
    """What "largest" means: enclosed area (Roboflow inference took the most vertices, which favours ragged outlines);
    ties, e.g. lines and single pixels with area 0, go to the longer contour."""
    return float(cv2.contourArea(contour)), len(contour)


def mask_to_polygon(mask: np.ndarray) -> list[list[int]]:
    """Roboflow inference's json mask: the largest external contour of a mask as `[[x, y], ...]`.

    Args:
        mask: (H, W) bool (or 0/1 integer) mask, in whatever frame it was predicted: original-image pixels for
            `masks`, the 256x256 low-res frame for `low_res_masks`.

    Returns:
        Vertices (x, y) in that same frame, integer pixel centres of boundary pixels, OpenCV's
        `CHAIN_APPROX_SIMPLE` outline (straight runs reduced to their ends; `polygons_to_mask` redraws it
        exactly). Largest by `cv2.contourArea`. An empty mask gives `[]`; a single pixel gives one vertex and
        a one-pixel-wide line two. Holes are not described (external contour only), as in Roboflow inference.

    OpenCV over rasterio + shapely (Roboflow inference's): faster and half the bytes (`bench/bench_masks.py`; figures in
    the README).
    """
    contours = _external_contours(mask)
    if not contours:
        return []
    # One pass for the largest instead of sorting them all: a ragged mask can have thousands of specks.
    polygon: list[list[int]] = max(contours, key=_contour_size).reshape(-1, 2).tolist()
    return polygon


_SEQUENCE_TYPES = (list, tuple)
_JSON_NUMBER_TYPES = (int, float)


def _is_number(value: object) -> bool:
    # bool is an int subclass: true/false in JSON must not pass for coordinates.
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_point(value: object) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)


def _polygon_list(polygons: object, field: str) -> Sequence[object]:
    """Normalise "one polygon" or "a list of polygons" to a list of polygons (shape checks come later)."""
    if not isinstance(polygons, (list, tuple)):
        raise InvalidInput(
            f"expected a polygon [[x, y], ...] or a list of polygons, got {type(polygons).__name__}",
            field=field,
        )
    if not polygons:
        raise InvalidInput("no polygon given", field=field)
    first = polygons[0]
    if isinstance(first, (list, tuple)) and first and _is_number(first[0]):
        return [polygons]  # a single polygon: its first element is an (x, y) pair
    return polygons


def _validate_polygon(polygon: object, index: int, field: str) -> None:
    if not isinstance(polygon, (list, tuple)):
        raise InvalidInput(f"polygon {index} is not a list of [x, y] points", field=field)
    if len(polygon) < 3:
        raise InvalidInput(f"polygon {index} has {len(polygon)} points; at least 3 are needed", field=field)
    # Fast path for what JSON gives (exact types, so bools fail it); ~4x quicker than the checks below.
    if all(
        type(point) in _SEQUENCE_TYPES
        and len(point) == 2
        and type(point[0]) in _JSON_NUMBER_TYPES
        and type(point[1]) in _JSON_NUMBER_TYPES
        for point in polygon
    ):
        return
    for j, point in enumerate(polygon):
        if not _is_point(point):
            raise InvalidInput(f"polygon {index} point {j} is not a pair of numbers [x, y]", field=field)


def polygons_to_mask(
    polygons: object, shape: tuple[int, int] = LOW_RES_SHAPE, *, field: str = "mask_input"
) -> np.ndarray:
    """Rasterise Roboflow inference's json `mask_input`: polygons in the 256x256 low-res frame, to a bool mask.

    Args:
        polygons: one polygon `[[x, y], ...]` or a list of them, as JSON gives it; (x, y) in the frame of
            `shape` (the 256x256 low-res frame for `mask_input`). Vertices are pixel centres, the convention
            `mask_to_polygon` produces, so a polygon from a response's `low_res_masks` redraws its mask.
            Floats are rounded to the nearest pixel.
        shape: (height, width) of the output frame.
        field: the request field named in errors.

    Returns:
        (height, width) bool mask: the union of the polygons, each filled with OpenCV's `fillPoly`, which
        fills a self-intersecting polygon by the even-odd rule (a pentagram's centre stays empty) and
        includes its boundary pixels. Polygons are filled one at a time so overlaps stay filled (one
        `fillPoly` call over all of them would apply even-odd across polygons). Roboflow inference rasterised with
        rasterio (pixels whose centre is inside, vertices on pixel corners): for our pixel-centre vertices
        that drops the right and bottom boundary pixels; ours differs from it along the boundary only.

    Raises:
        InvalidInput: not a list; a point that is not a pair of finite numbers (strings, bools, NaN, inf are
            refused); fewer than 3 points; more than `MAX_POLYGONS` polygons or `MAX_POLYGON_POINTS` points
            in all; a coordinate further than one frame size outside the frame (within that slack, points
            outside the frame are kept and the fill is clipped to the frame, so shapes crossing the border
            keep their edges).
    """
    height, width = shape
    polygon_list = _polygon_list(polygons, field)
    if len(polygon_list) > MAX_POLYGONS:
        raise InvalidInput(f"{len(polygon_list)} polygons; at most {MAX_POLYGONS} are accepted", field=field)
    total_points = 0
    for i, polygon in enumerate(polygon_list):
        # The count is checked before any per-point work so a huge body cannot cost much CPU.
        total_points += len(polygon) if isinstance(polygon, (list, tuple)) else 0
        if total_points > MAX_POLYGON_POINTS:
            raise InvalidInput(f"more than {MAX_POLYGON_POINTS} points in all (the limit)", field=field)
        _validate_polygon(polygon, i, field)

    mask = np.zeros((height, width), dtype=np.uint8)
    for i, polygon in enumerate(polygon_list):
        try:
            vertices = np.asarray(polygon, dtype=np.float64)
        except OverflowError as exc:  # an int too large for a float
            raise InvalidInput(f"polygon {i} has a coordinate out of range", field=field) from exc
        if not np.isfinite(vertices).all():
            raise InvalidInput(f"polygon {i} has a non-finite coordinate (NaN or inf)", field=field)
        xs, ys = vertices[:, 0], vertices[:, 1]
        if (xs < -width).any() or (xs > 2 * width).any() or (ys < -height).any() or (ys > 2 * height).any():
            raise InvalidInput(
                f"polygon {i} has a point far outside the {width}x{height} frame "
                f"(x must be in [{-width}, {2 * width}], y in [{-height}, {2 * height}])",
                field=field,
            )
        cv2.fillPoly(mask, [np.rint(vertices).astype(np.int32)], 1)
    return mask.view(np.bool_)


def mask_input_array(mask: np.ndarray) -> np.ndarray:
    """SAM's `mask_input` from a bool mask in the 256x256 low-res frame: (1, 1, 256, 256) float32 of 0/1.

    `mask_input` is meant to hold logits; Roboflow inference fed rasterised polygons as 0.0/1.0 and so do we, so json
    mask inputs behave as they did (a weak prior: logit 1 is p=0.73). Clients wanting a strong prior send
    the previous `low_res_masks` logits in the binary format instead.
    """
    mask = _as_bool_mask(mask)
    assert mask.shape == LOW_RES_SHAPE, f"mask_input mask must be {LOW_RES_SHAPE}, got {mask.shape}"
    return mask.astype(np.float32).reshape(MASK_INPUT_SHAPE)


# ---- COCO RLE -----------------------------------------------------------------------------------------


def encode_rle(mask: np.ndarray) -> dict[str, object]:
    """COCO compressed RLE of a (H, W) mask (any frame): `{"size": [h, w], "counts": str}`, JSON-ready.

    Runs are column-major (COCO's Fortran order), starting with a run of zeros; pycocotools and every COCO
    tool decode it.
    """
    mask_u8 = np.asfortranarray(_as_bool_mask(mask, ndim=2).view(np.uint8))
    rle = coco_mask.encode(mask_u8)
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


# ---- PNG ----------------------------------------------------------------------------------------------


def encode_png(mask: np.ndarray) -> bytes:
    """A (H, W) mask (any frame) as a 1-bit greyscale PNG, via OpenCV (`IMWRITE_PNG_BILEVEL`).

    zlib's run-length strategy with the PNG "up" filter suits masks: rows mostly repeat the row above, so
    the filter leaves runs of zeros that Z_RLE codes without searching; faster and smaller than PIL's mode
    "1" or OpenCV's 8-bit PNGs at any level (`bench/bench_masks.py` compares them).
    """
    mask_u8 = _as_bool_mask(mask, ndim=2).view(np.uint8) * np.uint8(255)
    assert mask_u8.size > 0, "PNG cannot hold an empty (zero-size) image"
    ok, encoded = cv2.imencode(".png", mask_u8, _PNG_PARAMS)
    assert ok, "cv2.imencode failed on a plain uint8 image"
    return encoded.tobytes()
