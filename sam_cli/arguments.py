"""Flags shared by the commands: the model options (Settings fields, env `SAM_*` underneath) and value types."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sam_core.settings import Settings


def setting_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields given as flags (None: not given, so the env or the default applies)."""
    overrides: dict[str, Any] = {}
    names = ("model_type", "checkpoint", "checkpoint_sha256", "checkpoint_url", "cache_dir", "device")
    for name in (*names, "encoder_dtype"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "quantize", False):
        overrides["decoder_quantize"] = True
    return overrides


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(**setting_flags(args))


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-type", help="vit_h, vit_l, vit_b or vit_tiny (env SAM_MODEL_TYPE)")
    parser.add_argument("--checkpoint", help="local checkpoint file (env SAM_CHECKPOINT); else downloaded")
    parser.add_argument("--checkpoint-sha256", help="expected sha256, overrides the registry's")
    parser.add_argument("--checkpoint-url", help="download from this mirror instead of the official URL")
    parser.add_argument("--cache-dir", type=Path, help="where checkpoints and decoders are kept")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")


def parse_point(text: str) -> tuple[float, float, int]:
    """`x,y` (foreground) or `x,y,label` in original-image pixels."""
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"point {text!r}: use x,y or x,y,label")
    label = int(parts[2]) if len(parts) == 3 else 1
    return float(parts[0]), float(parts[1]), label


def parse_box(text: str) -> list[float]:
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"box {text!r}: use x0,y0,x1,y1")
    return parts


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value
