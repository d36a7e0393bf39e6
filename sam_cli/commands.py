"""The commands that work in-process: make a random checkpoint, download one, export decoders, segment an image
(from prompts, or everything in it)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_cli.arguments import settings_from
from sam_core.errors import ConfigurationError
from sam_core.generator_options import EverythingOptions

if TYPE_CHECKING:
    from sam_core.model.build import LoadedModel
    from sam_core.model.decoder import OnnxDecoder
    from sam_core.settings import Settings
    from sam_core.wire.images import LoadedImage

GENERATOR_FLAGS = EverythingOptions().as_kwargs()
"""`sam-serve everything`'s flags (`--points-per-side`, ...): the generator's parameters, its defaults."""


def cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from sam_core.model.build import make_random_checkpoint

    path, sha256 = make_random_checkpoint(args.model_type, Path(args.out), seed=args.seed)
    print(json.dumps({"checkpoint": str(path), "model_type": args.model_type, "sha256": sha256}))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from sam_core.services.configured import resolve_configured_checkpoint

    settings = settings_from(args)
    path, sha256 = resolve_configured_checkpoint(settings)
    print(json.dumps({"checkpoint": str(path), "model_type": settings.model_type, "sha256": sha256}))
    return 0


def cmd_export_decoder(args: argparse.Namespace) -> int:
    from sam_core.model.decoder_export import ensure_decoder_files
    from sam_core.services.configured import load_configured_model

    settings = settings_from(args)
    model = load_configured_model(settings, device="cpu")
    files = ensure_decoder_files(model.sam, model.identity, settings.cache_dir, quantized=settings.decoder_quantize)
    print(json.dumps({"model_id": model.identity.model_id, "decoders": [str(p) for p in files.values()]}))
    return 0


def _load(args: argparse.Namespace) -> tuple[Settings, LoadedModel, OnnxDecoder, LoadedImage, dict[str, float]]:
    """The in-process commands' start: settings, the model and its decoder (timed as load_s), the image."""
    from sam_core.services.configured import configured_decoder, load_configured_model
    from sam_core.wire.images import decode_image_bytes

    settings = settings_from(args)
    started = time.perf_counter()
    model = load_configured_model(settings)
    decoder = configured_decoder(model.sam, model.identity, settings, threads=settings.decoder_threads)
    timings = {"load_s": time.perf_counter() - started}
    image = decode_image_bytes(Path(args.image).read_bytes(), settings.images, field="image")
    return settings, model, decoder, image, timings


def cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from sam_core.model.prompts import build_prompt
    from sam_core.services.configured import configured_encoder
    from sam_core.wire.masks import encode_png, encode_rle, mask_to_polygon

    settings, model, decoder, image, timings = _load(args)
    started = time.perf_counter()
    embedding = configured_encoder(model, settings).embed(image.pixels)
    timings["embed_s"] = time.perf_counter() - started

    points = args.point or []
    boxes: list[list[float] | None] = args.box or [None]
    if len(boxes) > 1 and (points or args.out):
        raise ConfigurationError("with several --box, each box is its own prompt: no --point, no --out")
    prompts = [
        build_prompt(
            [[x, y] for x, y, _ in points], [label for _, _, label in points], embedding.original_size, box=box
        )
        for box in boxes
    ]
    started = time.perf_counter()
    outputs = [decoder.decode(embedding, prompt, multimask=args.multimask) for prompt in prompts]
    timings["decode_s"] = time.perf_counter() - started

    answers = []
    for box, output in zip(boxes, outputs, strict=True):
        mask = output.masks[int(np.argmax(output.iou_scores))]
        answer: dict[str, Any] = {
            "iou_scores": [round(float(s), 4) for s in output.iou_scores],
            "mask_pixels": int(mask.sum()),
        }
        if box is not None and len(boxes) > 1:
            answer = {"box": box, **answer}
        if args.format == "polygon":
            answer["polygon"] = mask_to_polygon(mask)
        elif args.format == "rle":
            answer["rle"] = encode_rle(mask)
        if args.out:
            Path(args.out).write_bytes(encode_png(mask))
            answer["png"] = args.out
        answers.append(answer)
    result: dict[str, Any] = {"model_id": model.identity.model_id, "image_size": list(embedding.original_size)}
    # One prompt: its fields at the top, as always; several boxes: one answer each, in order.
    result.update(answers[0] if len(answers) == 1 else {"results": answers})
    result["timings"] = {k: round(v, 4) for k, v in timings.items()}
    print(json.dumps(result))
    return 0


def cmd_everything(args: argparse.Namespace) -> int:
    import numpy as np
    from pydantic import ValidationError

    from sam_core.model.mask_generator import check_options, crop_boxes, generate_everything
    from sam_core.services.configured import configured_encoder
    from sam_core.services.generator import encode_records
    from sam_core.wire.generator_schemas import SegmentEverythingRequest

    given = {name: value for name, value in vars(args).items() if name in GENERATOR_FLAGS and value is not None}
    try:
        options = SegmentEverythingRequest(format=args.format, **given).options()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigurationError(str(first["msg"]), field=".".join(map(str, first["loc"]))) from None
    settings, model, decoder, image, timings = _load(args)
    check_options(image.size, options, max_batch_bytes=settings.everything_max_batch_bytes)
    started = time.perf_counter()
    encoder = configured_encoder(model, settings)
    crops = [np.ascontiguousarray(image.pixels[y0:y1, x0:x1]) for x0, y0, x1, y1 in crop_boxes(image.size, options)]
    embeddings = [encoder.embed(crop) for crop in crops]
    timings["embed_s"] = time.perf_counter() - started
    started = time.perf_counter()
    generated = generate_everything(decoder, embeddings, options, max_batch_bytes=settings.everything_max_batch_bytes)
    records = encode_records(generated, args.format)
    timings["generate_s"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(records))
    summary = {"model_id": model.identity.model_id, "image_size": list(image.size), "masks": len(records)}
    print(json.dumps({**summary, "out": args.out, "timings": {k: round(v, 4) for k, v in timings.items()}}))
    return 0
