"""The values the encoder takes and produces (an image in its input frame, one image's embedding) and the
precision every embedding is held at, whichever path it takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from sam_core.frames import EMBEDDING_SHAPE


@dataclass(frozen=True)
class ImageEmbedding:
    """One image's SAM embedding.

    Attributes:
        embedding: float32 array of shape (1, 256, 64, 64).
        original_size: (height, width) of the original image in pixels; point prompts are in this frame.
        input_size: (height, width) of the image after resizing its longest side to 1024 (before padding).
        content_id: `sha256:` and the hash of the image bytes it was computed from ("" when unknown): under
            one image_id, whoever waits for a run checks it is of the image it holds.
    """

    embedding: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    content_id: str = ""

    def __post_init__(self) -> None:
        assert self.embedding.shape == EMBEDDING_SHAPE, f"embedding shape {self.embedding.shape}"
        assert len(self.original_size) == 2, "sizes are (h, w)"
        assert len(self.input_size) == 2, "sizes are (h, w)"


@dataclass(frozen=True)
class EncoderInput:
    """An image ready for the encoder, resized where it was decoded (`sam_core.wire.images.encoder_input`).

    Attributes:
        pixels: (h, w, 3) uint8 RGB in the 1024 input frame: the original image resized so its longest side is
            1024, as `SamPredictor.set_image` resizes it (not yet padded); ~3 MB instead of the original's
            tens of MB, which is what travels to the encoder.
        original_size: (height, width) of the original image in pixels; point prompts are in that frame.
        content_id: the hash of the image bytes as sent (`ImageEmbedding.content_id`); "" when unknown.
    """

    pixels: np.ndarray
    original_size: tuple[int, int]
    content_id: str = ""


def same_content(found: str, wanted: str) -> bool:
    """Whether an embedding whose `content_id` is `found` serves a request for the image `wanted` ("" on either
    side is unknown, which matches any)."""
    return not found or not wanted or found == wanted


STORED_DTYPE: Final = np.dtype("<f2")
"""How the cache stores embeddings and logits: float16, explicit little-endian (the bytes mean the same on
every host)."""

_FP16_MAX: Final = float(np.finfo(np.float16).max)  # 65504


def to_storage(array: np.ndarray) -> np.ndarray:
    """`array` as the cache stores it: float16, clipped first (a float32 beyond +-65504 would become inf)."""
    return np.ascontiguousarray(np.clip(array, -_FP16_MAX, _FP16_MAX), dtype=STORED_DTYPE)


def round_to_storage(array: np.ndarray) -> np.ndarray:
    """The float32 values the cache gives back for `array`: clipped to +-65504 and rounded through float16.

    Every path that hands an embedding to a decoder (fresh from the encoder, from the cache, a replica's local
    copy, a client's) decodes these values, so the same request gets the same answer whichever path served it.
    Idempotent: values already rounded come back unchanged.
    """
    return to_storage(array).astype(np.float32)
