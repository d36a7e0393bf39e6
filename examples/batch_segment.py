"""Batch segmentation with Ray Data against a running sam-serve app: box prompts in, COCO annotations out.

    python examples/batch_segment.py --images DIR --prompts prompts.csv --out annotations.json

Each image file is read once (`ray.data.read_binary_files`) and sent, still encoded, as base64: the server
decodes and validates it, so the pipeline accepts exactly what the HTTP API accepts. A small pool of actors
(`map_batches` with a callable class) each take a handle to the app's ingress once and, per image:

1. `embed` it with no `image_id`: the server caches the embedding under the image's content hash and answers
   with that key (`sha256:...`) and the original size. An image already embedded by anyone (an earlier run,
   an HTTP client, the same picture under another file name) is not embedded again.
2. `segment` its boxes by that key only (RLE masks, no image bytes): up to `PROMPTS_PER_REQUEST` boxes a call
   (`prompts`), all calls in flight at once. Should the cache have dropped the embedding meanwhile
   (`CacheMiss`), the call is retried with the image; a box the app refuses is reported and the call is
   retried without it.

So the encoder runs once per distinct image and the boxes of an image share a few decoder calls. Rows that cannot be
segmented (missing file, malformed box, a box the app refuses, an image it cannot decode) are reported and
skipped; the run goes on. The prompts file is read in box_prompts.py; the actor is segment_images.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from box_prompts import BoxPrompt, Failure, read_prompts
from segment_images import ImageRecord, SegmentImages

IMAGES_PER_BATCH = 4
"""Images an actor takes at once; their embed calls go out together so the encoder can batch them."""


class AppNotRunning(RuntimeError):
    """The Serve application to call is not deployed on the Ray cluster this driver is connected to."""


def _connect(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        raise AppNotRunning(
            f"no Ray cluster at address={address!r} ({exc}). Start the app first: `serve run serve_config.yaml` "
            "(see examples/README.md)"
        ) from exc


def _check_app(app_name: str) -> None:
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        status = serve.status().applications.get(app_name)
    except RayServeException as exc:
        status = None
        detail = str(exc)
    else:
        detail = "no such application" if status is None else f"its status is {status.status}"
    if status is None or str(status.status) not in ("RUNNING", "ApplicationStatus.RUNNING"):
        raise AppNotRunning(
            f"the Serve application {app_name!r} is not running on this Ray cluster ({detail}). Start it first "
            "with `serve run serve_config.yaml` (or `sam-serve run`), then rerun this script."
        )


def _resolve_images(images_dir: Path, prompts: list[BoxPrompt]) -> tuple[dict[str, list[BoxPrompt]], list[Failure]]:
    """Group prompts by the image file they name; rows naming a file that does not exist are failures."""
    by_path: dict[str, list[BoxPrompt]] = {}
    failures: list[Failure] = []
    for prompt in prompts:
        path = os.path.abspath(images_dir / prompt.image)
        if not os.path.isfile(path):
            failures.append(Failure(prompt.row, prompt.image, "MissingImage", f"no such file: {path}"))
            continue
        by_path.setdefault(path, []).append(prompt)
    return by_path, failures


def _segment_all(
    by_path: dict[str, list[BoxPrompt]], app_name: str, concurrency: int, images_per_batch: int
) -> Iterator[ImageRecord]:
    import ray

    # The stage's modules are files that Ray's workers cannot import (examples/ is no package): ship them by value.
    for module in (SegmentImages.__module__, Failure.__module__):
        ray.cloudpickle.register_pickle_by_value(sys.modules[module])
    prompts_by_path = {path: [asdict(p) for p in prompts] for path, prompts in by_path.items()}
    dataset = ray.data.read_binary_files(sorted(by_path), include_paths=True).map_batches(
        SegmentImages,
        fn_constructor_kwargs={"app_name": app_name, "prompts_by_path": prompts_by_path},
        batch_size=images_per_batch,
        concurrency=concurrency,
        num_cpus=0.25,  # the actors mostly wait on the app; the CPU work happens in its replicas
    )
    for row in dataset.iter_rows():
        yield ImageRecord(**json.loads(row["record"]))


def _coco(records: list[ImageRecord], by_path: Mapping[str, list[BoxPrompt]], images_dir: Path) -> dict[str, Any]:
    categories = sorted({p.category for prompts in by_path.values() for p in prompts})
    category_ids = {name: i for i, name in enumerate(categories, start=1)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record in sorted(records, key=lambda r: r.path):
        if record.image_key is None:
            continue  # the app could not read the image: its rows are among the failures
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": os.path.relpath(record.path, os.path.abspath(images_dir)),
                "height": record.height,
                "width": record.width,
                "sam_image_id": record.image_key,
            }
        )
        for annotation in sorted(record.annotations, key=lambda a: a["row"]):
            category = annotation.pop("category")
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[category], **annotation}
            )
    return {
        "info": {"description": "sam-serve batch_segment.py: box-prompted SAM masks", "version": "1.0"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for name, i in category_ids.items()],
    }


def run_pipeline(
    images_dir: str | Path,
    prompts_path: str | Path,
    out_path: str | Path,
    *,
    app_name: str = "sam",
    concurrency: int = 2,
    address: str | None = "auto",
    images_per_batch: int = IMAGES_PER_BATCH,
) -> dict[str, Any]:
    """Segment every box of the prompts file with the running app and write COCO annotations to `out_path`.

    Connects to Ray at `address` unless this process is already a connected driver. Raises AppNotRunning
    when the app is not deployed; bad rows are reported in the returned summary, never raised.

    Returns:
        {"images": images written, "boxes": prompt rows read, "masks": annotations written,
         "failures": rows skipped, "failed_rows": [{row, image, error, reason}, ...],
         "images_embedded": images the encoder had to embed (the rest were cached), "seconds", "out"}.
    """
    started = time.perf_counter()
    images_dir, prompts_path, out_path = Path(images_dir), Path(prompts_path), Path(out_path)
    prompts, failures = read_prompts(prompts_path)
    rows_read = len(prompts) + len(failures)
    by_path, missing = _resolve_images(images_dir, prompts)
    failures += missing
    _connect(address)
    _check_app(app_name)

    records = list(_segment_all(by_path, app_name, concurrency, images_per_batch)) if by_path else []
    failures += [Failure(**f) for record in records for f in record.failures]
    document = _coco(records, by_path, images_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    partial.write_text(json.dumps(document))
    partial.replace(out_path)  # readers never see half a file
    return {
        "images": len(document["images"]),
        "boxes": rows_read,
        "masks": len(document["annotations"]),
        "failures": len(failures),
        "failed_rows": [asdict(f) for f in sorted(failures, key=lambda f: f.row)],
        "images_embedded": sum(r.embedded for r in records),
        "seconds": round(time.perf_counter() - started, 3),
        "out": str(out_path),
    }


def _print_summary(summary: Mapping[str, Any]) -> None:
    for failure in summary["failed_rows"]:
        print(
            f"skipped row {failure['row']} ({failure['image']}): {failure['error']}: {failure['reason']}",
            file=sys.stderr,
        )
    print(
        f"{summary['images']} images, {summary['boxes']} boxes -> {summary['masks']} masks written to "
        f"{summary['out']}; {summary['failures']} failures; {summary['images_embedded']} images newly embedded; "
        f"{summary['seconds']:.1f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--images", required=True, type=Path, help="folder holding the image files")
    parser.add_argument("--prompts", required=True, type=Path, help="CSV or JSON rows: image, box[, label]")
    parser.add_argument("--out", required=True, type=Path, help="COCO annotations JSON to write")
    parser.add_argument("--app-name", default="sam", help="the Serve application's name (default: sam)")
    parser.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    parser.add_argument("--concurrency", type=int, default=2, help="actors calling the app (default: 2)")
    args = parser.parse_args(argv)
    if not args.images.is_dir():
        parser.error(f"--images {args.images}: not a folder")
    if not args.prompts.is_file():
        parser.error(f"--prompts {args.prompts}: no such file")
    try:
        summary = run_pipeline(
            args.images,
            args.prompts,
            args.out,
            app_name=args.app_name,
            concurrency=args.concurrency,
            address=args.address,
        )
    except AppNotRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # an unreadable prompts file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_summary(summary)
    return 0 if summary["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
