"""The bad-input catalog: every request a client can get wrong gets a clear 4xx naming the field, and the
service answers the next valid request as if nothing happened. Real HTTP against the real app."""

from __future__ import annotations

import base64
import io
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServeApp

pytestmark = pytest.mark.slow

SEGMENT = "/sam/segment_image"
EMBED = "/sam/embed_image"
EVERYTHING = "/sam/segment_everything"
HEIGHT, WIDTH = 120, 160


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def random_rgb() -> Image.Image:
    return Image.fromarray(np.random.default_rng().integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8))


def png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` (valid CRC): what a decompression bomb looks like."""
    data = encoded(Image.new("L", (8, 8)), "PNG")
    ihdr_start = 8 + 8  # signature, then length + type of the IHDR chunk
    fields = struct.pack(">II", width, height) + data[ihdr_start + 8 : ihdr_start + 13]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + fields) & 0xFFFFFFFF)
    return data[:ihdr_start] + fields + crc + data[ihdr_start + 17 :]


def npy(array: np.ndarray, **options: Any) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, **options)
    return b64(buffer.getvalue())


class Exploit:
    """Unpickling this would run code: the payload must be refused, never loaded."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("unpickled!",))


@dataclass(frozen=True)
class Case:
    route: str
    body: Callable[[str], Any]  # the cached image id -> a JSON body (or raw bytes to send as is)
    status: int | tuple[int, ...]
    field: str | None = None


def image_body(data: bytes, **extra: Any) -> Callable[[str], Any]:
    return lambda _: {"image": {"type": "base64", "value": b64(data)}, **extra}


def prompt(**fields: Any) -> Callable[[str], Any]:
    return lambda image_id: {"image_id": image_id, **fields}


EMBEDDING = np.zeros((1, 256, 64, 64), dtype=np.float32)

CATALOG: dict[str, Case] = {
    "invalid JSON": Case(SEGMENT, lambda _: b"{not json", 400),
    "JSON array body": Case(SEGMENT, lambda _: [1, 2, 3], 422),
    "image_id of the wrong type": Case(SEGMENT, lambda _: {"image_id": 12}, 422, "image_id"),
    "point_coords a string": Case(SEGMENT, prompt(point_coords="1,2", point_labels=[1]), 422, "point_coords"),
    "segment without image or image_id": Case(SEGMENT, lambda _: {"point_coords": [[1, 1]]}, 422, "image"),
    "embed without image or image_id": Case(EMBED, lambda _: {}, 422, "image"),
    "unknown image_id": Case(SEGMENT, lambda _: {"image_id": f"nope-{uuid.uuid4()}"}, 404, "image_id"),
    "invalid base64": Case(EMBED, lambda _: {"image": {"type": "base64", "value": "@@not base64@@"}}, (400, 422)),
    "non-image bytes": Case(EMBED, image_body(b"hello, this is not an image at all"), (400, 415)),
    "truncated PNG": Case(EMBED, image_body(encoded(random_rgb(), "PNG")[:200]), 400),
    "truncated JPEG": Case(EMBED, image_body(encoded(random_rgb(), "JPEG")[:300]), 400),
    "0x0 image": Case(EMBED, image_body(png_with_size(0, 0)), (400, 413, 422)),
    "1x100000 image": Case(EMBED, image_body(encoded(Image.new("L", (100_000, 1)), "PNG")), 413),
    "decompression bomb": Case(EMBED, image_body(png_with_size(30_000, 30_000)), 413),
    "image type file": Case(EMBED, lambda _: {"image": {"type": "file", "value": "/etc/passwd"}}, 403),
    "image type url while URLs are off": Case(
        EMBED, lambda _: {"image": {"type": "url", "value": "http://127.0.0.1/x.png"}}, 403
    ),
    "pickled numpy image": Case(
        EMBED, lambda _: {"image": {"type": "numpy", "value": npy(np.array([Exploit()]), allow_pickle=True)}}, 422
    ),
    "point outside the image": Case(
        SEGMENT, prompt(point_coords=[[WIDTH + 50, 5]], point_labels=[1]), 422, "point_coords"
    ),
    "NaN coordinate": Case(
        SEGMENT, lambda i: f'{{"image_id": "{i}", "point_coords": [[NaN, 1]]}}'.encode(), (400, 422)
    ),
    "Infinity coordinate": Case(
        SEGMENT, lambda i: f'{{"image_id": "{i}", "point_coords": [[Infinity, 1]]}}'.encode(), (400, 422)
    ),
    "labels of the wrong length": Case(
        SEGMENT, prompt(point_coords=[[1, 1]], point_labels=[1, 0]), 422, "point_labels"
    ),
    "label of the wrong value": Case(SEGMENT, prompt(point_coords=[[1, 1]], point_labels=[7]), 422, "point_labels"),
    "empty prompt lists": Case(SEGMENT, prompt(point_coords=[], point_labels=[]), 422, "point_coords"),
    "too many points": Case(SEGMENT, prompt(point_coords=[[1, 1]] * 65, point_labels=[1] * 65), 422, "point_coords"),
    "box with x1 < x0": Case(SEGMENT, prompt(box=[50, 10, 40, 20]), 422, "box"),
    "box of three numbers": Case(SEGMENT, prompt(box=[1, 2, 3]), 422, "box"),
    "polygon of two points": Case(
        SEGMENT, prompt(has_mask_input=True, mask_input=[[[1, 1], [5, 5]]]), 422, "mask_input"
    ),
    "polygon of strings": Case(
        SEGMENT, prompt(has_mask_input=True, mask_input=[[["a", 1], [5, 5], [9, 1]]]), 422, "mask_input"
    ),
    "polygon nested wrongly": Case(SEGMENT, prompt(has_mask_input=True, mask_input=[1, 2, 3, 4]), 422, "mask_input"),
    "mask_input of the wrong shape": Case(
        SEGMENT,
        prompt(has_mask_input=True, mask_input_format="binary", mask_input=npy(np.zeros((1, 256, 256), np.float32))),
        422,
        "mask_input",
    ),
    "pickled numpy mask_input": Case(
        SEGMENT,
        prompt(
            has_mask_input=True, mask_input_format="binary", mask_input=npy(np.array([Exploit()]), allow_pickle=True)
        ),
        422,
        "mask_input",
    ),
    "embeddings of the wrong shape": Case(
        SEGMENT,
        lambda _: {
            "embeddings": npy(np.zeros((1, 256, 32, 32), np.float32)),
            "embeddings_format": "binary",
            "orig_im_size": [HEIGHT, WIDTH],
        },
        422,
        "embeddings",
    ),
    "embeddings of the wrong dtype": Case(
        SEGMENT,
        lambda _: {
            "embeddings": npy(EMBEDDING.astype(np.int32)),
            "embeddings_format": "binary",
            "orig_im_size": [HEIGHT, WIDTH],
        },
        422,
        "embeddings",
    ),
    "embeddings cut short": Case(
        SEGMENT,
        lambda _: {
            "embeddings": b64(base64.b64decode(npy(EMBEDDING))[:100_000]),
            "embeddings_format": "binary",
            "orig_im_size": [HEIGHT, WIDTH],
        },
        422,
        "embeddings",
    ),
    "embeddings without orig_im_size": Case(
        SEGMENT, lambda _: {"embeddings": npy(EMBEDDING), "embeddings_format": "binary"}, 422, "orig_im_size"
    ),
    "orig_im_size of three numbers": Case(
        SEGMENT,
        lambda _: {"embeddings": npy(EMBEDDING), "embeddings_format": "binary", "orig_im_size": [1, 2, 3]},
        422,
        "orig_im_size",
    ),
    "unknown output format": Case(SEGMENT, prompt(format="gif"), 422, "format"),
    "unknown embed format": Case(EMBED, prompt(format="xml"), 422, "format"),
    "unknown sam_version_id": Case(SEGMENT, prompt(sam_version_id="vit_huge_2"), 404, "sam_version_id"),
    "image_id with control characters": Case(SEGMENT, lambda _: {"image_id": "abc\x00\x1b[31m"}, 422, "image_id"),
    "image_id of 10 kB": Case(SEGMENT, lambda _: {"image_id": "x" * 10_240}, 422, "image_id"),
    "misspelt field": Case(SEGMENT, prompt(point_coord=[[1, 1]]), 422, "point_coord"),
    # Id namespaces and bounded work (issue 27): the service's own prefixes, another image's content id, and a
    # segment-everything run over the decode cap, each refused before any work.
    "image_id in the tenant namespace": Case(SEGMENT, lambda _: {"image_id": "tenant:bob:photo"}, 422, "image_id"),
    "image_id in the Label Studio namespace": Case(EMBED, lambda _: {"image_id": "labelstudio:abc"}, 422, "image_id"),
    "image under another image's content id": Case(
        EMBED, image_body(encoded(random_rgb(), "PNG"), image_id="sha256:" + "0" * 64), 422, "image_id"
    ),
    "segment everything over the decode cap": Case(
        EVERYTHING,
        image_body(encoded(random_rgb(), "PNG"), points_per_side=128, crop_n_layers=2),
        422,
        "points_per_side",
    ),
    "mask input asked for but none anywhere": Case(
        SEGMENT,
        lambda _: {
            "embeddings": npy(EMBEDDING),
            "embeddings_format": "binary",
            "orig_im_size": [HEIGHT, WIDTH],
            "has_mask_input": True,
            "point_coords": [[1, 1]],
            "point_labels": [1],
        },
        422,
        "mask_input",
    ),
    "body over the size limit": Case(SEGMENT, lambda i: b'{"image_id": "' + b"x" * (40 * 1024 * 1024) + b'"}', 413),
}


@pytest.fixture(scope="module")
def http(serve_app: ServeApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_app.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def image_id(http: httpx.Client) -> str:
    """An image embedded once for the prompt cases."""
    image_id = f"bad-input-{uuid.uuid4()}"
    body = {"image": {"type": "base64", "value": b64(encoded(random_rgb(), "PNG"))}, "image_id": image_id}
    response = http.post(EMBED, json=body)
    assert response.status_code == 200, response.text
    return image_id


def send(http: httpx.Client, route: str, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return http.post(route, content=body, headers={"content-type": "application/json"})
    return http.post(route, json=body)


def valid_click(http: httpx.Client, image_id: str) -> None:
    response = http.post(SEGMENT, json={"image_id": image_id, "point_coords": [[10, 10]], "point_labels": [1]})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", list(CATALOG))
def test_bad_request_gets_a_clear_4xx_and_the_service_carries_on(http: httpx.Client, image_id: str, name: str) -> None:
    case = CATALOG[name]
    response = send(http, case.route, case.body(image_id))

    expected = case.status if isinstance(case.status, tuple) else (case.status,)
    assert response.status_code in expected, (response.status_code, response.text[:500])
    assert "Traceback" not in response.text
    body = response.json()
    assert set(body) >= {"error", "field", "reason"}, body
    assert body["reason"], body
    if case.field is not None:
        assert body["field"] == case.field, body
    valid_click(http, image_id)


def test_the_catalog_has_at_least_forty_cases() -> None:
    assert len(CATALOG) >= 40


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(lambda: encoded(Image.fromarray(np.full((HEIGHT, WIDTH), 40_000, np.uint16)), "PNG"), id="16-bit"),
        pytest.param(lambda: encoded(random_rgb().convert("CMYK"), "JPEG"), id="CMYK"),
    ],
)
def test_convertible_images_are_accepted(http: httpx.Client, image: Callable[[], bytes]) -> None:
    response = http.post(EMBED, json={"image": {"type": "base64", "value": b64(image())}})
    assert response.status_code == 200, response.text


def test_self_intersecting_polygon_is_rasterised_not_refused(http: httpx.Client, image_id: str) -> None:
    bow_tie = [[[10, 10], [100, 100], [100, 10], [10, 100]]]
    body = {
        "image_id": image_id,
        "has_mask_input": True,
        "mask_input": bow_tie,
        "point_coords": [[5, 5]],
        "point_labels": [1],
    }
    response = http.post(SEGMENT, json=body)
    assert response.status_code == 200, response.text
