"""Client images in, RGB uint8 arrays out: base64, URL and .npy payloads read, hashed and decoded under
`ImageLimits` (encoded files by `sam_core.wire.image_files`).

Every check that can run before pixels are decoded does (bytes, format, header size), so a hostile payload
costs a header parse, not gigabytes; every refusal is a typed error naming the request field at fault.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sam_core.embedding import EncoderInput
from sam_core.errors import ImageTooLarge, InvalidInput, URLInputRefused
from sam_core.frames import preprocess_shape
from sam_core.settings import ImageLimits
from sam_core.wire.image_checks import check_byte_count, check_dimensions, check_image_size
from sam_core.wire.image_files import NPY_FORMAT, LoadedImage, decode_image_bytes, sha256_hex
from sam_core.wire.image_ids import is_content_hash
from sam_core.wire.npy import decode_npy
from sam_core.wire.pixels import array_to_rgb
from sam_core.wire.url_fetch import fetch_url_bytes

__all__ = [
    "EncodedImage",
    "LoadedImage",
    "check_encoder_input",
    "decode_base64_image",
    "decode_image",
    "decode_image_bytes",
    "decode_numpy_payload",
    "encoder_input",
    "fetch_image_url",
    "fetch_url_bytes",
    "load_image",
    "read_image",
    "resize_to_input_frame",
]

_DATA_URL_PREFIX = "data:"


# ---- base64 ---------------------------------------------------------------------------------------------


def decode_base64_image(value: str, limits: ImageLimits, *, field: str = "image.value") -> LoadedImage:
    """Decode a base64 image, optionally as a `data:image/...;base64,` URL; whitespace is tolerated."""
    return decode_image_bytes(_decode_base64(value, limits, field), limits, field=field)


def _decode_base64(value: str, limits: ImageLimits, field: str) -> bytes:
    # Refuse an obviously oversized string before copying it: base64 is 4/3 of the bytes, plus line
    # breaks (at worst CRLF every 64 characters) and a data-URL prefix.
    encoded_max = 4 * -(-limits.max_bytes // 3)
    if len(value) > encoded_max + encoded_max // 32 + 1024:
        raise ImageTooLarge(
            f"the base64 string is {len(value)} characters, more than max_bytes={limits.max_bytes} allows",
            field=field,
        )
    payload = value.strip()
    if payload[: len(_DATA_URL_PREFIX)].lower() == _DATA_URL_PREFIX:
        header, comma, payload = payload.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise InvalidInput("a data URL must look like data:image/<type>;base64,<data>", field=field)
    compact = "".join(payload.split())
    if not compact:
        raise InvalidInput("the base64 string is empty", field=field)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters
        raise InvalidInput(f"not valid base64 ({exc})", field=field) from exc
    check_byte_count(len(raw), limits, field)
    return raw


# ---- numpy ----------------------------------------------------------------------------------------------


def decode_numpy_payload(value: str, limits: ImageLimits, *, field: str = "image.value") -> LoadedImage:
    """Decode base64 of an `np.save`d uint8 array: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA.

    The .npy header is parsed and checked (dtype, shape, pixel limits) before any array data is read, and
    the data is read as raw uint8: a pickled payload or an object array is refused and never unpickled.
    Channels are taken as RGB; a 4th channel is alpha, composited on black.
    """
    raw = _decode_base64(value, limits, field)
    return LoadedImage(pixels=_npy_pixels(raw, limits, field), content_sha256=sha256_hex(raw), format=NPY_FORMAT)


def _npy_pixels(raw: bytes, limits: ImageLimits, field: str) -> np.ndarray:
    """The RGB pixels of `np.save` bytes of a uint8 image array, checked header-first by the one .npy reader."""
    array = decode_npy(
        raw,
        field=field,
        expected_shape=None,
        dtypes=(np.uint8,),
        check_shape=lambda shape: _check_array_shape(shape, limits, field),
    )
    return array_to_rgb(array)


def _read_array(array: np.ndarray, limits: ImageLimits, field: str) -> EncodedImage:
    """An in-process uint8 array (a DeploymentHandle call, no JSON), checked by the rules of
    `decode_numpy_payload`; hashed as `np.save` of the C-ordered array, so it matches the same array sent
    as a base64 .npy payload over HTTP."""
    if array.dtype != np.uint8:
        raise InvalidInput(f"the array's dtype is {array.dtype}; send uint8", field=field)
    _check_array_shape(array.shape, limits, field)
    contiguous = np.ascontiguousarray(array)
    encoded = io.BytesIO()
    np.save(encoded, contiguous, allow_pickle=False)
    return EncodedImage(
        data=b"", content_sha256=sha256_hex(encoded.getvalue()), kind=NPY_FORMAT, field=field, array=contiguous
    )


def _check_array_shape(shape: tuple[int, ...], limits: ImageLimits, field: str) -> None:
    if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (3, 4))):
        raise InvalidInput(f"the array's shape is {shape}; send (H, W), (H, W, 3) or (H, W, 4)", field=field)
    height, width = shape[0], shape[1]
    check_dimensions(width, height, limits, field)


# ---- URL ------------------------------------------------------------------------------------------------


def fetch_image_url(url: str, limits: ImageLimits, *, field: str = "image.value") -> LoadedImage:
    """Fetch an http(s) image URL and decode it (see `fetch_url_bytes`)."""
    return decode_image_bytes(fetch_url_bytes(url, limits, field=field), limits, field=field)


# ---- dispatch -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedImage:
    """A client image as received, before any pixel is decoded: what its content hash is taken of.

    Attributes:
        data: the encoded file (PNG, JPEG, ...) or the `np.save` bytes, after base64 decoding or download.
        content_sha256: hex sha256 of `data` (for an in-process array: of its `np.save` bytes).
        kind: "FILE" for an encoded image file, "NPY" for a numpy payload.
        field: the request field its errors name.
        array: an in-process uint8 array (a handle call), already checked; `data` is then empty.
    """

    data: bytes
    content_sha256: str
    kind: str
    field: str
    array: np.ndarray | None = None

    @property
    def content_id(self) -> str:
        """The image id it is cached under when the client names none: `sha256:` and its content hash."""
        return "sha256:" + self.content_sha256


FILE_KIND = "FILE"


def read_image(kind: str, value: object, limits: ImageLimits, *, field: str = "image") -> EncodedImage:
    """The bytes of the request's `image = {"type": kind, "value": value}` and their hash, without decoding.

    Cheap next to a decode (base64 and sha256 run at hundreds of MB/s), so a repeat image is found in the
    cache by its hash before any pixel is decoded. Kinds: "base64" (str), "url" (str: fetched here, when
    enabled), "numpy" (str: base64 of an .npy; or an np.ndarray from an in-process handle call). "file" is
    refused (no server paths are read); "pil" and "multipart" are not supported over this API. Errors name
    `<field>.type` or `<field>.value`.
    """
    type_field, value_field = f"{field}.type", f"{field}.value"
    if kind == "file":
        raise URLInputRefused("reading server files is not allowed; send the image as base64", field=type_field)
    if kind in ("pil", "multipart"):
        raise InvalidInput(
            f"image type {kind!r} is not supported over this API; use base64, url or numpy", field=type_field
        )
    if kind == "numpy" and isinstance(value, np.ndarray):
        return _read_array(value, limits, value_field)
    if not isinstance(kind, str) or kind not in ("base64", "url", "numpy"):
        raise InvalidInput(f"unknown image type {kind!r}; use base64, url or numpy", field=type_field)
    if not isinstance(value, str):
        raise InvalidInput(
            f"an image of type {kind!r} needs a string value, got {type(value).__name__}", field=value_field
        )
    if kind == "url":
        return encoded_file(fetch_url_bytes(value, limits, field=value_field), value_field)
    data = _decode_base64(value, limits, value_field)
    return EncodedImage(
        data=data, content_sha256=sha256_hex(data), kind=NPY_FORMAT if kind == "numpy" else FILE_KIND, field=value_field
    )


def encoded_file(data: bytes, field: str) -> EncodedImage:
    """An image file's bytes as fetched (a URL's body) and their hash, not yet decoded."""
    return EncodedImage(data=data, content_sha256=sha256_hex(data), kind=FILE_KIND, field=field)


def decode_image(encoded: EncodedImage, limits: ImageLimits) -> LoadedImage:
    """The pixels of an image `read_image` returned, under `limits` (the CPU-heavy half of loading)."""
    if encoded.array is not None:
        pixels = array_to_rgb(encoded.array)
        return LoadedImage(pixels=pixels, content_sha256=encoded.content_sha256, format=NPY_FORMAT)
    if encoded.kind == NPY_FORMAT:
        pixels = _npy_pixels(encoded.data, limits, encoded.field)
        return LoadedImage(pixels=pixels, content_sha256=encoded.content_sha256, format=NPY_FORMAT)
    return decode_image_bytes(encoded.data, limits, field=encoded.field)


def resize_to_input_frame(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels resized so the longest side is 1024: SAM's input frame, before padding.

    Exactly what `SamPredictor.set_image` does (`ResizeLongestSide.apply_image`: torchvision's resize of a PIL
    image, which is PIL's bilinear resize, antialiased, to `preprocess_shape`), without torch.
    """
    height, width = preprocess_shape((int(pixels.shape[0]), int(pixels.shape[1])))
    if (height, width) == pixels.shape[:2]:
        return pixels
    return np.array(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))


def encoder_input(encoded: EncodedImage, limits: ImageLimits) -> EncoderInput:
    """Decode an image and resize it to the encoder's input frame: the CPU-heavy work of a new image, done
    where it arrives so that only the ~3 MB resized pixels travel on to the encoder."""
    image = decode_image(encoded, limits)
    return EncoderInput(
        pixels=resize_to_input_frame(image.pixels), original_size=image.size, content_id=encoded.content_id
    )


def check_encoder_input(image: EncoderInput, limits: ImageLimits, *, field: str = "pixels") -> EncoderInput:
    """An `EncoderInput` a handle caller prepared itself (`sam-serve warm`'s workers): a `sha256:` content id,
    an original size within `limits`, and (h, w, 3) uint8 pixels in that size's input frame; InvalidInput otherwise."""
    pixels, content_id = image.pixels, image.content_id
    if not is_content_hash(content_id):
        raise InvalidInput("must be the sha256: hash of the image file's bytes", field=f"{field}.content_id")
    check_image_size(tuple(image.original_size), limits, field=f"{field}.original_size")  # type: ignore[arg-type]
    frame = preprocess_shape(image.original_size)
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.shape != (*frame, 3):
        got = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise InvalidInput(f"must be uint8 RGB of shape {(*frame, 3)} (the input frame), got {got}", field=field)
    return image


def load_image(kind: str, value: object, limits: ImageLimits, *, field: str = "image") -> LoadedImage:
    """`read_image` then `decode_image`: the request's image as RGB pixels."""
    return decode_image(read_image(kind, value, limits, field=field), limits)


def crop_encoder_inputs(
    encoded: EncodedImage, limits: ImageLimits, boxes: list[tuple[int, int, int, int]]
) -> list[EncoderInput]:
    """Each crop (x0, y0, x1, y1) of an image, resized to the encoder's input frame: the image is decoded once."""
    pixels = decode_image(encoded, limits).pixels
    return [
        EncoderInput(
            pixels=resize_to_input_frame(np.ascontiguousarray(pixels[y0:y1, x0:x1])), original_size=(y1 - y0, x1 - x0)
        )
        for x0, y0, x1, y1 in boxes
    ]
