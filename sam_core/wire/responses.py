"""Decoder answers for the wire: masks as polygons (json), COCO RLE, base64 PNG, or Roboflow's npz (binary)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from sam_core.errors import InvalidInput
from sam_core.wire.masks import encode_png, encode_rle, mask_to_polygon
from sam_core.wire.npy import segment_to_npz


def encode_masks(
    masks: np.ndarray, low_res_logits: np.ndarray, iou_scores: np.ndarray, fmt: str
) -> tuple[dict[str, Any] | bytes, str]:
    """Encode a decoder's (M, H, W) bool masks, (M, 256, 256) low-res logits and (M,) scores for the wire:
    (JSON-ready dict or bytes, media type).

    json: the largest external contour of each mask (original pixels) and of each low-res mask (256 frame);
    rle: COCO RLE of each; png: base64 1-bit PNGs; binary: Roboflow inference's npz with bool masks (M, H, W) and
    float32 low_res_masks logits (M, 256, 256).
    """
    low_res = low_res_logits > 0.0
    scores = [float(s) for s in iou_scores]
    if fmt == "binary":
        return segment_to_npz(masks, low_res_logits.astype(np.float32)), "application/octet-stream"
    encoded: tuple[list[Any], list[Any]]
    if fmt == "json":
        encoded = [mask_to_polygon(m) for m in masks], [mask_to_polygon(m) for m in low_res]
    elif fmt == "rle":
        encoded = [encode_rle(m) for m in masks], [encode_rle(m) for m in low_res]
    elif fmt == "png":
        encoded = (
            [base64.b64encode(encode_png(m)).decode("ascii") for m in masks],
            [base64.b64encode(encode_png(m)).decode("ascii") for m in low_res],
        )
    else:
        raise InvalidInput(f"unknown format {fmt!r}: use json, binary, rle or png", field="format")
    return {"masks": encoded[0], "low_res_masks": encoded[1], "scores": scores}, "application/json"
