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
skipped; the run goes on.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as coco_mask

from sam_core.errors import CacheMiss, SamServeError, error_name, error_reason
from sam_core.wire.schemas import EmbedImageRequest, ImagePayload, SegmentImageRequest

DEFAULT_CATEGORY = "object"
"""Category of prompts given without a `label`/`category`."""

PROMPTS_PER_REQUEST = 32
"""Boxes of one image sent in one `segment` call (`prompts`): the per-request cost is paid once for them, and
an image with many boxes still spreads over the decoder replicas as several calls."""

IMAGES_PER_BATCH = 4
"""Images an actor takes at once; their embed calls go out together so the encoder can batch them."""


class AppNotRunning(RuntimeError):
    """The Serve application to call is not deployed on the Ray cluster this driver is connected to."""


# ---- prompts ------------------------------------------------------------------------------------------


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


# ---- the Ray Data stage -------------------------------------------------------------------------------


@dataclass
class ImageRecord:
    """What the actor returns for one image: its size and annotations (without COCO ids) and its failures."""

    path: str
    image_key: str | None = None
    height: int | None = None
    width: int | None = None
    embedded: bool = False
    annotations: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


class SegmentImages:
    """The `map_batches` callable: embeds each image of a batch once, then segments its boxes by cache key.

    Constructed once per actor, so the handle lookup (a round trip to the Serve controller) happens once.
    """

    def __init__(self, app_name: str, prompts_by_path: Mapping[str, list[dict[str, Any]]]) -> None:
        from ray import serve

        self.ingress = serve.get_app_handle(app_name)
        self.prompts_by_path = prompts_by_path

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        paths = [str(p) for p in batch["path"]]
        payloads = [
            ImagePayload(type="base64", value=base64.b64encode(bytes(b)).decode("ascii")) for b in batch["bytes"]
        ]
        records = [ImageRecord(path=p) for p in paths]
        # All embeds of the batch go out before any answer is awaited, so the encoder can batch them.
        pending = [self.ingress.embed.remote(EmbedImageRequest(image=payload)) for payload in payloads]
        for record, response in zip(records, pending, strict=True):
            try:
                embedded = response.result().response
            except SamServeError as exc:
                for prompt in self.prompts_by_path[record.path]:
                    record.failures.append(self._failure(prompt, error_name(exc), error_reason(exc)))
                continue
            record.image_key = embedded.image_id
            record.height, record.width = embedded.original_size
            record.embedded = not embedded.cached
        self._segment_boxes([(r, p) for r, p in zip(records, payloads, strict=True) if r.image_key is not None])
        return {"record": [json.dumps(asdict(record)) for record in records]}

    def _segment_boxes(self, images: list[tuple[ImageRecord, ImagePayload]]) -> None:
        """Every box of these images, `PROMPTS_PER_REQUEST` boxes a request, all requests in flight at once."""
        jobs = [
            (record, payload, prompts[start : start + PROMPTS_PER_REQUEST])
            for record, payload in images
            for prompts in [self.prompts_by_path[record.path]]
            for start in range(0, len(prompts), PROMPTS_PER_REQUEST)
        ]
        in_flight = [(*job, self._submit(job[0], job[2], image=None)) for job in jobs]
        for entry in in_flight:
            self._collect(*entry)

    def _submit(self, record: ImageRecord, prompts: list[dict[str, Any]], image: ImagePayload | None) -> Any:
        request = SegmentImageRequest(
            image=image, image_id=record.image_key, prompts=[{"box": p["box"]} for p in prompts], format="rle"
        )
        return self.ingress.segment.remote(request)

    def _collect(
        self, record: ImageRecord, payload: ImagePayload, prompts: list[dict[str, Any]], response: Any
    ) -> None:
        """Annotations from one request's answers. A box the app refuses (`prompts.N...`) is reported and the
        others are sent again without it; an embedding evicted meanwhile is sent again with the image."""
        image = None
        while prompts:
            try:
                try:
                    body = response.result().body
                except CacheMiss:  # evicted since the embed call: send the image (embedded again, same key)
                    image = payload
                    body = self._submit(record, prompts, image=image).result().body
            except SamServeError as exc:
                refused = _refused_prompt(exc, len(prompts))
                if refused is None:
                    record.failures.extend(self._failure(p, error_name(exc), error_reason(exc)) for p in prompts)
                    return
                record.failures.append(self._failure(prompts[refused], error_name(exc), error_reason(exc)))
                prompts = prompts[:refused] + prompts[refused + 1 :]
                response = self._submit(record, prompts, image=image) if prompts else None
                continue
            for prompt, result in zip(prompts, body["results"], strict=True):
                record.annotations.append(_annotation(prompt, result))
            return

    @staticmethod
    def _failure(prompt: Mapping[str, Any], error: str, reason: str) -> dict[str, Any]:
        return asdict(Failure(prompt["row"], prompt["image"], error, reason))


def _refused_prompt(exc: SamServeError, count: int) -> int | None:
    """The index N of a refusal naming `prompts.N...` (a box the app refuses), else None (the whole request)."""
    parts = (exc.field or "").split(".")
    if len(parts) >= 2 and parts[0] == "prompts" and parts[1].isdigit() and int(parts[1]) < count:
        return int(parts[1])
    return None


def _annotation(prompt: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    """A COCO annotation from one prompt's rle answer (its first mask)."""
    rle = result["masks"][0]
    counts = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    x, y, w, h = (float(v) for v in coco_mask.toBbox(counts))
    return {
        "row": prompt["row"],
        "category": prompt["category"],
        "segmentation": rle,
        "area": int(coco_mask.area(counts)),
        "bbox": [x, y, w, h],
        "prompt_box": prompt["box"],
        "score": float(result["scores"][0]),
        "iscrowd": 0,
    }


# ---- the pipeline -------------------------------------------------------------------------------------


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

    if __name__ != "__main__":
        # Imported from a file that Ray's workers cannot import (examples/ is no package): ship by value.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
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
