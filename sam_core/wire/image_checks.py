"""The size limits a client image is held to, checked on bytes, headers and claimed sizes before any decode."""

from __future__ import annotations

from sam_core.errors import ImageDecodeError, ImageTooLarge, InvalidInput
from sam_core.settings import ImageLimits


def check_byte_count(count: int, limits: ImageLimits, field: str) -> None:
    if count > limits.max_bytes:
        raise ImageTooLarge(f"the image is over {limits.max_bytes} bytes (max_bytes)", field=field)


def check_image_size(size: tuple[int, int], limits: ImageLimits, *, field: str) -> None:
    """Refuse an image size (height, width) outside `limits` (ImageTooLarge, 413), e.g. a client's `orig_im_size`.

    The decoder upsamples its masks to this size, so no size that an image could not have is ever decoded.
    """
    height, width = size
    if height <= 0 or width <= 0:
        raise InvalidInput(f"must be two positive integers [height, width], got [{height}, {width}]", field=field)
    check_dimensions(width, height, limits, field)


def check_dimensions(width: int, height: int, limits: ImageLimits, field: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"the image has no pixels ({width}x{height})", field=field)
    if max(width, height) > limits.max_side:
        raise ImageTooLarge(
            f"the image is {width}x{height}; its longest side may be at most {limits.max_side} pixels",
            field=field,
        )
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels, over max_pixels={limits.max_pixels}",
            field=field,
        )
