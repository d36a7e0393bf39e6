"""`sam-serve warm SOURCE`: embed every image of a dataset into the shared cache ahead of its first click.

A Ray Data job on the cluster the app runs on: a small pool of actors (`map_batches` with a callable class) each
take a handle to the app's ingress once (and its image limits), read their batch's images (files, or http(s) URLs
fetched here, by the job, with size and time limits) and hash them, ask the ingress in one call which are cached
(so a rerun resumes where the last one stopped, decoding nothing), and decode and resize the others themselves,
on the job's CPUs: each goes to the ingress's `warm` in the encoder's input frame as soon as it is ready, keyed
by the hash of its bytes as `embed` keys them, through the single flight every request shares, and the encoder
batches what all actors send. Nothing comes back but whether it was cached. In flight at once: at most
`concurrency` x `batch_size` images. A file that cannot be read or decoded, or an image the app refuses, is
reported with its reason; the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam_core.cache.codec import HEADER_BYTES
from sam_core.errors import SamServeError, describe, error_name, error_reason
from sam_core.settings import ImageLimits
from sam_core.wire.images import EncodedImage, encoded_file, encoder_input
from sam_core.wire.messages import WarmImage

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
EMBEDDING_PAYLOAD_BYTES = HEADER_BYTES + 256 * 64 * 64 * 2
"""One cached embedding as stored: the header and the (1, 256, 64, 64) float16 array (Redis adds ~0.04 %)."""
MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""Largest file or URL body the job reads (the app's own `images.max_bytes` refuses smaller ones)."""
URL_TIMEOUT_S = 30.0
WORKER_CPUS = 0.5
"""Each actor's CPU request: it decodes and resizes images, then waits on the encoder."""


class WarmSourceError(ValueError):
    """SOURCE names no folder, glob or manifest with images in it."""


class AppNotRunning(RuntimeError):
    """The Serve application to warm for is not deployed on the Ray cluster this process is connected to."""


def list_sources(source: str) -> list[str]:
    """The images SOURCE names: a folder (its image files, recursively, by suffix), a glob, or a manifest (a text
    file: one path or http(s) URL a line; `#` comments; relative paths resolve against the manifest's folder)."""
    path = Path(source)
    if any(char in source for char in "*?["):
        found = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
    elif path.is_dir():
        found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        found = []
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = line.strip()
            if entry and not entry.startswith("#"):
                is_url = entry.startswith(("http://", "https://"))
                found.append(entry if is_url or os.path.isabs(entry) else str(path.parent / entry))
    else:
        raise WarmSourceError(f"{source!r} is no folder, glob or manifest file")
    if not found:
        raise WarmSourceError(f"{source!r} names no images")
    return found


def _read(source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        import httpx

        with httpx.stream("GET", source, timeout=URL_TIMEOUT_S, follow_redirects=True) as response:
            response.raise_for_status()
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_IMAGE_BYTES:
                    raise ValueError(f"over {MAX_IMAGE_BYTES} bytes")
            return bytes(data)
    size = os.path.getsize(source)
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"over {MAX_IMAGE_BYTES} bytes ({size})")
    return Path(source).read_bytes()


def idle_priority() -> None:
    """Run this thread's decoding only on CPU time nothing else on the node wants (Linux SCHED_IDLE; elsewhere the
    lowest nice): a warm-up is background work, and the encoder's passes and the clicks decoders answer come first.
    On a node with cores to spare it runs at full speed."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
    with contextlib.suppress(OSError):
        os.nice(19 - os.nice(0))


class WarmImages:
    """The `map_batches` callable: reads its batch's images and hashes them, asks the app which are cached (one
    call), decodes and resizes the others here, on the job's CPUs and under the app's own image limits, and sends
    each to the app's `warm` as soon as it is ready, so the encoder batches what every worker sends."""

    def __init__(self, app_name: str, model: str | None) -> None:
        from ray import serve

        self.ingress = serve.get_app_handle(app_name)
        self.model = model
        self.limits: ImageLimits = self.ingress.image_limits.remote().result()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        idle_priority()
        sources = [str(s) for s in batch["source"]]
        status = ["failed"] * len(sources)
        reasons = [""] * len(sources)
        read: list[tuple[int, EncodedImage]] = []
        for index, source in enumerate(sources):
            try:
                read.append((index, encoded_file(_read(source), "image")))
            except Exception as exc:  # noqa: BLE001 (any unreadable file or URL is reported, and the run goes on)
                reasons[index] = f"unreadable: {describe(exc)}"
        try:
            ids = [image.content_id for _, image in read]
            cached: list[bool] = self.ingress.warm_cached.remote(ids, self.model).result() if ids else []
        except SamServeError as exc:
            for index, _ in read:
                reasons[index] = f"{error_name(exc)}: {error_reason(exc)}"
            return {"source": sources, "status": status, "reason": reasons}
        pending: list[tuple[int, Any]] = []
        for (index, image), hit in zip(read, cached, strict=True):
            if hit:
                status[index] = "cached"
                continue
            try:
                pixels = encoder_input(image, self.limits)
            except SamServeError as exc:
                reasons[index] = f"{error_name(exc)}: {error_reason(exc)}"
                continue
            pending.append((index, self.ingress.warm.remote(WarmImage(pixels, self.model))))
        for index, response in pending:
            try:
                status[index] = "cached" if response.result().cached else "embedded"
            except SamServeError as exc:
                reasons[index] = f"{error_name(exc)}: {error_reason(exc)}"
        return {"source": sources, "status": status, "reason": reasons}


@dataclass
class WarmSummary:
    images: int = 0
    embedded: int = 0
    skipped: int = 0
    """Already cached (by an earlier run, or any client): not embedded again."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def bytes_cached(self) -> int:
        return self.embedded * EMBEDDING_PAYLOAD_BYTES

    def lines(self) -> list[str]:
        out = [
            f"warmed {self.images} images in {self.seconds:.1f} s ({self.images_per_s:.2f} images/s): "
            f"{self.embedded} embedded, {self.skipped} already cached, {len(self.failed)} failed; "
            f"{self.bytes_cached / 1e6:.1f} MB added to the cache ({EMBEDDING_PAYLOAD_BYTES:,} B an image)"
        ]
        out += [f"  failed: {source}: {reason}" for source, reason in self.failed]
        return out


def warm_rows(
    sources: Sequence[str], *, app_name: str, model: str | None, concurrency: int, batch_size: int
) -> Iterator[dict[str, Any]]:
    """Each source's row (`source`, `status`: embedded | cached | failed, `reason`) as the job finishes it."""
    import ray

    dataset = ray.data.from_items([{"source": s} for s in sources]).map_batches(
        WarmImages,
        fn_constructor_kwargs={"app_name": app_name, "model": model},
        batch_size=batch_size,
        concurrency=concurrency,
        num_cpus=WORKER_CPUS,
    )
    yield from dataset.iter_rows()


def warm(
    sources: Sequence[str],
    *,
    app_name: str = "sam",
    model: str | None = None,
    concurrency: int = 2,
    batch_size: int = 4,
    progress: bool = True,
) -> WarmSummary:
    """Warm the cache for `sources` (on the Ray cluster this process is connected to) and summarise the run."""
    from ray import serve
    from ray.serve.exceptions import RayServeException
    from tqdm import tqdm

    try:
        serve.get_app_handle(app_name)
    except RayServeException as exc:
        raise AppNotRunning(f"no Serve application {app_name!r} on this Ray cluster ({exc})") from None
    summary = WarmSummary(images=len(sources))
    counts: Counter[str] = Counter()
    started = time.perf_counter()
    rows = warm_rows(sources, app_name=app_name, model=model, concurrency=concurrency, batch_size=batch_size)
    with tqdm(total=len(sources), unit="image", disable=not progress, desc="warm") as bar:
        for row in rows:
            counts[row["status"]] += 1
            if row["status"] == "failed":
                summary.failed.append((row["source"], row["reason"]))
            bar.update(1)
            bar.set_postfix(embedded=counts["embedded"], cached=counts["cached"], failed=counts["failed"])
    summary.seconds = time.perf_counter() - started
    summary.embedded, summary.skipped = counts["embedded"], counts["cached"]
    return summary


def add_warm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a folder of images, a glob ('data/**/*.jpg'), or a manifest of paths/URLs")
    parser.add_argument(
        "--address", default=None, help="the Ray cluster the app runs on (default: RAY_ADDRESS, else the local one)"
    )
    parser.add_argument("--app", default="sam", help="the Serve application's name (default sam)")
    parser.add_argument(
        "--model", default=None, help="the served model to warm for (its id, or a type it serves; default: the default)"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="actors reading and sending images (default 2)")
    parser.add_argument("--batch-size", type=int, default=4, help="images an actor sends at once (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_warm(args: argparse.Namespace) -> int:
    import ray

    try:
        sources = list_sources(args.source)
    except WarmSourceError as exc:
        print(f"sam-serve warm: {exc}", file=sys.stderr)
        return 2
    if not ray.is_initialized():
        ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
    try:
        summary = warm(
            sources,
            app_name=args.app,
            model=args.model,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except AppNotRunning as exc:
        print(f"sam-serve warm: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 1 if summary.failed and not (summary.embedded or summary.skipped) else 0
