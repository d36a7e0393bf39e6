"""The Python client (sam_core.client) against the real three-deployment app over HTTP.

Every test uses its own image ids (uuid) and fresh random images, so tests share the session's app and
Redis without seeing each other's entries.
"""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sam_core.client import (
    AsyncSamClient,
    ImageLike,
    SamClient,
    SamClientError,
    SegmentArrays,
    raise_for_error,
    segment_request_body,
)
from sam_core.wire.schemas import EmbedImageResponse, SegmentImageResponse
from tests.conftest import ServeApp, png_to_mask, rle_to_mask

EMBEDDING_SHAPE = (1, 256, 64, 64)
LOW_RES = (256, 256)


@pytest.fixture(scope="module")
def client(serve_app: ServeApp) -> Iterator[SamClient]:
    with SamClient(serve_app.url, timeout=120.0) as sam:
        yield sam


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng()


@pytest.fixture
def image(rng: np.random.Generator) -> np.ndarray:
    """A fresh random (H, W, 3) uint8 RGB image of about 300x400."""
    height, width = int(rng.integers(280, 320)), int(rng.integers(380, 420))
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def new_id(label: str) -> str:
    return f"test-client-{label}-{uuid.uuid4()}"


def click_in(image: np.ndarray, rng: np.random.Generator) -> list[list[float]]:
    """One (x, y) click inside the image, in original-image pixels."""
    height, width = image.shape[:2]
    return [[float(rng.uniform(0, width - 1)), float(rng.uniform(0, height - 1))]]


def embedded(client: SamClient, image: np.ndarray, label: str) -> str:
    image_id = new_id(label)
    client.embed_image(image, image_id=image_id)
    return image_id


def embedded_with_click(
    client: SamClient, image: np.ndarray, rng: np.random.Generator, label: str
) -> tuple[str, list[list[float]]]:
    """The id of `image`, embedded, and one click inside it (original-image pixels)."""
    return embedded(client, image, label), click_in(image, rng)


# ---- embed_image ----------------------------------------------------------------------------------------


def test_embed_image_json_returns_metadata_then_reports_it_cached(client: SamClient, image: np.ndarray) -> None:
    image_id = new_id("embed-json")

    first = client.embed_image(image, image_id=image_id)
    again = client.embed_image(image_id=image_id)  # no image: answered from the cache

    assert isinstance(first, EmbedImageResponse)
    assert first.image_id == image_id
    assert first.original_size == image.shape[:2]
    assert first.cached is False
    assert again.cached is True
    assert again.original_size == image.shape[:2]


def test_embed_image_binary_returns_the_float32_embedding(client: SamClient, image: np.ndarray) -> None:
    embedding = client.embed_image(image, image_id=new_id("embed-binary"), format="binary")

    assert isinstance(embedding, np.ndarray)
    assert embedding.shape == EMBEDDING_SHAPE
    assert embedding.dtype == np.float32
    assert np.isfinite(embedding).all()
    assert embedding.std() > 0


# ---- segment_image by image_id --------------------------------------------------------------------------


def test_segment_by_image_id_json_returns_one_polygon_inside_the_image(
    client: SamClient, image: np.ndarray, rng: np.random.Generator
) -> None:
    image_id = embedded(client, image, "segment-json")

    answer = client.segment_image(image_id=image_id, point_coords=click_in(image, rng))

    assert isinstance(answer, SegmentImageResponse)
    assert answer.image_id == image_id
    assert len(answer.masks) == len(answer.low_res_masks) == len(answer.scores) == 1
    height, width = image.shape[:2]
    for x, y in answer.masks[0]:
        assert 0 <= x < width
        assert 0 <= y < height
    for x, y in answer.low_res_masks[0]:
        assert 0 <= x < LOW_RES[1]
        assert 0 <= y < LOW_RES[0]


def test_segment_binary_returns_bool_masks_and_float32_low_res_logits(
    client: SamClient, image: np.ndarray, rng: np.random.Generator
) -> None:
    image_id = embedded(client, image, "segment-binary")

    single = client.segment_image(image_id=image_id, point_coords=click_in(image, rng), format="binary")
    multi = client.segment_image(
        image_id=image_id, point_coords=click_in(image, rng), multimask_output=True, format="binary"
    )

    assert isinstance(single, SegmentArrays)
    assert single.masks.shape == (1, *image.shape[:2])
    assert single.masks.dtype == np.bool_
    assert single.low_res_masks.shape == (1, *LOW_RES)
    assert single.low_res_masks.dtype == np.float32
    assert multi.masks.shape == (3, *image.shape[:2])
    assert multi.masks.dtype == np.bool_
    assert multi.low_res_masks.shape == (3, *LOW_RES)
    assert multi.low_res_masks.dtype == np.float32


def test_segment_rle_and_png_decode_to_the_binary_masks(
    client: SamClient, image: np.ndarray, rng: np.random.Generator
) -> None:
    image_id, click = embedded_with_click(client, image, rng, "segment-rle-png")

    arrays = client.segment_image(image_id=image_id, point_coords=click, format="binary")
    rle = client.segment_image(image_id=image_id, point_coords=click, format="rle")
    png = client.segment_image(image_id=image_id, point_coords=click, format="png")

    from_rle = rle_to_mask(rle.masks[0])
    from_png = png_to_mask(base64.b64decode(png.masks[0]))
    assert from_rle.shape == from_png.shape == image.shape[:2]
    np.testing.assert_array_equal(from_rle, arrays.masks[0])
    np.testing.assert_array_equal(from_png, arrays.masks[0])
    np.testing.assert_array_equal(rle_to_mask(rle.low_res_masks[0]), arrays.low_res_masks[0] > 0)


def test_segment_box_alone_returns_a_mask(client: SamClient, image: np.ndarray) -> None:
    image_id = embedded(client, image, "segment-box")
    height, width = image.shape[:2]

    answer = client.segment_image(image_id=image_id, box=[width * 0.2, height * 0.2, width * 0.7, height * 0.8])

    assert len(answer.masks) == 1
    assert len(answer.scores) == 1


def test_low_res_masks_of_a_binary_answer_feed_back_as_mask_input(
    client: SamClient, image: np.ndarray, rng: np.random.Generator
) -> None:
    image_id, click = embedded_with_click(client, image, rng, "mask-input")
    first = client.segment_image(image_id=image_id, point_coords=click, format="binary")

    refined = client.segment_image(
        image_id=image_id, point_coords=click, mask_input=first.low_res_masks[0], format="binary"
    )
    without = client.segment_image(image_id=image_id, point_coords=click, use_mask_input_cache=False, format="binary")

    assert refined.masks.shape == (1, *image.shape[:2])
    assert refined.low_res_masks.shape == (1, *LOW_RES)
    # The mask input reached the decoder: the same click without it gives other logits.
    np.testing.assert_array_equal(without.low_res_masks, first.low_res_masks)
    assert not np.allclose(refined.low_res_masks, first.low_res_masks)


def test_client_supplied_embeddings_give_the_same_masks_as_the_cached_ones(
    client: SamClient, image: np.ndarray, rng: np.random.Generator
) -> None:
    image_id = embedded(client, image, "client-embedding")
    # Asked again by id, the binary embedding is the cached one, so both paths decode the same numbers.
    embedding = client.embed_image(image_id=image_id, format="binary")
    click = click_in(image, rng)

    from_client = client.segment_image(
        embeddings=embedding, orig_im_size=list(image.shape[:2]), point_coords=click, format="binary"
    )
    from_cache = client.segment_image(image_id=image_id, point_coords=click, format="binary")

    np.testing.assert_array_equal(from_client.masks, from_cache.masks)
    np.testing.assert_allclose(from_client.low_res_masks, from_cache.low_res_masks, rtol=0, atol=1e-5)


# ---- errors ---------------------------------------------------------------------------------------------


def test_a_click_outside_the_image_raises_422_naming_point_coords(client: SamClient, image: np.ndarray) -> None:
    image_id = embedded(client, image, "outside")
    height, width = image.shape[:2]

    with pytest.raises(SamClientError) as caught:
        client.segment_image(image_id=image_id, point_coords=[[width + 50, height / 2]])

    assert caught.value.status == 422
    assert caught.value.error == "InvalidInput"
    assert caught.value.field == "point_coords"
    assert "outside" in caught.value.reason


def test_an_unknown_image_id_raises_404_cache_miss_naming_image_id(client: SamClient) -> None:
    with pytest.raises(SamClientError) as caught:
        client.segment_image(image_id=new_id("never-embedded"), point_coords=[[1, 1]])

    assert (caught.value.status, caught.value.error, caught.value.field) == (404, "CacheMiss", "image_id")


def test_embeddings_without_orig_im_size_raise_422_naming_orig_im_size(client: SamClient) -> None:
    embedding = np.zeros(EMBEDDING_SHAPE, dtype=np.float32)

    with pytest.raises(SamClientError) as caught:
        client.segment_image(embeddings=embedding, point_coords=[[1, 1]])

    assert (caught.value.status, caught.value.field) == (422, "orig_im_size")


def test_non_sam_error_bodies_still_raise_sam_client_error() -> None:
    request = httpx.Request("GET", "http://sam.invalid/nowhere")

    with pytest.raises(SamClientError) as caught:
        raise_for_error(httpx.Response(404, json={"detail": "Not Found"}, request=request))
    with pytest.raises(SamClientError) as plain:
        raise_for_error(httpx.Response(500, text="Internal Server Error", request=request))

    assert (caught.value.status, caught.value.error, caught.value.field) == (404, "NotFound", None)
    assert caught.value.reason == "Not Found"
    assert (plain.value.status, plain.value.error, plain.value.reason) == (
        500,
        "InternalServerError",
        "Internal Server Error",
    )


# ---- health ---------------------------------------------------------------------------------------------


def test_healthz_and_readyz_report_a_ready_service(client: SamClient) -> None:
    assert client.healthz() == {"status": "ok"}
    ready = client.readyz()
    assert ready["ready"] is True
    assert ready["cache"] is True
    assert str(ready["model_id"]).startswith("vit_tiny-")


# ---- the asyncio client ---------------------------------------------------------------------------------


def test_async_client_embeds_segments_and_raises_like_the_sync_one(
    serve_app: ServeApp, image: np.ndarray, rng: np.random.Generator
) -> None:
    image_id = new_id("async")
    click = click_in(image, rng)

    async def session() -> tuple[object, ...]:
        async with AsyncSamClient(serve_app.url, timeout=120.0) as sam:
            health = await sam.healthz()
            ready = await sam.readyz()
            metadata = await sam.embed_image(image, image_id=image_id)
            embedding = await sam.embed_image(image_id=image_id, format="binary")
            polygons = await sam.segment_image(image_id=image_id, point_coords=click)
            arrays = await sam.segment_image(image_id=image_id, point_coords=click, format="binary")
            with pytest.raises(SamClientError) as caught:
                await sam.segment_image(image_id=new_id("async-missing"), point_coords=click)
            return health, ready, metadata, embedding, polygons, arrays, caught.value

    health, ready, metadata, embedding, polygons, arrays, error = asyncio.run(session())

    assert health == {"status": "ok"}
    assert isinstance(ready, dict)
    assert ready["ready"] is True
    assert isinstance(metadata, EmbedImageResponse)
    assert metadata.original_size == image.shape[:2]
    assert isinstance(embedding, np.ndarray)
    assert embedding.shape == EMBEDDING_SHAPE
    assert isinstance(polygons, SegmentImageResponse)
    assert len(polygons.masks) == 1
    assert isinstance(arrays, SegmentArrays)
    assert arrays.masks.shape == (1, *image.shape[:2])
    assert isinstance(error, SamClientError)
    assert (error.status, error.field) == (404, "image_id")


# ---- image inputs ---------------------------------------------------------------------------------------


def test_a_path_bytes_a_pil_image_and_an_array_embed_to_the_same_embedding(
    client: SamClient, image: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    as_bytes = io.BytesIO()
    Image.fromarray(image).save(as_bytes, format="PNG")
    inputs: dict[str, ImageLike] = {
        "path": path,
        "str-path": str(path),
        "bytes": as_bytes.getvalue(),
        "pil": Image.fromarray(image),
        "ndarray": image,
    }

    embeddings = {
        kind: client.embed_image(value, image_id=new_id(f"input-{kind}"), format="binary")
        for kind, value in inputs.items()
    }

    reference = embeddings.pop("ndarray")
    for kind, embedding in embeddings.items():
        np.testing.assert_allclose(embedding, reference, rtol=0, atol=1e-5, err_msg=kind)


def test_a_grey_array_and_a_non_rgb_pil_image_are_accepted(client: SamClient, rng: np.random.Generator) -> None:
    grey = rng.integers(0, 256, size=(120, 160), dtype=np.uint8)
    cmyk = Image.fromarray(rng.integers(0, 256, size=(100, 140, 3), dtype=np.uint8)).convert("CMYK")

    assert client.embed_image(grey, image_id=new_id("grey")).original_size == (120, 160)
    assert client.embed_image(cmyk, image_id=new_id("cmyk")).original_size == (100, 140)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (np.zeros((10, 10, 3), dtype=np.float32), ValueError),
        (np.zeros((10, 10, 4), dtype=np.uint8), ValueError),
        (12345, TypeError),
    ],
)
def test_what_is_not_an_image_is_refused_before_sending(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        _body(image=value)


# ---- request bodies -------------------------------------------------------------------------------------


def _body(**fields: object) -> dict[str, object]:
    defaults: dict[str, object] = {
        "image": None,
        "image_id": "some-image",
        "point_coords": None,
        "point_labels": None,
        "box": None,
        "multimask_output": False,
        "mask_input": None,
        "use_mask_input_cache": True,
        "has_mask_input": None,
        "embeddings": None,
        "orig_im_size": None,
        "format": "json",
    }
    return segment_request_body(**{**defaults, **fields})  # type: ignore[arg-type]


def test_request_bodies_default_labels_to_foreground_and_send_a_box_without_padding() -> None:
    clicks = _body(point_coords=np.array([[10.5, 20.0], [30, 40]]))
    box = _body(box=np.array([1, 2, 30, 40]))

    assert clicks["point_coords"] == [[10.5, 20.0], [30.0, 40.0]]
    assert clicks["point_labels"] == [1, 1]
    assert box["point_coords"] == []
    assert box["point_labels"] == []
    assert box["box"] == [1, 2, 30, 40]


def test_request_bodies_send_arrays_as_binary_npy_and_set_has_mask_input() -> None:
    low_res = np.random.default_rng().normal(size=LOW_RES).astype(np.float32)

    body = _body(point_coords=[[1, 1]], mask_input=low_res)
    cached = _body(point_coords=[[1, 1]], has_mask_input=True)

    assert body["mask_input_format"] == "binary"
    assert body["has_mask_input"] is True
    sent = np.load(io.BytesIO(base64.b64decode(str(body["mask_input"]))), allow_pickle=False)
    assert sent.shape == (1, 1, *LOW_RES)
    np.testing.assert_array_equal(sent[0, 0], low_res)
    assert cached["has_mask_input"] is True
    assert "mask_input" not in cached


def test_the_client_imports_no_model_or_cluster_library() -> None:
    """`import sam_core.client` in a fresh interpreter loads no torch, Ray, ONNX Runtime or OpenCV."""
    import subprocess
    import sys

    heavy = ["torch", "ray", "onnxruntime", "cv2", "pycocotools", "segment_anything", "redis"]
    probe = f"import sys, sam_core.client; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
