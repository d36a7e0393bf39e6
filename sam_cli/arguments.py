"""Flags shared by the commands: the model options (Settings fields, env `SAM_*` underneath) and value types."""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from sam_core.settings import Settings

MODEL_FLAGS = ("model_type", "checkpoint", "checkpoint_sha256", "checkpoint_url", "cache_dir", "device")
"""The Settings fields every model command takes as flags."""


def add_setting_flags(parser: argparse.ArgumentParser, *names: str, aliases: Mapping[str, str] | None = None) -> None:
    """One flag per named Settings field, derived from the field: `--model-type` for `model_type`, its help the
    field's description and environment variable, a switch for a bool, the choices of a Literal, the type of
    a Path, int or float. Unset flags stay None, so the environment (or the default) applies.

    `aliases`: an extra, shorter spelling for a field's flag (`{"decoder_quantize": "--quantize"}`).
    """
    for name in names:
        field = Settings.model_fields[name]
        option: dict[str, Any] = {
            "dest": name,
            "default": None,
            "help": f"{field.description or name.replace('_', ' ')} (env SAM_{name.upper()})",
        }
        annotation = field.annotation
        if annotation is bool:
            option.update(action="store_const", const=True)
        elif typing.get_origin(annotation) is Literal:
            option["choices"] = typing.get_args(annotation)
        elif annotation in (Path, int, float):
            option["type"] = annotation
        flags = [f"--{name.replace('_', '-')}", *([aliases[name]] if aliases and name in aliases else [])]
        parser.add_argument(*flags, **option)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    add_setting_flags(parser, *MODEL_FLAGS)


def setting_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields given as flags (None: not given, so the env or the default applies)."""
    return {name: value for name in Settings.model_fields if (value := getattr(args, name, None)) is not None}


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the flags given, the `SAM_*` environment under them (pydantic-settings' own order)."""
    return Settings(**setting_flags(args))


def models_json(text: str) -> list[Any]:
    """`--models`: a JSON list of model entries (validated as the `models` setting afterwards)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError("a JSON list of {id, model_type, checkpoint...} objects")
    return value


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
