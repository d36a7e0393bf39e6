"""NumPy payloads on the wire, read without pickle: client `.npy` (binary `mask_input`, client embeddings) and
Roboflow inference's binary bodies (`.npy` embeddings, `.npz` masks).

Only numpy and the standard library: the light client reads answers with it, no OpenCV.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import zipfile
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from sam_core.errors import InvalidInput
from sam_core.frames import EMBEDDING_SHAPE, LOW_RES_SHAPE

FLOAT_DTYPES: tuple[type[np.floating], ...] = (np.float32, np.float16, np.float64)
"""dtypes a client-sent .npy may carry unless the caller says otherwise."""

MAX_NPY_BASE64_CHARS = 8 * 1024 * 1024
"""Longest base64 string `decode_npy_base64` reads by default: a float32 (1,256,64,64) embedding is 5.6 M."""

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
    check_shape: Callable[[tuple[int, ...]], None] | None = None,
) -> np.ndarray:
    """Load `np.save` bytes sent by a client, refusing anything but a plain numeric array.

    `check_shape` (e.g. an image's pixel limits) runs on the header's shape before any data is read.

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
    shape, dtype = _read_header(stream, field)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise InvalidInput(
            f"dtype {dtype} refused: only plain numeric arrays are accepted (pickled data is never loaded)",
            field=field,
        )
    if not _dtype_allowed(dtype, dtypes):
        allowed = ", ".join(str(np.dtype(d)) for d in dtypes)
        raise InvalidInput(f"dtype {dtype} refused; expected one of {allowed}", field=field)
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise InvalidInput(f"shape {tuple(shape)} refused; expected {tuple(expected_shape)}", field=field)
    if check_shape is not None:
        check_shape(tuple(shape))
    data_bytes = math.prod(shape) * dtype.itemsize
    if len(raw) - stream.tell() != data_bytes:
        raise InvalidInput(
            f"array data is {len(raw) - stream.tell()} bytes; its header declares shape {tuple(shape)} of {dtype}, "
            f"which needs {data_bytes} bytes",
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


def _read_header(stream: io.BytesIO, field: str) -> tuple[tuple[int, ...], np.dtype]:
    """The (shape, dtype) of an .npy header (format 1.0 or 2.0), the stream left at the data."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise InvalidInput(f"unsupported .npy format version {version}", field=field)
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        raise InvalidInput(
            "not a .npy array (np.save bytes expected; pickled data is never loaded)", field=field
        ) from exc
    return tuple(shape), dtype


def decode_npy_base64(
    value: str | bytes,
    *,
    field: str,
    expected_shape: tuple[int, ...] | None,
    dtypes: Sequence[npt.DTypeLike] = FLOAT_DTYPES,
    max_bytes: int = MAX_NPY_BASE64_CHARS,
) -> np.ndarray:
    """Decode base64 of `np.save` bytes: Roboflow inference's binary `mask_input` ((1, 1, 256, 256), low-res frame)
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


# ---- Roboflow inference's binary response bodies ----------------------------------------------------------------


def embedding_to_npy(embedding: np.ndarray) -> bytes:
    """Roboflow inference's binary `embed_image` body: `np.save` of the float32 (1, 256, 64, 64) embedding."""
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


def segment_to_npz(masks: np.ndarray, low_res_masks: np.ndarray, scores: np.ndarray | None = None) -> bytes:
    """Roboflow inference's binary `segment_image` body: an .npz with arrays `masks` and `low_res_masks` (and `scores`).

    Args:
        masks: (N, H, W) masks at original-image pixels, bool (or float logits, thresholded at 0 here); for a
            request with several prompts (P, M, H, W). Stored as **bool**: Roboflow inference stored float32 logits;
            `np.load(body)["masks"]` still works and `> 0` on it still gives the mask.
        low_res_masks: (..., 256, 256) float32 logits in the low-res frame, one per mask, kept as logits
            because clients send them back as binary `mask_input`.
        scores: (P, M) predicted IoU, written as `scores` (the several-prompts answer); None: not written.

    The container is what `np.savez` writes (a zip of .npy members), but each member gets the compression
    that pays: the bool mask is deflated at zlib level 1 (it shrinks ~100x), the logits are stored (deflate
    would save ~10 % of them at twice the time). `bench/bench_masks.py` compares it with Roboflow inference's body,
    `np.savez` and `np.savez_compressed`; the README has the figures.
    """
    assert masks.ndim >= 3, f"masks must be (N, H, W) or (P, M, H, W), got {masks.shape}"
    assert low_res_masks.shape == (*masks.shape[:-2], *LOW_RES_SHAPE), (
        f"low_res_masks must be {(*masks.shape[:-2], *LOW_RES_SHAPE)}, got {low_res_masks.shape}"
    )
    assert scores is None or scores.shape == masks.shape[:-2], (
        f"scores shape {None if scores is None else scores.shape}"
    )
    masks_bool = np.asarray(masks) > 0 if np.issubdtype(masks.dtype, np.floating) else np.asarray(masks) != 0
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("masks.npy", _npy_bytes(masks_bool), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
        archive.writestr(
            "low_res_masks.npy",
            _npy_bytes(np.asarray(low_res_masks, dtype=np.float32)),
            compress_type=zipfile.ZIP_STORED,
        )
        if scores is not None:
            archive.writestr("scores.npy", _npy_bytes(np.asarray(scores, dtype=np.float32)))
    return stream.getvalue()


def npz_to_segment(data: bytes, *, field: str = "masks") -> tuple[np.ndarray, np.ndarray]:
    """A binary `segment_image` body back to (masks bool (N, H, W), low_res_masks float32 (N, 256, 256)).

    Reads ours and Roboflow inference's bodies (whose `masks` are float logits: thresholded at 0). For responses from
    a server the client chose to trust: np.load of an archive is not hardened like `decode_npy`.
    """
    masks, low_res_masks, _ = _read_segment_npz(data, ("masks", "low_res_masks"), field)
    return masks, low_res_masks


def npz_to_prompts(data: bytes, *, field: str = "masks") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A binary several-prompts answer back to (masks bool (P, M, H, W), low_res_masks float32
    (P, M, 256, 256), scores float32 (P, M))."""
    masks, low_res_masks, scores = _read_segment_npz(data, ("masks", "low_res_masks", "scores"), field)
    assert scores is not None, "scores is one of the members read"
    return masks, low_res_masks, scores


def _read_segment_npz(
    data: bytes, members: tuple[str, ...], field: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if not isinstance(data, bytes) or not data.startswith(b"PK"):
        raise InvalidInput("not a segment .npz (not a zip archive)", field=field)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            if set(archive.files) != set(members):
                raise InvalidInput(f"expected arrays {', '.join(members)}, got {archive.files}", field=field)
            arrays = {name: archive[name] for name in members}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InvalidInput(f"not a segment .npz: {exc}", field=field) from exc
    masks = arrays["masks"] if arrays["masks"].dtype == np.bool_ else arrays["masks"] > 0
    scores = arrays.get("scores")
    return (
        masks,
        arrays["low_res_masks"].astype(np.float32, copy=False),
        None if scores is None else scores.astype(np.float32, copy=False),
    )
