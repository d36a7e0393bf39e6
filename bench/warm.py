"""Warm-up: `sam-serve warm`'s Ray Data job over a folder of new 1500x2250 JPEGs (vit_tiny, 2 decoder replicas),
against embedding the same number of other new images one at a time through the handle's `embed`; then the rerun
over the same folder (every image already cached) and the encoder's batch sizes seen during the job; at two
folder sizes, since the job's start is a fixed cost."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Bench, Report, Row, image_base64, sample_image


def _folder(root: Path, count: int, offset: int) -> list[str]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(sample_image(offset + i)).save(buffer, format="JPEG", quality=90)
        path = root / f"image-{i:03d}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(str(path))
    return paths


def warm_up(bench: Bench, report: Report, sizes: tuple[int, ...] = (32, 128)) -> None:
    """For each size: the job over a folder of new images against a plain loop over as many other new images, then
    the rerun; Ray Data's start (~3 s here) is a fixed cost, so the larger folder shows the job's rate."""
    from ray import serve

    from sam_cli.warm import warm
    from sam_core.wire.schemas import EmbedImageRequest, ImagePayload

    print(
        f"[18] warm-up: sam-serve warm over {' and '.join(map(str, sizes))} new 1500x2250 JPEGs (vit_tiny)", flush=True
    )
    bench.deploy("vit_tiny", decoders=2, decoder_threads=1)
    encoder = serve.get_deployment_handle("SamEncoder", app_name="sam")
    ingress = serve.get_app_handle("sam")
    first_variant = 0
    for images in sizes:
        folder = _folder(bench.work / f"warm-{images}", images, first_variant)
        others = [image_base64(sample_image(first_variant + images + i), "JPEG") for i in range(images + 1)]
        first_variant += 2 * images + 1
        ingress.embed.remote(EmbedImageRequest(image=ImagePayload(type="base64", value=others.pop()))).result()

        started = time.perf_counter()
        for value in others:
            ingress.embed.remote(EmbedImageRequest(image=ImagePayload(type="base64", value=value))).result()
        one_at_a_time = len(others) / (time.perf_counter() - started)

        before = encoder.stats.remote().result()
        first = warm(folder, app_name="sam", concurrency=2, batch_size=4, progress=False)
        after = encoder.stats.remote().result()
        again = warm(folder, app_name="sam", concurrency=2, batch_size=4, progress=False)
        sizes_seen = {
            key.removeprefix("batches_of_"): after[key] - before.get(key, 0)
            for key in after
            if key.startswith("batches_of_") and after[key] - before.get(key, 0)
        }
        for line in first.lines() + again.lines():
            print(f"    {line}")
        report.add(
            Row(
                f"warm-up of {images} new 1500x2250 JPEGs (vit_tiny, sam-serve warm: 2 actors x 4 images)",
                f"{first.images_per_s:.2f} images/s",
                f"{one_at_a_time:.2f} images/s embedding one at a time through the handle",
                first.images_per_s / one_at_a_time,
                target=">= 1.0x",
                met=first.images_per_s >= one_at_a_time,
                notes=[
                    f"encoder batches during the job (size: count): {sizes_seen}; {first.embedded} embedded, "
                    f"{len(first.failed)} failed, {first.bytes_cached / 1e6:.1f} MB of payload cached",
                    f"rerun over the same folder: {again.seconds:.1f} s ({again.skipped} skipped, already cached; "
                    f"{again.embedded} embedded): the job's fixed cost",
                ],
            )
        )
