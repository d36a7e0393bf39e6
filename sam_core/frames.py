"""SAM's frames and shapes, each defined once: the 1024 input frame, the embedding, the 256 low-res frame.

Three pixel frames meet in this package. The **original image** (H, W): what clients send, click on and get
masks in. The **1024 input frame**: the image resized so its longest side is 1024 (then padded to 1024x1024)
before the encoder. The **256x256 low-res frame** (the input frame / 4): `low_res_masks` and every
`mask_input`. Nothing here imports anything of ours.
"""

from __future__ import annotations

from typing import Final

INPUT_SIZE: Final = 1024
"""Longest side of SAM's input frame (the image encoder's padded input is INPUT_SIZE x INPUT_SIZE)."""

EMBEDDING_SHAPE: Final = (1, 256, 64, 64)
"""SAM's image embedding for one image: 256 channels on a 64x64 grid (the 1024 input frame / 16)."""

LOW_RES_SHAPE: Final = (256, 256)
"""The low-res frame (height, width): one `low_res_masks` mask, one `mask_input`."""

MASK_INPUT_SHAPE: Final = (1, 1, *LOW_RES_SHAPE)
"""The decoder's `mask_input` and the cached low-res logits: one low-res mask for a batch of one."""


def preprocess_shape(original_size: tuple[int, int], long_side: int = INPUT_SIZE) -> tuple[int, int]:
    """(h, w) of an image of `original_size` (h, w) once its longest side is resized to `long_side`."""
    old_h, old_w = original_size
    scale = long_side * 1.0 / max(old_h, old_w)
    return int(old_h * scale + 0.5), int(old_w * scale + 0.5)
