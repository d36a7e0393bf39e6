"""The `sam-serve` command line: fetch and check checkpoints, export decoders, segment an image locally.

Settings come from `SAM_*` environment variables (sam_core.settings.Settings); flags given here win.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_core.errors import SamServeError
from sam_core.settings import Settings

if TYPE_CHECKING:
    from sam_core.models import LoadedModel


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    names = ("model_type", "checkpoint", "checkpoint_sha256", "checkpoint_url", "cache_dir", "device")
    for name in (*names, "encoder_dtype"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "quantize", False):
        overrides["decoder_quantize"] = True
    return Settings(**overrides)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-type", help="vit_h, vit_l, vit_b or vit_tiny (env SAM_MODEL_TYPE)")
    parser.add_argument("--checkpoint", help="local checkpoint file (env SAM_CHECKPOINT); else downloaded")
    parser.add_argument("--checkpoint-sha256", help="expected sha256, overrides the registry's")
    parser.add_argument("--checkpoint-url", help="download from this mirror instead of the official URL")
    parser.add_argument("--cache-dir", type=Path, help="where checkpoints and decoders are kept")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")


def _parse_point(text: str) -> tuple[float, float, int]:
    """`x,y` (foreground) or `x,y,label` in original-image pixels."""
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"point {text!r}: use x,y or x,y,label")
    label = int(parts[2]) if len(parts) == 3 else 1
    return float(parts[0]), float(parts[1]), label


def _parse_box(text: str) -> list[float]:
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"box {text!r}: use x0,y0,x1,y1")
    return parts


def _load_model(settings: Settings, device: str) -> LoadedModel:
    from sam_core.models import load_model

    return load_model(
        settings.model_type,
        checkpoint=settings.checkpoint,
        checkpoint_sha256=settings.checkpoint_sha256,
        checkpoint_url=settings.checkpoint_url,
        cache_dir=settings.cache_dir,
        device=device,
    )


def cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from sam_core.models import make_random_checkpoint

    path, sha256 = make_random_checkpoint(args.model_type, Path(args.out), seed=args.seed)
    print(json.dumps({"checkpoint": str(path), "model_type": args.model_type, "sha256": sha256}))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from sam_core.checkpoints import resolve_checkpoint

    settings = _settings(args)
    path, sha256 = resolve_checkpoint(
        settings.model_type,
        checkpoint=settings.checkpoint,
        sha256=settings.checkpoint_sha256,
        cache_dir=settings.cache_dir,
        url=settings.checkpoint_url,
    )
    print(json.dumps({"checkpoint": str(path), "model_type": settings.model_type, "sha256": sha256}))
    return 0


def cmd_export_decoder(args: argparse.Namespace) -> int:
    from sam_core.decoder import ensure_decoder_file

    settings = _settings(args)
    model = _load_model(settings, "cpu")
    paths = [
        ensure_decoder_file(
            model.sam,
            model.identity,
            settings.cache_dir,
            multimask=multimask,
            quantized=settings.decoder_quantize,
        )
        for multimask in (False, True)
    ]
    print(json.dumps({"model_id": model.identity.model_id, "decoders": [str(p) for p in paths]}))
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from sam_core.decoder import OnnxDecoder
    from sam_core.encoder import ImageEncoder
    from sam_core.images import decode_image_bytes
    from sam_core.masks import encode_png, encode_rle, mask_to_polygon
    from sam_core.prompts import build_prompt

    settings = _settings(args)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    model = _load_model(settings, settings.device)
    decoder = OnnxDecoder.for_model(
        model.sam,
        model.identity,
        settings.cache_dir,
        quantized=settings.decoder_quantize,
        threads=settings.decoder_threads,
        providers=settings.decoder_providers,
    )
    timings["load_s"] = time.perf_counter() - started

    image = decode_image_bytes(Path(args.image).read_bytes(), settings.images, field="image")
    started = time.perf_counter()
    embedding = ImageEncoder(model.sam, device=model.device, dtype=settings.encoder_dtype).embed(image.pixels)
    timings["embed_s"] = time.perf_counter() - started

    points = args.point or []
    prompt = build_prompt(
        [[x, y] for x, y, _ in points],
        [label for _, _, label in points],
        embedding.original_size,
        box=args.box,
    )
    started = time.perf_counter()
    output = decoder.decode(embedding, prompt, multimask=args.multimask)
    timings["decode_s"] = time.perf_counter() - started

    best = int(np.argmax(output.iou_scores))
    mask = output.masks[best]
    result: dict[str, Any] = {
        "model_id": model.identity.model_id,
        "image_size": list(embedding.original_size),
        "iou_scores": [round(float(s), 4) for s in output.iou_scores],
        "mask_pixels": int(mask.sum()),
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    if args.format == "polygon":
        result["polygon"] = mask_to_polygon(mask)
    elif args.format == "rle":
        result["rle"] = encode_rle(mask)
    if args.out:
        Path(args.out).write_bytes(encode_png(mask))
        result["png"] = args.out
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-serve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-checkpoint", help="save a seeded random-weight SAM (offline runs, tests)")
    make.add_argument("--model-type", default="vit_tiny")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", required=True)
    make.set_defaults(func=cmd_make_checkpoint)

    download = commands.add_parser("download", help="download and verify an official checkpoint")
    _add_model_options(download)
    download.set_defaults(func=cmd_download)

    export = commands.add_parser("export-decoder", help="export the ONNX decoders for a checkpoint")
    _add_model_options(export)
    export.add_argument("--quantize", action="store_true", help="int8 dynamic quantisation")
    export.set_defaults(func=cmd_export_decoder)

    segment = commands.add_parser("segment", help="embed an image and segment it from prompts, in-process")
    _add_model_options(segment)
    segment.add_argument("--encoder-dtype", choices=["float32", "float16", "bfloat16"])
    segment.add_argument("--quantize", action="store_true", help="int8 decoder")
    segment.add_argument("--image", required=True, help="image file")
    segment.add_argument("--point", type=_parse_point, action="append", help="x,y[,label] in image pixels; repeatable")
    segment.add_argument("--box", type=_parse_box, help="x0,y0,x1,y1 in image pixels")
    segment.add_argument("--multimask", action="store_true", help="three candidate masks, best one written")
    segment.add_argument("--format", choices=["polygon", "rle", "none"], default="polygon")
    segment.add_argument("--out", help="write the best mask as a PNG here")
    segment.set_defaults(func=cmd_segment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except SamServeError as exc:
        print(f"sam-serve: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
