"""The values the encoder takes and produces: an image in its input frame, and one image's embedding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam_core.frames import EMBEDDING_SHAPE


@dataclass(frozen=True)
class ImageEmbedding:
    """One image's SAM embedding.

    Attributes:
        embedding: float32 array of shape (1, 256, 64, 64).
        original_size: (height, width) of the original image in pixels; point prompts are in this frame.
        input_size: (height, width) of the image after resizing its longest side to 1024 (before padding).
    """

    embedding: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    def __post_init__(self) -> None:
        assert self.embedding.shape == EMBEDDING_SHAPE, f"embedding shape {self.embedding.shape}"
        assert len(self.original_size) == 2 and len(self.input_size) == 2, "sizes are (h, w)"


@dataclass(frozen=True)
class EncoderInput:
    """An image ready for the encoder, resized where it was decoded (`sam_core.images.encoder_input`).

    Attributes:
        pixels: (h, w, 3) uint8 RGB in the 1024 input frame: the original image resized so its longest side is
            1024, as `SamPredictor.set_image` resizes it (not yet padded); ~3 MB instead of the original's
            tens of MB, which is what travels to the encoder.
        original_size: (height, width) of the original image in pixels; point prompts are in that frame.
    """

    pixels: np.ndarray
    original_size: tuple[int, int]
