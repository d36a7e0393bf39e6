"""Mask encodings in and out: polygons, COCO RLE, PNG and the seed's .npy/.npz bodies.

Two pixel frames meet here. Masks at **original-image pixels** ((H, W), what `masks` means in a response) and
masks in SAM's **256x256 low-res frame** (`low_res_masks` and every `mask_input`). Encoders keep whatever
frame their array is in; the docstrings say which frame the seed's wire contract expects. Everything a
client sends is validated here and refused with `InvalidInput` naming the field; nothing is ever unpickled.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import zipfile
import zlib
from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt
import pycocotools.mask as coco_mask

from sam_core.errors import InvalidInput
from sam_core.frames import EMBEDDING_SHAPE, LOW_RES_SHAPE, MASK_INPUT_SHAPE

FLOAT_DTYPES: tuple[type[np.floating], ...] = (np.float32, np.float16, np.float64)
"""dtypes a client-sent .npy may carry unless the caller says otherwise."""

MAX_POLYGON_POINTS = 10_000
"""Most vertices accepted in one json `mask_input`, all polygons together. In the 256x256 frame an outline
from `mask_to_polygon` has at most ~1,000 (CHAIN_APPROX_SIMPLE keeps only the ends of straight runs)."""

MAX_POLYGONS = 256
"""Most polygons (rings) accepted in one json `mask_input`."""

MAX_NPY_BASE64_CHARS = 8 * 1024 * 1024
"""Longest base64 string `decode_npy_base64` reads by default: a float32 (1,256,64,64) embedding is 5.6 M."""

_PNG_PARAMS = [
    cv2.IMWRITE_PNG_BILEVEL, 1,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
    cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
]  # fmt: skip


# ---- polygons (the seed's json format) ----------------------------------------------------------------


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
    # is what the seed uses, so vertex lists match the seed's.
    contours, _ = cv2.findContours(mask_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return list(contours)


def _contour_size(contour: np.ndarray) -> tuple[float, int]:
    """What "largest" means: enclosed area (the seed took the most vertices, which favours ragged outlines);
    ties, e.g. lines and single pixels with area 0, go to the longer contour."""
    return float(cv2.contourArea(contour)), len(contour)


def mask_to_polygon(mask: np.ndarray) -> list[list[int]]:
    """The seed's json mask: the largest external contour of a mask as `[[x, y], ...]`.

    Args:
        mask: (H, W) bool (or 0/1 integer) mask, in whatever frame it was predicted: original-image pixels for
            `masks`, the 256x256 low-res frame for `low_res_masks`.

    Returns:
        Vertices (x, y) in that same frame, integer pixel centres of boundary pixels, OpenCV's
        `CHAIN_APPROX_SIMPLE` outline (straight runs reduced to their ends; `polygons_to_mask` redraws it
        exactly). Largest by `cv2.contourArea`. An empty mask gives `[]`; a single pixel gives one vertex and
        a one-pixel-wide line two. Holes are not described (external contour only), as in the seed.

    Measured by `bench/bench_masks.py` (1500x2250 SAM-like mask, 2-core dev machine): OpenCV findContours
    is ~50x faster than `rasterio.features.shapes` + shapely area (0.7 ms vs 33 ms, json included), and
    its polygon is half the bytes (15 kB vs 29 kB), so OpenCV it is.
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
    """Rasterise the seed's json `mask_input`: polygons in the 256x256 low-res frame, to a bool mask.

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
        `fillPoly` call over all of them would apply even-odd across polygons). The seed rasterised with
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

    `mask_input` is meant to hold logits; the seed fed rasterised polygons as 0.0/1.0 and so do we, so json
    mask inputs behave as they did (a weak prior: logit 1 is p=0.73). Clients wanting a strong prior send
    the previous `low_res_masks` logits in the binary format instead.
    """
    mask = _as_bool_mask(mask)
    assert mask.shape == LOW_RES_SHAPE, f"mask_input mask must be {LOW_RES_SHAPE}, got {mask.shape}"
    return mask.astype(np.float32).reshape(MASK_INPUT_SHAPE)


# ---- client-sent .npy (binary mask_input, client embeddings) ------------------------------------------


def _dtype_allowed(dtype: np.dtype, dtypes: Sequence[npt.DTypeLike]) -> bool:
    native = dtype.newbyteorder("=")
    return any(native == np.dtype(allowed).newbyteorder("=") for allowed in dtypes)


def decode_npy(
    raw: bytes,
    *,
    field: str,
    expected_shape: tuple[int, ...] | None,
    dtypes: Sequence[npt.DTypeLike] = FLOAT_DTYPES,
) -> np.ndarray:
    """Load `np.save` bytes sent by a client, refusing anything but a plain numeric array.

    The header is read and checked (magic, version, dtype, shape, exact data length) before `np.load`
    allocates anything, so a tiny body cannot claim a huge array, and an object (pickled) array is refused
    from its header: it is never unpickled. `np.load(allow_pickle=False)` then loads it.

    Returns:
        The array in native byte order and C order, its dtype one of `dtypes` (not converted).

    Raises:
        InvalidInput: not .npy, unsupported version, object/structured or not-allowed dtype, wrong shape,
            truncated or trailing data, NaN or inf in a float array.
    """
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise InvalidInput(f"unsupported .npy format version {version}", field=field)
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        raise InvalidInput("not a .npy array (np.save bytes expected)", field=field) from exc
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise InvalidInput(f"dtype {dtype} refused: only plain numeric arrays are accepted", field=field)
    if not _dtype_allowed(dtype, dtypes):
        allowed = ", ".join(str(np.dtype(d)) for d in dtypes)
        raise InvalidInput(f"dtype {dtype} refused; expected one of {allowed}", field=field)
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise InvalidInput(f"shape {tuple(shape)} refused; expected {tuple(expected_shape)}", field=field)
    data_bytes = math.prod(shape) * dtype.itemsize
    if len(raw) - stream.tell() != data_bytes:
        raise InvalidInput(
            f"array data is {len(raw) - stream.tell()} bytes; shape {tuple(shape)} of {dtype} needs {data_bytes}",
            field=field,
        )
    stream.seek(0)
    try:
        array = np.load(stream, allow_pickle=False)
    except ValueError as exc:  # defensive: the header checks above should have caught it
        raise InvalidInput(f"unreadable .npy: {exc}", field=field) from exc
    array = array.astype(dtype.newbyteorder("="), order="C", copy=False)
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise InvalidInput("array contains NaN or inf", field=field)
    return array


def decode_npy_base64(
    value: str | bytes,
    *,
    field: str,
    expected_shape: tuple[int, ...] | None,
    dtypes: Sequence[npt.DTypeLike] = FLOAT_DTYPES,
    max_bytes: int = MAX_NPY_BASE64_CHARS,
) -> np.ndarray:
    """Decode base64 of `np.save` bytes: the seed's binary `mask_input` ((1, 1, 256, 256), low-res frame)
    and client-supplied binary embeddings ((1, 256, 64, 64)).

    Args:
        value: the base64 text as sent (line breaks tolerated).
        field: the request field named in errors.
        expected_shape: the exact shape required, or None for any.
        dtypes: accepted dtypes (either byte order); floats by default.
        max_bytes: longest `value` accepted, checked before decoding.

    Raises:
        InvalidInput: too long, not base64, or anything `decode_npy` refuses.
    """
    if not isinstance(value, (str, bytes)):
        raise InvalidInput(f"expected a base64 string, got {type(value).__name__}", field=field)
    if len(value) > max_bytes:
        raise InvalidInput(f"{len(value)} characters; at most {max_bytes} are accepted", field=field)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        try:  # base64 wrapped at 76 columns (base64.encodebytes, MIME) is still base64
            compact = value.split() if isinstance(value, bytes) else value.encode("ascii").split()
            raw = base64.b64decode(b"".join(compact), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
            raise InvalidInput("not valid base64", field=field) from exc
    return decode_npy(raw, field=field, expected_shape=expected_shape, dtypes=dtypes)


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
    the filter leaves runs of zeros that Z_RLE codes without searching. Measured by `bench/bench_masks.py`
    on a 1500x2250 SAM-like mask: ~2 ms for ~8 kB, against PIL mode "1" at ~5 ms / 9.5 kB (level 6) or
    ~20 ms / 7.5 kB (level 9), and OpenCV 8-bit at ~17 ms / 28 kB (level 1).
    """
    mask_u8 = _as_bool_mask(mask, ndim=2).view(np.uint8) * np.uint8(255)
    assert mask_u8.size > 0, "PNG cannot hold an empty (zero-size) image"
    ok, encoded = cv2.imencode(".png", mask_u8, _PNG_PARAMS)
    assert ok, "cv2.imencode failed on a plain uint8 image"
    return encoded.tobytes()


# ---- the seed's binary response bodies ----------------------------------------------------------------


def embedding_to_npy(embedding: np.ndarray) -> bytes:
    """The seed's binary `embed_image` body: `np.save` of the float32 (1, 256, 64, 64) embedding."""
    assert embedding.shape == EMBEDDING_SHAPE, f"embedding shape {embedding.shape}, expected {EMBEDDING_SHAPE}"
    stream = io.BytesIO()
    np.save(stream, np.ascontiguousarray(embedding, dtype=np.float32))
    return stream.getvalue()


def npy_to_embedding(data: bytes, *, field: str = "embeddings") -> np.ndarray:
    """A binary `embed_image` body (or a client's binary embedding) back to float32 (1, 256, 64, 64)."""
    array = decode_npy(data, field=field, expected_shape=EMBEDDING_SHAPE, dtypes=FLOAT_DTYPES)
    return array.astype(np.float32, copy=False)


def _npy_bytes(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, array, allow_pickle=False)
    return stream.getvalue()


def segment_to_npz(masks: np.ndarray, low_res_masks: np.ndarray) -> bytes:
    """The seed's binary `segment_image` body: an .npz with arrays `masks` and `low_res_masks`.

    Args:
        masks: (N, H, W) masks at original-image pixels, bool (or float logits, thresholded at 0 here). Stored
            as **bool**: the seed stored float32 logits; `np.load(body)["masks"]` still works and `> 0` on it
            still gives the mask.
        low_res_masks: (N, 256, 256) float32 logits in the low-res frame, kept as logits because clients
            send them back as binary `mask_input`.

    The container is what `np.savez` writes (a zip of .npy members), but each member gets the compression
    that pays: the bool mask is deflated at zlib level 1 (3.4 MB -> ~30 kB for 1500x2250 in ~3 ms), the
    logits are stored (deflate saves ~10 % of their 262 kB for ~6 ms). Measured by `bench/bench_masks.py`:
    0.29 MB in ~3.6 ms, against the seed's 12.3 MB in ~395 ms, `np.savez` of bool 3.6 MB in ~0.8 ms and
    `np.savez_compressed` 0.25 MB in ~17 ms.
    """
    assert masks.ndim == 3, f"masks must be (N, H, W), got {masks.shape}"
    assert low_res_masks.shape == (masks.shape[0], *LOW_RES_SHAPE), (
        f"low_res_masks must be (N, 256, 256), got {low_res_masks.shape}"
    )
    masks_bool = masks > 0 if np.issubdtype(masks.dtype, np.floating) else _as_bool_mask(masks)
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("masks.npy", _npy_bytes(masks_bool), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
        archive.writestr(
            "low_res_masks.npy",
            _npy_bytes(np.asarray(low_res_masks, dtype=np.float32)),
            compress_type=zipfile.ZIP_STORED,
        )
    return stream.getvalue()


def npz_to_segment(data: bytes, *, field: str = "masks") -> tuple[np.ndarray, np.ndarray]:
    """A binary `segment_image` body back to (masks bool (N, H, W), low_res_masks float32 (N, 256, 256)).

    Reads ours and the seed's bodies (whose `masks` are float logits: thresholded at 0). For responses from
    a server the client chose to trust: np.load of an archive is not hardened like `decode_npy`.
    """
    if not isinstance(data, bytes) or not data.startswith(b"PK"):
        raise InvalidInput("not a segment .npz (not a zip archive)", field=field)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            if set(archive.files) != {"masks", "low_res_masks"}:
                raise InvalidInput(f"expected arrays masks and low_res_masks, got {archive.files}", field=field)
            masks, low_res_masks = archive["masks"], archive["low_res_masks"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InvalidInput(f"not a segment .npz: {exc}", field=field) from exc
    if masks.dtype != np.bool_:
        masks = masks > 0
    return masks, low_res_masks.astype(np.float32, copy=False)
