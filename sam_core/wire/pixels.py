"""Pixels of any image mode to (H, W, 3) uint8 RGB: alpha composited on black, 16-bit scaled by its container
range, 32-bit and float stretched, everything else converted by PIL.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sam_core.errors import UnsupportedImageFormat


def to_rgb_array(image: Image.Image, field: str) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image)
        if values.dtype.kind == "u" and values.dtype.itemsize == 2:
            # The container's range is known: scale by it (round(v / 257)), not by the content, so a
            # value maps to the same grey in every image and a dark image stays dark.
            scaled = (values.astype(np.uint32) * 255 + 32767) // 65535
            return _gray_to_rgb(scaled.astype(np.uint8))
        # 32-bit integer and float images have no meaningful container range: stretch their content.
        return _gray_to_rgb(_stretch_to_uint8(values))
    if mode in _ALPHA_MODES or _has_transparency(image):
        return _composite_on_black(np.asarray(image.convert("RGBA")))
    if mode != "RGB":
        try:
            image = image.convert("RGB")
        except ValueError as exc:  # e.g. LAB, HSV: modes PIL cannot convert to RGB
            raise UnsupportedImageFormat(f"image mode {mode} is not supported", field=field) from exc
    # A private, writable copy (PIL's array view is read-only; torch.from_numpy warns on those).
    return np.array(image, dtype=np.uint8, order="C", copy=True)


_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _has_transparency(image: Image.Image) -> bool:
    """A tRNS colour key (L, RGB, P) or a palette carrying alpha: both mean some pixels are see-through."""
    if "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Min..max of the finite values to 0..255; non-finite values become 0; a flat image becomes 0."""
    as_float = values.astype(np.float64)
    finite = np.isfinite(as_float)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    low = float(as_float[finite].min())
    high = float(as_float[finite].max())
    span = high - low if high > low else 1.0
    scaled = np.where(finite, (as_float - low) * (255.0 / span), 0.0)
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """Premultiply colour by alpha: transparent areas become black, whatever colour they stored."""
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    rgb = (rgba[:, :, :3].astype(np.uint16) * alpha + 127) // 255
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return _gray_to_rgb(array)
    if array.shape[2] == 4:
        return _composite_on_black(array)
    # Always a private copy: the caller's array (or the request's buffer) may change after we return.
    return np.array(array, dtype=np.uint8, order="C", copy=True)
