"""The value the encoder produces and the decoder consumes: one image's embedding and its frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMBEDDING_SHAPE = (1, 256, 64, 64)
"""SAM's image embedding for one image: 256 channels on a 64x64 grid (the 1024 input frame / 16)."""


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
