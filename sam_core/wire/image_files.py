"""Encoded image files (PNG, JPEG, ...) into RGB uint8 pixels under `ImageLimits`: the header is checked before
any pixel is decoded, only the accepted formats' plugins parse the bytes, and every refusal names the field."""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from sam_core.errors import ImageDecodeError, ImageTooLarge, InvalidInput, UnsupportedImageFormat, describe
from sam_core.settings import ImageLimits
from sam_core.wire.image_checks import check_byte_count, check_dimensions
from sam_core.wire.pixels import to_rgb_array

NPY_FORMAT = "NPY"
"""`LoadedImage.format` of an image that arrived as a numpy array rather than an encoded file."""


@dataclass(frozen=True)
class LoadedImage:
    """One decoded client image.

    Attributes:
        pixels: (H, W, 3) uint8 array, RGB, C-contiguous, in the original image frame (EXIF orientation
            already applied, so H and W are what a viewer shows and point prompts refer to).
        content_sha256: hex sha256 of the encoded bytes as received (after base64 decoding), the key for
            content-hash caching when the client sends no image id.
        format: PIL format name ("PNG", "JPEG", ...) or "NPY" for numpy payloads.
    """

    pixels: np.ndarray
    content_sha256: str
    format: str

    def __post_init__(self) -> None:
        assert self.pixels.ndim == 3, f"pixels shape {self.pixels.shape}"
        assert self.pixels.shape[2] == 3, f"pixels shape {self.pixels.shape}"
        assert self.pixels.dtype == np.uint8, f"pixels dtype {self.pixels.dtype}"

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels: the original frame's size, as `orig_im_size` expects it."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def decode_image_bytes(data: bytes, limits: ImageLimits, *, field: str = "image.value") -> LoadedImage:
    """Decode an encoded image (PNG, JPEG, ...) into RGB pixels, refusing anything outside `limits`.

    Conversions to RGB: alpha (RGBA, LA, PA, transparent palettes) is composited on black; 16-bit
    integer images (I;16*) are scaled by their container range (v / 257, so 65535 -> 255); 32-bit integer
    (I) and float (F) images, whose range is unknown, are stretched min..max to 0..255; CMYK, YCbCr, 1, L
    and P convert through PIL (embedded ICC profiles are ignored). Animated images give their first frame.
    """
    check_byte_count(len(data), limits, field)
    if not data:
        raise ImageDecodeError("the image is empty (0 bytes)", field=field)
    try:
        with _open_header(data, limits, field) as image:
            check_dimensions(image.width, image.height, limits, field)
            image_format = image.format or "unknown"
            # Image.open is lazy: load() inside the try is what turns truncation and corruption into our
            # error instead of an OSError somewhere downstream.
            image.load()
            _apply_exif_orientation(image)
            pixels = to_rgb_array(image, field)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's own bomb guard (global MAX_IMAGE_PIXELS) can fire before our header check when the
        # configured max_pixels is above it; the warning arrives as an exception only under -W error.
        raise ImageTooLarge(f"image refused as a decompression bomb: {exc}", field=field) from exc
    except InvalidInput:
        raise
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, struct.error, ... on bad data
        raise ImageDecodeError(f"the image could not be decoded ({describe(exc)})", field=field) from exc
    return LoadedImage(pixels=pixels, content_sha256=sha256_hex(data), format=image_format)


def _open_header(data: bytes, limits: ImageLimits, field: str) -> Image.Image:
    """Open lazily (header only) with only the accepted format plugins tried, so others never parse it."""
    accepted = _accepted_formats(limits)
    try:
        return Image.open(io.BytesIO(data), formats=accepted)
    except Image.UnidentifiedImageError:
        pass
    # Not an accepted format: name the real one when PIL knows it, for a useful 415 instead of a 400.
    detected = _identify_format(data)
    if detected is not None:
        raise UnsupportedImageFormat(
            f"{detected} images are not accepted; send one of {', '.join(limits.formats)}", field=field
        )
    raise ImageDecodeError("the bytes are not a recognisable image", field=field)


def _accepted_formats(limits: ImageLimits) -> tuple[str, ...]:
    # Image.open raises KeyError for a format name with no plugin installed (e.g. HEIF without
    # pillow-heif): a configured but unavailable format is simply not accepted.
    Image.init()
    return tuple(name.upper() for name in limits.formats if name.upper() in Image.OPEN)


def _identify_format(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format
    except Exception:  # noqa: BLE001 (any failure here just means "not a format PIL can name")
        return None


def _apply_exif_orientation(image: Image.Image) -> None:
    """Rotate/flip as the EXIF Orientation tag says, so pixels match what viewers (and clicks) show."""
    # A corrupt EXIF block should not cost the user the whole image: keep it as stored.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
