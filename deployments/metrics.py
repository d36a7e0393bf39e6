"""Prometheus metrics of the sam-serve deployments, one small function per thing recorded.

Ray exports them on each node's metrics agent as `ray_<name>`, with the `deployment`, `replica` and
`application` tags Ray Serve adds. The metric objects are made on first use, inside a replica, because Ray
Serve only adds those tags to metrics created where a replica context exists. Tag values are few and fixed
(model id, cache kind, stage, route template, output format, error class name): never image ids or paths
sent by clients. See METRICS.md for what each metric means and queries over them.

Ray exports a histogram's `_sum` rebuilt from bucket midpoints, not the observed values: averages come
from the counters here (`sam_encoder_images_total`, `sam_cache_written_bytes_total`), percentiles from
the buckets.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray.serve.metrics import Counter, Histogram

from sam_core.cache import KIND_EMBEDDING, KIND_LOW_RES_LOGITS

DECODER_BOUNDARIES_S = [0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0]
ENCODER_BOUNDARIES_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0]
# A request is a click (decoder range) or, on a cache miss, a click plus an embedding (encoder range).
REQUEST_BOUNDARIES_S = [*DECODER_BOUNDARIES_S, 2.5, 5.0, 10.0, 30.0, 60.0]
BATCH_SIZE_BOUNDARIES = [1.0, 2.0, 4.0, 8.0, 16.0]
# An fp16 (1, 256, 64, 64) embedding is 2 MiB + an 80-byte header; low-res logits 128 KiB + header.
ENTRY_BYTES_BOUNDARIES = [float(2**k) for k in range(16, 25)]  # 64 KiB .. 16 MiB

CACHE_KINDS = {KIND_EMBEDDING: "embedding", KIND_LOW_RES_LOGITS: "low_res"}
"""sam_core cache kinds -> the `kind` tag value."""


def _keys(names: tuple[str, ...]) -> Any:
    """Tag keys as Ray wants them (its type hints say a 1-tuple, `Tuple[str]`; any tuple of names works)."""
    return names


def _counter(name: str, tag_keys: tuple[str, ...], description: str) -> Counter:
    return Counter(name, description=description, tag_keys=_keys(tag_keys))


def _histogram(name: str, tag_keys: tuple[str, ...], boundaries: list[float], description: str) -> Histogram:
    return Histogram(name, description=description, boundaries=boundaries, tag_keys=_keys(tag_keys))


@dataclass(frozen=True)
class _Metrics:
    cache_requests: Counter
    cache_entry_bytes: Histogram
    cache_written_bytes: Counter
    encoder_batch_size: Histogram
    encoder_batch_latency: Histogram
    encoder_images: Counter
    decoder_latency: Histogram
    request_latency: Histogram
    errors: Counter
    everything_points: Counter
    everything_runs: Counter
    embed_flights: Counter
    tenant_requests: Counter


@functools.cache
def _metrics() -> _Metrics:
    return _Metrics(
        cache_requests=_counter(
            "sam_cache_requests_total",
            ("model_id", "kind", "result"),
            "Cache reads, one per kind read: result is hit, miss or unavailable (cache down).",
        ),
        cache_entry_bytes=_histogram(
            "sam_cache_entry_bytes",
            ("model_id", "kind"),
            ENTRY_BYTES_BOUNDARIES,
            "Bytes written per cache entry (kind=embedding: bytes per cached image).",
        ),
        cache_written_bytes=_counter(
            "sam_cache_written_bytes_total",
            ("model_id", "kind"),
            "Bytes written to the cache (exact; divide by sam_cache_entry_bytes_count for the mean).",
        ),
        encoder_batch_size=_histogram(
            "sam_encoder_batch_size", ("model_id",), BATCH_SIZE_BOUNDARIES, "Images per encoder forward pass."
        ),
        encoder_batch_latency=_histogram(
            "sam_encoder_batch_latency_seconds",
            ("model_id",),
            ENCODER_BOUNDARIES_S,
            "Wall time of one encoder forward pass (the whole batch).",
        ),
        encoder_images=_counter(
            "sam_encoder_images_total",
            ("model_id",),
            "Images embedded (exact; divide by sam_encoder_batch_size_count for the mean batch).",
        ),
        decoder_latency=_histogram(
            "sam_decoder_latency_seconds",
            ("model_id", "stage"),
            DECODER_BOUNDARIES_S,
            "Decoder replica time per prompt by stage: load (cache read), decode (ONNX), encode (masks), "
            "store (low-res logits written back).",
        ),
        request_latency=_histogram(
            "sam_request_latency_seconds",
            ("route", "format", "source"),
            REQUEST_BOUNDARIES_S,
            "Ingress time per successful request by route, output format and embedding source "
            "(cache, encoder, or client-sent).",
        ),
        errors=_counter(
            "sam_errors_total",
            ("error", "route"),
            "Error responses by error type (the body's `error`; internal: unhandled) and route.",
        ),
        everything_points=_counter(
            "sam_everything_points_total",
            ("model_id",),
            "Point prompts decoded by segment-everything runs (counted after each batch: progress).",
        ),
        everything_runs=_counter(
            "sam_everything_runs_total",
            ("model_id", "result"),
            "Segment-everything runs ended, by result: done, cancelled (the client left) or failed.",
        ),
        embed_flights=_counter(
            "sam_embed_flights_total",
            ("model_id", "role"),
            "Requests that needed a new image's embedding, by how they got it (single flight): holder "
            "(ran the encoder holding the image's lock), joined (shared a run of the same ingress replica), waited "
            "(another replica's run landed), landed (cached by the time it asked), own (ran it without the lock: "
            "cache down, another image under its image_id, or it waited embed_wait_s).",
        ),
        tenant_requests=_counter(
            "sam_tenant_requests_total",
            ("tenant", "status"),
            "Authenticated requests answered, by tenant (a configured name) and HTTP status (429: over "
            "the tenant's bound on requests in flight).",
        ),
    )


def cache_read(model_id: str, kind: str, result: str) -> None:
    """One cache read of one kind; fits `EmbeddingCache.read_observer`."""
    tags = {"model_id": model_id, "kind": CACHE_KINDS.get(kind, kind), "result": result}
    _metrics().cache_requests.inc(tags=tags)


def cache_write(model_id: str, kind: str, nbytes: int) -> None:
    """One cache write of `nbytes` (0: nothing was stored, not counted)."""
    if nbytes > 0:
        tags = {"model_id": model_id, "kind": CACHE_KINDS.get(kind, kind)}
        _metrics().cache_entry_bytes.observe(nbytes, tags=tags)
        _metrics().cache_written_bytes.inc(nbytes, tags=tags)


def encoder_batch(model_id: str, size: int, seconds: float) -> None:
    """One encoder forward pass over `size` images."""
    tags = {"model_id": model_id}
    _metrics().encoder_batch_size.observe(size, tags=tags)
    _metrics().encoder_batch_latency.observe(seconds, tags=tags)
    _metrics().encoder_images.inc(size, tags=tags)


def decoder_timings(model_id: str, timings: Mapping[str, float]) -> None:
    """A decoder replica's stage timings for one prompt (`SegmentResult.timings`: load_s, decode_s, ...)."""
    for name, seconds in timings.items():
        tags = {"model_id": model_id, "stage": name.removesuffix("_s")}
        _metrics().decoder_latency.observe(seconds, tags=tags)


def request_served(route: str, fmt: str, source: str, seconds: float) -> None:
    """One successful ingress request; `source` says where its embedding came from: cache, encoder or client."""
    _metrics().request_latency.observe(seconds, tags={"route": route, "format": fmt, "source": source})


def error_response(name: str, route: str) -> None:
    """One error response."""
    _metrics().errors.inc(tags={"error": name, "route": route})


def everything_points(model_id: str, points: int) -> None:
    """A batch of `points` decoded by a segment-everything run."""
    _metrics().everything_points.inc(points, tags={"model_id": model_id})


def everything_run(model_id: str, result: str) -> None:
    """A segment-everything run ended: done, cancelled or failed."""
    _metrics().everything_runs.inc(tags={"model_id": model_id, "result": result})


def embed_flight(model_id: str, role: str) -> None:
    """One request that needed a new image's embedding; `role`: how it got it (`sam_core.single_flight.Role`)."""
    _metrics().embed_flights.inc(tags={"model_id": model_id, "role": role})


def tenant_request(tenant: str, status: int) -> None:
    """One authenticated request answered with `status` (tenants are configured names: few tag values)."""
    _metrics().tenant_requests.inc(tags={"tenant": tenant, "status": str(status)})
