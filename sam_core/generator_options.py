"""The automatic mask generator's parameters: read by the model (which runs it) and the wire (which checks a
request's), so they live on the floor."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EverythingOptions:
    """`SamAutomaticMaskGenerator`'s parameters and its defaults (ViT-H's), range-checked by the request."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def as_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def points_per_side_at(self, layer: int) -> int:
        """Grid points per side of crop layer `layer`, as the generator computes them."""
        return int(self.points_per_side / self.crop_n_points_downscale_factor**layer)

    def deepest_points_per_side(self) -> int:
        return self.points_per_side_at(self.crop_n_layers)

    def no_points_reason(self) -> str:
        return (
            f"points_per_side {self.points_per_side} / {self.crop_n_points_downscale_factor}^{self.crop_n_layers} "
            f"leaves crop layer {self.crop_n_layers} without points"
        )
