"""Image-encoder speed options against the exact fp32 encoder: images/s and embedding fidelity.

For each variant (an `ImageEncoder` option set), one image at a time and a batch, on 1500x2250 images with
random weights: seconds per image (best of the rounds: another process may share the CPU), speed-up against
fp32 one at a time, and fidelity against fp32 on the same images (max abs diff and relative L2 of the
embeddings, and the IoU of the masks the real SAM mask decoder makes from them for a few points). Variants
are alternated within each round rather than run in blocks, so load from elsewhere hits all of them alike.

SAM's builder zero-initialises the relative-position tables, which would make the fused-attention bias a
zero mask; they are filled with seeded random values here so that path is measured and compared for real.

Run: .venv/bin/python bench/bench_encoder.py [--model vit_tiny|vit_b] [--batch N] [--rounds R] [--compile]
(here, 2 CPUs: vit_tiny ~1 min; vit_b ~4 min a round, --compile ~4 min more plus ~3 min of compilation.)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A fresh inductor cache, so the first compiled call shows a cold compile (set before torch is imported).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bench-encoder-inductor-"))

import numpy as np
import torch
from segment_anything import SamPredictor

from sam_core.embedding import ImageEmbedding
from sam_core.model.build import load_model, make_random_checkpoint
from sam_core.model.encoder import ImageEncoder

HEIGHT, WIDTH = 1500, 2250
POINTS_PER_IMAGE = 4
BASELINE = "fp32"

VARIANTS: dict[str, dict[str, Any]] = {
    BASELINE: {},
    "fused_attention": {"fused_attention": True},
    "channels_last": {"channels_last": True},
    "bf16": {"dtype": "bfloat16"},
    "fp16": {"dtype": "float16"},
    "fused+channels_last": {"fused_attention": True, "channels_last": True},
    "fused+bf16": {"fused_attention": True, "dtype": "bfloat16"},
    "fused+channels_last+bf16": {"fused_attention": True, "channels_last": True, "dtype": "bfloat16"},
}
COMPILE_VARIANTS: dict[str, dict[str, Any]] = {
    "compile": {"compile": True},
    "fused+compile": {"fused_attention": True, "compile": True},
    "fused+channels_last+compile": {"fused_attention": True, "channels_last": True, "compile": True},
    "fused+channels_last+bf16+compile": {
        "fused_attention": True,
        "channels_last": True,
        "dtype": "bfloat16",
        "compile": True,
    },
}


@dataclass
class Measurement:
    """The timings and outputs of one variant at one batch size, over all rounds."""

    seconds_per_image: list[float] = field(default_factory=list)
    first_call_s: float | None = None
    embeddings: list[np.ndarray] = field(default_factory=list)


def randomise_rel_pos(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "rel_pos" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def low_res_masks(sam: Any, embedding: ImageEmbedding, points_1024: np.ndarray) -> np.ndarray:
    """(P, 256, 256) bool masks, one per point (in the 1024 input frame), from the real SAM mask decoder."""
    coords = torch.as_tensor(points_1024, dtype=torch.float32)[:, None, :]
    labels = torch.ones((len(points_1024), 1), dtype=torch.int64)
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        logits, _ = sam.mask_decoder(
            image_embeddings=torch.as_tensor(embedding.embedding),
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    masks: np.ndarray = (logits[:, 0] > 0).numpy()
    return masks


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def timed_embed(encoder: ImageEncoder, images: list[np.ndarray]) -> tuple[float, list[ImageEmbedding]]:
    started = time.perf_counter()
    embeddings = encoder.embed_batch(images)
    return time.perf_counter() - started, embeddings


def selected_variants(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The variants that --compile and --only ask for (the fp32 baseline always)."""
    variants = dict(VARIANTS)
    if args.compile:
        variants.update(COMPILE_VARIANTS)
    if args.only:
        unknown = set(args.only) - set(variants)
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}; known: {sorted(variants)}")
        variants = {name: options for name, options in variants.items() if name == BASELINE or name in args.only}
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny", choices=("vit_tiny", "vit_b", "vit_l", "vit_h"))
    parser.add_argument("--batch", type=int, default=2, help="images per batched forward pass")
    parser.add_argument("--rounds", type=int, default=None, help="rounds over all variants (vit_tiny 3, else 1)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile variants (slow to compile)")
    parser.add_argument("--only", nargs="*", help="measure only these variants (fp32 is always measured)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.model == "vit_tiny" else 1)
    torch.set_num_threads(2)
    variants = selected_variants(parser, args)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = make_random_checkpoint(args.model, Path(tmp) / f"{args.model}.pth", seed=0)
        model = load_model(args.model, checkpoint=path, cache_dir=Path(tmp), device="cpu")
    sam = model.sam
    randomise_rel_pos(sam.image_encoder, seed=1)

    encoders = {
        (name, batch): ImageEncoder(sam, max_batch_size=batch, **options)
        for name, options in variants.items()
        for batch in (1, args.batch)
    }
    results = {key: Measurement() for key in encoders}
    # The reference: fp32 one image at a time (also the process's warm-up).
    reference_embeddings = [encoders[(BASELINE, 1)].embed(image).embedding for image in images]
    predictor_times: list[float] = []
    names = list(variants)
    for round_index in range(rounds):
        # SamPredictor first: it is the reference, and in the first round it warms the process up.
        predictor = SamPredictor(sam)
        started = time.perf_counter()
        predictor.set_image(images[0])
        predictor_times.append(time.perf_counter() - started)
        # Rotate the order each round so that no variant always runs first or last.
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            for batch in (1, args.batch):
                measurement = results[(name, batch)]
                encoder = encoders[(name, batch)]
                batch_images = images[:batch]
                if round_index == 0 and variants[name].get("compile"):
                    # The first call compiles; it is timed on its own and steady state measured right after.
                    measurement.first_call_s, _ = timed_embed(encoder, batch_images)
                elapsed, embeddings = timed_embed(encoder, batch_images)
                measurement.seconds_per_image.append(elapsed / batch)
                if not measurement.embeddings:
                    measurement.embeddings = [e.embedding for e in embeddings]
                print(f"round {round_index + 1}/{rounds} {name:<32} batch {batch}: {elapsed:7.2f} s", flush=True)

    reference_s = min(results[(BASELINE, 1)].seconds_per_image)
    rng_points = np.random.default_rng(2)
    points = [rng_points.uniform(0, 1024 * np.array([1.0, HEIGHT / WIDTH]), size=(POINTS_PER_IMAGE, 2)) for _ in images]
    ref_embedding_objects = [
        ImageEmbedding(embedding=e, original_size=(HEIGHT, WIDTH), input_size=(683, 1024)) for e in reference_embeddings
    ]
    reference_masks = [low_res_masks(sam, e, p) for e, p in zip(ref_embedding_objects, points, strict=True)]

    print()
    print(
        f"{args.model} (random weights), {HEIGHT}x{WIDTH} images, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, cpu, best of {rounds} round(s)"
    )
    print(f"SamPredictor.set_image fp32, 1 image: {min(predictor_times):.3f} s")
    header = (
        f"{'variant':<32} {'batch':>5} {'s/image':>8} {'images/s':>9} {'speedup':>8} "
        f"{'rel L2':>9} {'max abs':>9} {'mask IoU':>8} {'1st call s':>10}"
    )
    print(header)
    print("-" * len(header))
    for (name, batch), measurement in results.items():
        if measurement.seconds_per_image:
            best = min(measurement.seconds_per_image)
            timing = f"{best:8.3f} {1 / best:9.2f} {reference_s / best:7.2f}x"
        else:
            timing = f"{'-':>8} {'-':>9} {'-':>8}"
        diffs: list[float] = []
        rel_l2s: list[float] = []
        ious: list[float] = []
        for index, embedding in enumerate(measurement.embeddings):
            exact = reference_embeddings[index]
            diffs.append(float(np.abs(embedding - exact).max()))
            rel_l2s.append(float(np.linalg.norm(embedding - exact) / np.linalg.norm(exact)))
            masks = low_res_masks(
                sam,
                ImageEmbedding(embedding=embedding, original_size=(HEIGHT, WIDTH), input_size=(683, 1024)),
                points[index],
            )
            ious.extend(mask_iou(a, b) for a, b in zip(masks, reference_masks[index], strict=True))
        first = f"{measurement.first_call_s:10.1f}" if measurement.first_call_s is not None else f"{'':>10}"
        print(f"{name:<32} {batch:>5} {timing} {max(rel_l2s):9.2e} {max(diffs):9.2e} {min(ious):8.4f} {first}")
    print("speedup: against fp32 one image at a time. rel L2, max abs: worst image against fp32 one image at a")
    print(f"time; mask IoU: worst of {POINTS_PER_IMAGE} points per image, 256x256 low-res masks from the SAM mask")
    print("decoder. 1st call: the compiled variants' first call (compilation included), left out of s/image.")


if __name__ == "__main__":
    main()
