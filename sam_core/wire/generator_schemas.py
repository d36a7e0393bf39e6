"""POST /sam/segment_everything: the request (`SamAutomaticMaskGenerator`'s parameters, range-checked), the
answer and the decoder job (pydantic only: the light client reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from sam_core.embedding import ImageEmbedding
from sam_core.generator_options import EverythingOptions
from sam_core.wire.schemas import _RoboflowFields

EVERYTHING_ROUTE = "/sam/segment_everything"

_DEFAULTS = EverythingOptions()
_Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class SegmentEverythingRequest(_RoboflowFields):
    """Every object in an image: a grid of point prompts, filtered and de-duplicated as
    `SamAutomaticMaskGenerator` does, with its parameters and defaults. The image comes as `image` or as the
    `image_id` of a cached embedding (crop layers need the image unless their crops are cached too)."""

    points_per_side: int = Field(default=_DEFAULTS.points_per_side, ge=1, le=128, description="grid points per side")
    points_per_batch: int = Field(
        default=_DEFAULTS.points_per_batch, ge=1, le=1024, description="points decoded between progress checks"
    )
    pred_iou_thresh: _Fraction = Field(
        default=_DEFAULTS.pred_iou_thresh, description="keep masks whose predicted IoU is above this (0: no filter)"
    )
    stability_score_thresh: _Fraction = Field(
        default=_DEFAULTS.stability_score_thresh, description="keep masks at least this stable (0: no filter)"
    )
    stability_score_offset: float = Field(
        default=_DEFAULTS.stability_score_offset, ge=0.0, le=100.0, allow_inf_nan=False,
        description="logit offset of the stability score's two thresholds",
    )  # fmt: skip
    box_nms_thresh: _Fraction = Field(default=_DEFAULTS.box_nms_thresh, description="box IoU of duplicates in a crop")
    crop_n_layers: int = Field(default=_DEFAULTS.crop_n_layers, ge=0, le=2, description="layers of image crops")
    crop_nms_thresh: _Fraction = Field(
        default=_DEFAULTS.crop_nms_thresh, description="box IoU of duplicates across crops"
    )
    crop_overlap_ratio: float = Field(
        default=_DEFAULTS.crop_overlap_ratio, ge=0.0, lt=1.0, allow_inf_nan=False,
        description="overlap of neighbouring crops, as a share of the crop side",
    )  # fmt: skip
    crop_n_points_downscale_factor: int = Field(
        default=_DEFAULTS.crop_n_points_downscale_factor, ge=1, le=16,
        description="points per side of crop layer n: points_per_side / factor^n",
    )  # fmt: skip
    min_mask_region_area: int = Field(
        default=_DEFAULTS.min_mask_region_area, ge=0, le=100_000_000,
        description="remove islands and fill holes smaller than this many pixels (0: off)",
    )  # fmt: skip
    format: Literal["rle", "json", "png"] = Field(
        default="rle", description="segmentation as COCO RLE (default), json polygon (largest outline), base64 PNG"
    )

    def options(self) -> EverythingOptions:
        return EverythingOptions(**{name: getattr(self, name) for name in _DEFAULTS.as_kwargs()})


class EverythingMask(BaseModel):
    """One mask of the answer, as `SamAutomaticMaskGenerator` records it (boxes XYWH, original pixels)."""

    segmentation: Any = Field(description="COCO RLE {size, counts}, polygon [[x, y], ...] or base64 PNG")
    bbox: list[float] = Field(description="[x, y, w, h] of the mask")
    area: int = Field(description="pixels in the mask")
    predicted_iou: float
    stability_score: float
    point_coords: list[list[float]] = Field(description="the grid point that prompted it, [[x, y]]")
    crop_box: list[float] = Field(description="[x, y, w, h] of the crop it came from")


class SegmentEverythingResponse(BaseModel):
    image_id: str | None = None
    masks: list[EverythingMask]
    time: float


@dataclass
class EverythingJob:
    """What the ingress asks a decoder replica: the generator's options and one embedding per crop, inline
    (`embeddings`, a None where the cache holds it) or read from the cache under `crop_keys`."""

    crop_keys: list[str]
    options: EverythingOptions
    format: str = "rle"
    embeddings: list[ImageEmbedding | None] = field(default_factory=list)


def crop_cache_key(image_key: str, box: tuple[int, int, int, int], original_size: tuple[int, int]) -> str:
    """The cache entry of a crop's embedding: the image's own for the whole image, else the image's key and
    the crop box."""
    height, width = original_size
    return image_key if box == (0, 0, width, height) else f"{image_key}#crop={','.join(map(str, box))}"
