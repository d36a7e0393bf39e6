"""The SAM variants we know, in one table: each one's image-encoder shape and its official checkpoint file.

The prompt encoder and mask decoder are the same for every variant, so a decoder's cost does not depend on the
model type. Meta publishes no hashes: the sizes and sha256 values come from third-party model tables (the
vit_b size also from a download log) and could not be confirmed from here. The only first-party check is the
file name's suffix, the first 6 hex digits of the file's MD5, so verification against these values checks it
too and says which check failed. A sha256 the user supplies overrides the values below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sam_core.errors import UnknownModel

_OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_MD5_SUFFIX_RE = re.compile(r"_([0-9a-f]{6})\.pth$")


@dataclass(frozen=True)
class CheckpointInfo:
    """One official checkpoint file; `size_bytes` or `sha256` is None when unknown (that check is skipped)."""

    model_type: str
    filename: str
    url: str
    size_bytes: int | None
    sha256: str | None

    @property
    def md5_prefix(self) -> str | None:
        """The first 6 hex digits of the file's MD5, which Meta puts in the file name (`sam_vit_b_01ec64`)."""
        match = _MD5_SUFFIX_RE.search(self.filename)
        return match.group(1) if match else None


@dataclass(frozen=True)
class ModelVariant:
    """One SAM variant: the image-encoder hyper-parameters that tell variants apart, and its official file."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    checkpoint: CheckpointInfo | None = None
    """Meta's published checkpoint; None for our own test variant (its checkpoints are made locally)."""

    @property
    def official(self) -> bool:
        """True when Meta publishes a checkpoint for it."""
        return self.checkpoint is not None


def _official(model_type: str, filename: str, size_bytes: int, sha256: str) -> CheckpointInfo:
    return CheckpointInfo(model_type, filename, _OFFICIAL_BASE_URL + filename, size_bytes, sha256)


MODEL_REGISTRY: dict[str, ModelVariant] = {
    # The three official variants, with segment-anything's own hyper-parameters (build_sam.py).
    "vit_h": ModelVariant(
        1280, 32, 16, (7, 15, 23, 31),
        _official("vit_h", "sam_vit_h_4b8939.pth", 2_564_550_879,
                  "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    ),
    "vit_l": ModelVariant(
        1024, 24, 16, (5, 11, 17, 23),
        _official("vit_l", "sam_vit_l_0b3195.pth", 1_249_524_607,
                  "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    ),
    "vit_b": ModelVariant(
        768, 12, 12, (2, 5, 8, 11),
        _official("vit_b", "sam_vit_b_01ec64.pth", 375_042_383,
                  "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    ),
    # A small image encoder in front of the real prompt encoder and mask decoder: for offline runs and tests,
    # where no official weights can be had. Its checkpoints come from `make_random_checkpoint`.
    "vit_tiny": ModelVariant(64, 2, 2, (1,)),
}  # fmt: skip

OFFICIAL_CHECKPOINTS: dict[str, CheckpointInfo] = {
    model_type: variant.checkpoint for model_type, variant in MODEL_REGISTRY.items() if variant.checkpoint
}
"""The official files by model type (a view of `MODEL_REGISTRY`)."""

OFFICIAL_BY_FILENAME: dict[str, CheckpointInfo] = {info.filename: info for info in OFFICIAL_CHECKPOINTS.values()}


def architecture(model_type: str) -> ModelVariant:
    """The registry entry for `model_type`, or UnknownModel naming the known types."""
    try:
        return MODEL_REGISTRY[model_type]
    except KeyError:
        known = ", ".join(sorted(MODEL_REGISTRY))
        raise UnknownModel(f"unknown model type {model_type!r}; known: {known}", field="model_type") from None
