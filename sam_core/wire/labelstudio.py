"""Label Studio's ML-backend wire format: its labelling config, its interactive context (percent coordinates) and
its regions (BrushLabels in its own RLE, or PolygonLabels in percent), converted to and from our prompts and masks.

Frames: Label Studio gives `x`, `y`, `width`, `height` in percent (0-100) of the original image, whose size each
context item names (`original_width`, `original_height`); our prompts are in original-image pixels.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam_core.errors import InvalidInput
from sam_core.wire.masks import mask_to_polygon

MAX_CONFIG_BYTES = 256 * 1024
MAX_CONTEXT_ITEMS = 64
POINT_TYPES = frozenset({"keypointlabels", "keypoint"})
BOX_TYPES = frozenset({"rectanglelabels", "rectangle"})
OUTPUT_TAGS = ("BrushLabels", "PolygonLabels")
"""The region kinds we answer with, in order of preference when a config has both."""
NEGATIVE_LABELS = frozenset({"negative", "background", "exclude"})
"""Without `is_positive`, a keypoint whose label is one of these (any case) excludes."""
_PERCENT_SLACK = 1e-3


@dataclass(frozen=True)
class LabelConfig:
    """What we need of a project's labelling config: the image, and the control our answers go to."""

    image_name: str
    image_value: str
    """The task data key holding the image URL (`$image` -> "image")."""
    output_tag: str
    """BrushLabels or PolygonLabels."""
    output_name: str
    output_labels: tuple[str, ...]


@dataclass
class InteractivePrompt:
    """One SAM prompt from a context, in original-image pixels."""

    width: int
    height: int
    point_coords: list[list[float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    box: list[float] | None = None
    label: str | None = None


def parse_label_config(label_config: object, *, field: str = "label_config") -> LabelConfig:
    """The image tag and the output control of a labelling config; InvalidInput naming `field` otherwise."""
    if not isinstance(label_config, str) or not label_config.strip():
        raise InvalidInput("the project's labelling config (XML) is missing", field=field)
    if len(label_config.encode()) > MAX_CONFIG_BYTES:
        raise InvalidInput(f"a labelling config of at most {MAX_CONFIG_BYTES} bytes", field=field)
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as exc:
        raise InvalidInput(f"the labelling config is not XML: {exc}", field=field) from None
    images = [tag for tag in root.iter("Image") if tag.get("name") and (tag.get("value") or "").startswith("$")]
    if not images:
        raise InvalidInput('the labelling config has no <Image name="..." value="$..."> tag', field=field)
    for kind in OUTPUT_TAGS:
        for tag in root.iter(kind):
            image = next((i for i in images if i.get("name") == tag.get("toName")), None)
            if tag.get("name") and image is not None:
                labels = tuple(label.get("value", "") for label in tag.iter("Label") if label.get("value"))
                return LabelConfig(
                    image_name=str(image.get("name")),
                    image_value=str(image.get("value"))[1:],
                    output_tag=kind,
                    output_name=str(tag.get("name")),
                    output_labels=labels,
                )
    raise InvalidInput("the labelling config has no BrushLabels or PolygonLabels on its image: add one", field=field)


def _number(item: dict[str, Any], key: str, where: str) -> float:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise InvalidInput(f"a finite number is needed, got {value!r}", field=f"{where}.{key}")
    return float(value)


def _percent(value: dict[str, Any], key: str, where: str) -> float:
    number = _number(value, key, f"{where}.value")
    if not -_PERCENT_SLACK <= number <= 100 + _PERCENT_SLACK:
        raise InvalidInput(f"a percentage of the image, 0-100, got {number:g}", field=f"{where}.value.{key}")
    return min(max(number, 0.0), 100.0)


def context_prompt(context: object) -> InteractivePrompt | None:
    """The SAM prompt of an interactive context (`params.context`): its keypoints and (last) rectangle on one
    image; None when there is no context (a plain pre-annotation request). InvalidInput names the item at fault."""
    if context is None:
        return None
    base = "params.context"
    if not isinstance(context, dict):
        raise InvalidInput("an object with `result` is needed", field=base)
    items = context.get("result")
    if not items:
        return None
    if not isinstance(items, list) or len(items) > MAX_CONTEXT_ITEMS:
        raise InvalidInput(f"a list of at most {MAX_CONTEXT_ITEMS} regions", field=f"{base}.result")
    prompt: InteractivePrompt | None = None
    for index, item in enumerate(items):
        where = f"{base}.result.{index}"
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise InvalidInput("a region with a `value` object is needed", field=where)
        width, height = _number(item, "original_width", where), _number(item, "original_height", where)
        if width < 1 or height < 1 or width != int(width) or height != int(height):
            raise InvalidInput(f"the image's size in pixels is needed, got {width:g}x{height:g}", field=where)
        if prompt is None:
            prompt = InteractivePrompt(width=int(width), height=int(height))
        elif (prompt.width, prompt.height) != (int(width), int(height)):
            raise InvalidInput("every region must be on the same image (original_width/height differ)", field=where)
        _add_region(prompt, item, where)
    return prompt


def _add_region(prompt: InteractivePrompt, item: dict[str, Any], where: str) -> None:
    """A keypoint (a click) or a rectangle (the box) of the context, from percent to pixels."""
    kind = str(item.get("type", "")).lower()
    value = item["value"]
    x, y = _percent(value, "x", where) / 100 * prompt.width, _percent(value, "y", where) / 100 * prompt.height
    labels = value.get(kind) or value.get("labels") or []
    label = str(labels[0]) if isinstance(labels, list) and labels else None
    prompt.label = label or prompt.label
    if kind in POINT_TYPES:
        positive = item.get("is_positive")
        if positive is None:
            positive = (label or "").lower() not in NEGATIVE_LABELS
        prompt.point_coords.append([x, y])
        prompt.point_labels.append(1 if positive else 0)
    elif kind in BOX_TYPES:
        x1 = min(_percent(value, "x", where) + _percent(value, "width", where), 100.0) / 100 * prompt.width
        y1 = min(_percent(value, "y", where) + _percent(value, "height", where), 100.0) / 100 * prompt.height
        prompt.box = [x, y, x1, y1]
    else:
        raise InvalidInput(
            f"a KeyPointLabels or RectangleLabels region is needed, got type {item.get('type')!r}",
            field=f"{where}.type",
        )


# ---- Label Studio's brush RLE ---------------------------------------------------------------------------------

_RUN_BITS = (3, 4, 8, 16)
"""The four run-length field widths of the format's header (label-studio-sdk's `rle_sizes`)."""
_BLOCK = 65536
"""Codes turned into bits at a time (a (block, 32) array: 16 MiB of int64 at most)."""


def _bits(codes: np.ndarray, bit_counts: np.ndarray) -> np.ndarray:
    """Each code's low `bit_counts` bits, most significant first, as one uint8 0/1 stream."""
    positions = np.arange(32)
    bits = (codes[:, None] >> np.maximum(bit_counts[:, None] - 1 - positions[None, :], 0)) & 1
    return bits[positions[None, :] < bit_counts[:, None]].astype(np.uint8)


def brush_rle(mask: np.ndarray) -> list[int]:
    """A (H, W) mask in Label Studio's brush RLE (`label_studio_sdk.converter.brush.mask2rle` of `mask * 255`,
    byte for byte): every pixel as four 8-bit RGBA values, run-length packed (thi.ng rle-pack), vectorised.

    The stream: 32 bits of value count, 5 bits of word size - 1 (7), four 4-bit run widths - 1, then per run a
    repeat flag (1), 2 bits choosing the width, the run length - 1 and the 8-bit value; zero-padded to a byte
    (a whole zero byte when already aligned, as the SDK writes it)."""
    values = np.repeat(np.asarray(mask, dtype=bool).ravel(), 4)
    count = values.size
    assert count, "an empty mask has no RLE"
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [count])))
    run_values = np.where(values[starts], 255, 0).astype(np.int64)
    # The SDK writes a run of over 256 values with 16-bit lengths, in chunks of 65,536 values and then the rest.
    width_index = np.searchsorted(np.array([8, 16, 256]), lengths, side="left")
    chunks = (lengths + 65535) // 65536
    run_of_chunk = np.repeat(np.arange(lengths.size), chunks)
    last = np.arange(run_of_chunk.size) - np.repeat(np.cumsum(chunks) - chunks, chunks) == chunks[run_of_chunk] - 1
    chunk_lengths = np.where(last, lengths[run_of_chunk] - 65536 * (chunks[run_of_chunk] - 1), 65536)
    chunk_index = width_index[run_of_chunk]
    widths = np.array(_RUN_BITS)[chunk_index]
    repeat = (chunk_lengths > 1).astype(np.int64)  # a run of one value is a literal (never, at 4 values a pixel)
    codes = (((repeat << 2 | chunk_index) << widths | (chunk_lengths - 1)) << 8) | run_values[run_of_chunk]
    header = [(count, 32), (7, 5), *((w - 1, 4) for w in _RUN_BITS)]
    codes = np.concatenate((np.array([v for v, _ in header], dtype=np.int64), codes))
    bit_counts = np.concatenate((np.array([n for _, n in header]), 11 + widths))
    stream = np.concatenate(
        [_bits(codes[i : i + _BLOCK], bit_counts[i : i + _BLOCK]) for i in range(0, codes.size, _BLOCK)]
    )
    padding = 8 - stream.size % 8  # 8 when aligned: the SDK's extra zero byte
    stream = np.concatenate((stream, np.zeros(padding, np.uint8)))
    packed: list[int] = np.packbits(stream).tolist()
    return packed


# ---- answers --------------------------------------------------------------------------------------------------


def region(mask: np.ndarray, score: float, config: LabelConfig, label: str | None) -> dict[str, Any]:
    """One Label Studio region for a (H, W) bool mask: a BrushLabels RLE, or the largest outline as PolygonLabels
    points in percent, with the label the annotator chose (the control's first when it has no such label)."""
    height, width = mask.shape
    if label is None or (config.output_labels and label not in config.output_labels):
        label = config.output_labels[0] if config.output_labels else (label or "object")
    kind = config.output_tag.lower()
    if config.output_tag == "BrushLabels":
        value: dict[str, Any] = {"format": "rle", "rle": brush_rle(mask), "brushlabels": [label]}
    else:
        points = [[round(x / width * 100, 4), round(y / height * 100, 4)] for x, y in mask_to_polygon(mask)]
        value = {"points": points, "closed": True, "polygonlabels": [label]}
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": config.output_name,
        "to_name": config.image_name,
        "type": kind,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": value,
        "score": score,
        "readonly": False,
    }
