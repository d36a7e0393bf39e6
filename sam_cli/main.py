"""The `sam-serve` command line: fetch and check checkpoints, export decoders, segment an image locally (from
prompts, or everything in it), `run` the whole service on a local Ray cluster, and `warm` its cache for a dataset.

Settings come from `SAM_*` environment variables (sam_core.settings.Settings); flags given here win.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sam_cli.arguments import add_model_options, add_setting_flags, parse_box, parse_point
from sam_cli.commands import (
    GENERATOR_FLAGS,
    cmd_download,
    cmd_everything,
    cmd_export_decoder,
    cmd_make_checkpoint,
    cmd_segment,
)
from sam_cli.run import add_run_options, cmd_run
from sam_cli.warm import add_warm_options, cmd_warm
from sam_core.errors import SamServeError


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
    add_model_options(download)
    download.set_defaults(func=cmd_download)

    export = commands.add_parser("export-decoder", help="export the ONNX decoders for a checkpoint")
    add_model_options(export)
    add_setting_flags(export, "decoder_quantize", aliases={"decoder_quantize": "--quantize"})
    export.set_defaults(func=cmd_export_decoder)

    segment = commands.add_parser("segment", help="embed an image and segment it from prompts, in-process")
    add_model_options(segment)
    add_setting_flags(segment, "encoder_dtype", "decoder_quantize", aliases={"decoder_quantize": "--quantize"})
    segment.add_argument("--image", required=True, help="image file")
    segment.add_argument("--point", type=parse_point, action="append", help="x,y[,label] in image pixels; repeatable")
    segment.add_argument(
        "--box", type=parse_box, action="append", help="x0,y0,x1,y1 in image pixels; repeat: one prompt per box"
    )
    segment.add_argument("--multimask", action="store_true", help="three candidate masks, best one written")
    segment.add_argument("--format", choices=["polygon", "rle", "none"], default="polygon")
    segment.add_argument("--out", help="write the best mask as a PNG here")
    segment.set_defaults(func=cmd_segment)

    everything = commands.add_parser(
        "everything", help="every mask of an image (SamAutomaticMaskGenerator's algorithm), in-process"
    )
    add_model_options(everything)
    add_setting_flags(
        everything,
        "encoder_dtype",
        "decoder_quantize",
        "everything_max_batch_bytes",
        aliases={"decoder_quantize": "--quantize"},
    )
    everything.add_argument("image", help="image file")
    everything.add_argument("--out", required=True, help="write the mask records (COCO-style JSON list) here")
    everything.add_argument("--format", choices=["rle", "json", "png"], default="rle", help="segmentation encoding")
    for name, default in GENERATOR_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        everything.add_argument(flag, type=type(default), help=f"generator parameter (default {default:g})")
    everything.set_defaults(func=cmd_everything)

    run = commands.add_parser("run", help="serve the API on a local Ray cluster (and a private Redis) until stopped")
    add_run_options(run)
    run.set_defaults(func=cmd_run)

    warm = commands.add_parser(
        "warm", help="embed a dataset's images into the running app's shared cache (a Ray Data job)"
    )
    add_warm_options(warm)
    warm.set_defaults(func=cmd_warm)
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
