"""The prompts file of batch_segment.py: box prompts read from CSV or JSON rows, and the rows that give no
annotation (here: no image name or no readable box; later: a missing file or a box the app refuses)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CATEGORY = "object"
"""Category of prompts given without a `label`/`category`."""


@dataclass(frozen=True)
class BoxPrompt:
    """One row of the prompts file: a box on an image.

    Attributes:
        row: the row's number in the prompts file (1-based, header excluded), for reports.
        image: the image's file name as written in the prompts file (relative to the images folder).
        box: [x0, y0, x1, y1] in original-image pixels.
        category: the row's `label`/`category`, or DEFAULT_CATEGORY.
    """

    row: int
    image: str
    box: list[float]
    category: str


@dataclass(frozen=True)
class Failure:
    """A prompt row that produced no annotation, and why (the app's error class and reason when it refused)."""

    row: int
    image: str
    error: str
    reason: str


def _parse_box(value: object) -> list[float]:
    """`x0,y0,x1,y1` (commas or spaces, brackets allowed) or a list of four numbers -> four floats.

    Only the shape is checked here; whether the box fits the image is the app's call.
    """
    if isinstance(value, str):
        parts: Sequence[object] = value.strip().strip("[]()").replace(",", " ").split()
    elif isinstance(value, (list, tuple)):
        parts = value
    else:
        raise ValueError(f"box must be 'x0,y0,x1,y1' or a list of 4 numbers, got {type(value).__name__}")
    if len(parts) != 4:
        raise ValueError(f"box needs 4 numbers x0,y0,x1,y1, got {len(parts)}")
    try:
        box = [float(part) for part in parts]  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"box has a value that is not a number: {value!r}") from exc
    if not all(math.isfinite(c) for c in box):
        raise ValueError(f"box has a non-finite value: {value!r}")
    return box


def _box_from_row(row: Mapping[str, Any]) -> list[float]:
    if row.get("box") not in (None, ""):
        return _parse_box(row["box"])
    corners = [row.get(name) for name in ("x0", "y0", "x1", "y1")]
    if all(c not in (None, "") for c in corners):
        return _parse_box(corners)
    raise ValueError("no box: give a `box` column (x0,y0,x1,y1) or columns x0, y0, x1, y1")


def _raw_rows(prompts_path: Path) -> list[Mapping[str, Any]]:
    """The prompts file's rows as dicts: CSV with a header, or JSON (a list of objects, or {"prompts": [...]})."""
    if prompts_path.suffix.lower() == ".json":
        document = json.loads(prompts_path.read_text())
        rows = document.get("prompts") if isinstance(document, dict) else document
        if not isinstance(rows, list):
            raise ValueError(f"{prompts_path}: expected a JSON list of prompt objects (or {{'prompts': [...]}})")
        return [row if isinstance(row, dict) else {"_invalid": row} for row in rows]
    with prompts_path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        if reader.fieldnames is None or "image" not in reader.fieldnames:
            raise ValueError(f"{prompts_path}: the CSV needs a header with an `image` column (and `box`)")
        return list(reader)


def read_prompts(prompts_path: Path) -> tuple[list[BoxPrompt], list[Failure]]:
    """Parse the prompts file; rows without an image name or a readable box become failures, not errors."""
    prompts: list[BoxPrompt] = []
    failures: list[Failure] = []
    for number, row in enumerate(_raw_rows(prompts_path), start=1):
        image = str(row.get("image") or "").strip()
        if not image:
            failures.append(Failure(number, image, "InvalidRow", "no image file name"))
            continue
        try:
            box = _box_from_row(row)
        except ValueError as exc:
            failures.append(Failure(number, image, "InvalidRow", str(exc)))
            continue
        category = str(row.get("label") or row.get("category") or DEFAULT_CATEGORY).strip() or DEFAULT_CATEGORY
        prompts.append(BoxPrompt(row=number, image=image, box=box, category=category))
    return prompts, failures
