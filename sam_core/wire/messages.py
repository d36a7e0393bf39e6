"""Messages between the service's processes and to handle callers, never JSON: numpy travels as is (decoder
jobs, and the answers of the ingress's calls before HTTP encodes them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam_core.embedding import EncoderInput, ImageEmbedding
from sam_core.wire.schemas import EmbedImageResponse


@dataclass
class JobPrompt:
    """One prompt of a job with several: as the request gave it, its mask input decoded (or None)."""

    point_coords: list[list[float]]
    point_labels: list[float]
    box: list[float] | None = None
    mask_input: np.ndarray | None = None


@dataclass
class SegmentJob:
    """What the ingress asks a decoder replica to do for one prompt.

    Either `embedding` is given inline (a client-supplied one, or fresh from the encoder), or the decoder
    reads it from the cache under `cache_key`. The prompt is validated by the decoder, which knows the image
    size.
    """

    cache_key: str | None
    point_coords: list[list[float]]
    point_labels: list[float]
    box: list[float] | None = None
    embedding: ImageEmbedding | None = None
    has_mask_input: bool = False
    mask_input: np.ndarray | None = None
    use_mask_input_cache: bool = True
    multimask_output: bool = False
    format: str = "json"
    prompts: list[JobPrompt] | None = None
    """Several prompts, answered in order (then the single-prompt fields above are unused)."""
    logits_key: str | None = None
    """Where the low-res logits of this image are the requester's own (its tenant's); None: under `cache_key`."""
    content_id: str = ""
    """When set, a cached embedding is used only if it is of this image (`ImageEmbedding.content_id`): a
    request that waited for another replica's run of its image must not decode another image put under the
    same image_id meanwhile."""

    @property
    def logits_id(self) -> str | None:
        """Where the job's low-res logits live: the requester's own key, else the embedding's."""
        return self.logits_key or self.cache_key


@dataclass
class EmbedResult:
    """What `embed` returns to handle callers: the response (json and metadata formats: no `embeddings` list;
    the array is `embedding`), and the .npy bytes when the format is binary."""

    response: EmbedImageResponse
    embedding: np.ndarray
    """The float32 (1, 256, 64, 64) embedding, as the cache holds it."""
    npy: bytes | None = None


@dataclass(frozen=True)
class WarmImage:
    """An image `sam-serve warm`'s Ray Data workers decoded and resized themselves, for the ingress's `warm`: the
    CPU work of a new image done on the job's nodes, not on the ingress's one image thread.

    `pixels.content_id` is the `sha256:` hash of the file's bytes, which keys it as `embed` would key those bytes.
    The ingress checks the frame, not that the pixels are those bytes' (that is the decode it is spared): a handle
    is the cluster's own, and whoever can call one can write to the cache directly.

    Attributes:
        pixels: the image in the encoder's input frame, with its original size and content id.
        model: the served model to warm for (its id or type); None for the default.
    """

    pixels: EncoderInput
    model: str | None = None


@dataclass(frozen=True)
class WarmResult:
    """What `warm` returns to handle callers (`sam-serve warm`): the image's cache key and whether it was cached
    already (then nothing ran)."""

    image_id: str
    cached: bool


@dataclass
class SegmentResult:
    """A decoder's answer, already encoded: `body` is JSON-ready (dict) or raw bytes with `media_type`."""

    body: dict[str, Any] | bytes
    media_type: str = "application/json"
    timings: dict[str, float] = field(default_factory=dict)
    replica: str | None = None
    """Which decoder replica answered (for logs, headers and tests)."""
