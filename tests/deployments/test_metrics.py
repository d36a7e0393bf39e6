"""The deployments' Prometheus metrics reach Ray's metrics endpoint, named `ray_sam_*`, with sane values."""

from __future__ import annotations

import base64
import io
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import ray
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from sam_core.cache.codec import HEADER_BYTES
from sam_core.frames import EMBEDDING_SHAPE
from tests.conftest import APP_NAME, ServeApp

pytestmark = pytest.mark.slow

# Ray's metrics agent exports every few seconds (more under load): poll, never sleep a fixed time.
METRICS_DEADLINE_S = 90.0
EMBEDDING_PAYLOAD_BYTES = HEADER_BYTES + 2 * int(np.prod(EMBEDDING_SHAPE))  # fp16 + header
SEGMENT = "/sam/segment_image"
EMBED = "/sam/embed_image"


@dataclass(frozen=True)
class Expect:
    """At least `minimum` summed over the samples of `name` whose labels include `labels`."""

    name: str
    labels: dict[str, str]
    minimum: float


def metrics_url() -> str:
    (node,) = [node for node in ray.nodes() if node["Alive"]]
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def scrape(client: httpx.Client, url: str) -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) of the app's `ray_sam_*` samples; empty while the endpoint is not up."""
    try:
        text = client.get(url).text
    except httpx.HTTPError:
        return []
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        if family.name.startswith("ray_sam_")
        for sample in family.samples
        if sample.labels.get("application") == APP_NAME
    ]


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(value for n, got, value in samples if n == name and labels.items() <= got.items())


def png_base64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture
def http(serve_app: ServeApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_app.url, timeout=120) as client:
        yield client


def test_requests_show_up_as_sam_metrics_on_the_ray_metrics_endpoint(http: httpx.Client) -> None:
    rng = np.random.default_rng()
    height, width = (int(v) for v in rng.integers(64, 160, size=2))
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image_id = f"metrics-{uuid.uuid4()}"

    embedded = http.post(EMBED, json={"image": {"type": "base64", "value": png_base64(pixels)}, "image_id": image_id})
    assert embedded.status_code == 200, embedded.text
    formats = ["json", "binary", "rle"]
    for index, fmt in enumerate(formats):
        point = [float(rng.integers(0, width)), float(rng.integers(0, height))]
        body: dict[str, object] = {"image_id": image_id, "point_coords": [point], "point_labels": [1], "format": fmt}
        if index:  # later clicks refine the previous mask: the decoder reads its low-res logits
            body.update(has_mask_input=True, use_mask_input_cache=True)
        response = http.post(SEGMENT, json=body)
        assert response.status_code == 200, response.text
    misspelt = http.post(SEGMENT, json={"image_id": image_id, "point_coords": [[1, 1]], "formt": "json"})
    assert misspelt.status_code == 422, misspelt.text
    unknown = http.post(SEGMENT, json={"image_id": f"never-embedded-{uuid.uuid4()}"})
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"] == "CacheMiss", unknown.text

    # The app serves the whole test session: counts are at least what this test sent.
    expected = [
        Expect("ray_sam_request_latency_seconds_count", {"route": EMBED, "source": "encoder", "format": "json"}, 1),
        *(
            Expect("ray_sam_request_latency_seconds_count", {"route": SEGMENT, "source": "cache", "format": f}, 1)
            for f in formats
        ),
        # The embed's own lookup and the unknown image id miss; each segment is a decoder hit.
        Expect("ray_sam_cache_requests_total", {"kind": "embedding", "result": "miss"}, 2),
        Expect("ray_sam_cache_requests_total", {"kind": "embedding", "result": "hit"}, len(formats)),
        # The first click reads no low-res logits (it feeds none back); each later one finds the previous click's.
        Expect("ray_sam_cache_requests_total", {"kind": "low_res", "result": "hit"}, len(formats) - 1),
        Expect("ray_sam_encoder_batch_size_count", {}, 1),
        Expect("ray_sam_encoder_batch_size_bucket", {"le": "16.0"}, 1),
        Expect("ray_sam_encoder_batch_latency_seconds_count", {}, 1),
        Expect("ray_sam_encoder_images_total", {}, 1),
        *(
            Expect("ray_sam_decoder_latency_seconds_count", {"stage": s}, len(formats))
            for s in ("load", "decode", "encode")
        ),
        Expect("ray_sam_cache_entry_bytes_count", {"kind": "embedding"}, 1),
        Expect("ray_sam_cache_written_bytes_total", {"kind": "embedding"}, EMBEDDING_PAYLOAD_BYTES),
        Expect("ray_sam_errors_total", {"error": "InvalidInput", "route": SEGMENT}, 1),
        Expect("ray_sam_errors_total", {"error": "CacheMiss", "route": SEGMENT}, 1),
    ]

    def unmet(samples: list[tuple[str, dict[str, str], float]]) -> list[str]:
        found = [(e, total(samples, e.name, **e.labels)) for e in expected]
        short = [f"{e.name}{e.labels} = {value} < {e.minimum}" for e, value in found if value < e.minimum]
        # Every embedding is the same size: bytes written are an exact multiple of the entries written.
        entries = total(samples, "ray_sam_cache_entry_bytes_count", kind="embedding")
        written = total(samples, "ray_sam_cache_written_bytes_total", kind="embedding")
        if written != entries * EMBEDDING_PAYLOAD_BYTES:
            short.append(f"{written} bytes written for {entries} embeddings of {EMBEDDING_PAYLOAD_BYTES} bytes")
        return short

    url = metrics_url()
    deadline = time.monotonic() + METRICS_DEADLINE_S
    with httpx.Client(timeout=10) as client:
        while True:
            samples = scrape(client, url)
            missing = unmet(samples)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    assert not missing, f"after {METRICS_DEADLINE_S} s at {url}:\n" + "\n".join(missing)

    decode_seconds = total(samples, "ray_sam_decoder_latency_seconds_sum", stage="decode")
    decodes = total(samples, "ray_sam_decoder_latency_seconds_count", stage="decode")
    assert 0 < decode_seconds / decodes < 10, "mean decode time (from bucket midpoints) is not plausible"
    batch_buckets = {
        labels["le"]: value for name, labels, value in samples if name == "ray_sam_encoder_batch_size_bucket"
    }
    assert set(batch_buckets) >= {"1.0", "2.0", "4.0", "8.0", "16.0", "+Inf"}, batch_buckets
