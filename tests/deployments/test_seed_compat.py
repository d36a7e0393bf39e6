"""What a client migrating from the seed (Roboflow inference's SAM routes) meets first, over real HTTP.

The seed's json embed answer and its round trip, limits on every client-sent size, the same answer on every
path an embedding can take, mask-only prompts, hashing before decoding, and /docs offline.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from sam_core.embedding import round_to_storage
from sam_core.model.build import LoadedModel
from sam_core.wire.masks import MAX_POLYGON_POINTS, MAX_POLYGONS
from sam_core.wire.npy import npy_to_embedding, npz_to_segment
from tests.conftest import ServeApp
from tests.deployments.test_api import (
    EMBED,
    IMAGE_SHAPE,
    MIN_IOU_VS_PREDICTOR,
    SEGMENT,
    assert_error,
    click_body,
    encoder_runs,
    expected_mask,
    image_payload,
    iou,
    new_image_id,
    npy_base64,
    post,
    random_image,
    random_points,
    segment_binary,
)

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def http(serve_app: ServeApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_app.url, timeout=120) as client:
        yield client


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng()


def segment_answer(http: httpx.Client, body: dict[str, object]) -> tuple[np.ndarray, np.ndarray, str]:
    """(masks, low-res logits) of a binary answer and the decoder replica that gave it."""
    response = post(http, SEGMENT, {**body, "format": "binary"})
    masks, low_res = npz_to_segment(response.content)
    return masks, low_res, response.headers["X-Decoder-Replica"]


# ---- 1. the seed's `embeddings` field -------------------------------------------------------------------


def test_json_embed_answer_carries_the_embedding_as_the_seeds_nested_lists(http: httpx.Client) -> None:
    image_id = new_image_id()
    answer = post(http, EMBED, {"image": image_payload(random_image(np.random.default_rng())), "image_id": image_id})
    binary = npy_to_embedding(post(http, EMBED, {"image_id": image_id, "format": "binary"}).content)

    body = orjson.loads(answer.content)
    assert answer.headers["content-type"] == "application/json"
    assert {"embeddings", "image_id", "original_size", "cached", "time"} <= set(body)
    embeddings = np.asarray(body["embeddings"], dtype=np.float32)
    assert embeddings.shape == (1, 256, 64, 64)
    # The same float32 values as the binary route: JSON writes each float32 so that it reads back exactly.
    assert np.array_equal(embeddings, binary)
    assert (body["image_id"], body["original_size"], body["cached"]) == (image_id, list(IMAGE_SHAPE), False)


def test_the_seeds_round_trip_embed_json_then_segment_with_embeddings_gives_the_image_id_mask(
    http: httpx.Client, rng: np.random.Generator
) -> None:
    image_id = new_image_id()
    seed_answer = orjson.loads(
        post(http, EMBED, {"image": image_payload(random_image(rng)), "image_id": image_id}).content
    )
    points = random_points(rng, 2)

    by_id, low_res_by_id, _ = segment_answer(http, click_body(points, image_id=image_id))
    by_embeddings, low_res_by_embeddings, _ = segment_answer(
        http, click_body(points, embeddings=seed_answer["embeddings"], orig_im_size=seed_answer["original_size"])
    )

    assert np.array_equal(by_embeddings, by_id)
    assert np.array_equal(low_res_by_embeddings, low_res_by_id)


def test_metadata_format_answers_without_the_embedding(http: httpx.Client) -> None:
    image_id = new_image_id()
    body = post(http, EMBED, {"image": image_payload(random_image(np.random.default_rng())), "image_id": image_id})
    again = post(http, EMBED, {"image_id": image_id, "format": "metadata"}).json()

    assert "embeddings" in body.json()
    assert set(again) == {"image_id", "original_size", "cached", "time"}
    assert again["cached"] is True


# ---- 2. orig_im_size is an input like any other --------------------------------------------------------


@pytest.fixture(scope="module")
def client_embedding(http: httpx.Client) -> str:
    """A binary-route embedding as base64 .npy, for requests that bring their own."""
    image_id = new_image_id()
    post(http, EMBED, {"image": image_payload(random_image(np.random.default_rng())), "image_id": image_id})
    return base64.b64encode(post(http, EMBED, {"image_id": image_id, "format": "binary"}).content).decode()


@pytest.mark.parametrize(
    ("orig_im_size", "status", "field"),
    [
        ([60000, 60000], 413, "orig_im_size"),  # past max_side: ONNX Runtime's Resize overflowed int32 (a 500)
        ([8000, 8000], 413, "orig_im_size"),  # 64 MP, over max_pixels (50 MP): it used to be decoded
        ([20000, 100], 413, "orig_im_size"),  # one side past max_side
        ([0, 100], 422, "orig_im_size.0"),
        ([100, -3], 422, "orig_im_size.1"),
        ([100], 422, "orig_im_size"),
        ([100, 100, 3], 422, "orig_im_size"),
        ([100.5, 100], 422, "orig_im_size.0"),
    ],
    ids=["60000-square", "64-megapixels", "side-over-limit", "zero", "negative", "one-number", "three", "float"],
)
def test_orig_im_size_outside_the_image_limits_is_refused_naming_it(
    http: httpx.Client, client_embedding: str, orig_im_size: list[float], status: int, field: str
) -> None:
    body = {
        "embeddings": client_embedding,
        "embeddings_format": "binary",
        "orig_im_size": orig_im_size,
        "point_coords": [[1, 1]],
        "point_labels": [1],
    }
    assert_error(http.post(SEGMENT, json=body), status, field)


def test_orig_im_size_at_the_pixel_limit_is_decoded(http: httpx.Client, client_embedding: str) -> None:
    height, width = 5000, 10000  # exactly images.max_pixels (50 MP)
    body = {"embeddings": client_embedding, "embeddings_format": "binary", "orig_im_size": [height, width]}
    masks, low_res, _ = segment_answer(http, {**body, "point_coords": [[10, 10]], "point_labels": [1]})
    assert masks.shape == (1, height, width)
    assert low_res.shape == (1, 256, 256)


# ---- 3. polygon mask_input has bounds ------------------------------------------------------------------


def test_a_polygon_mask_input_over_the_vertex_limit_is_a_422(http: httpx.Client) -> None:
    # 100,000 vertices were rasterised before the limit; the limit is MAX_POLYGON_POINTS in all.
    polygon = [[i % 256, (i // 256) % 256] for i in range(100_000)]
    image_id = new_image_id()
    post(http, EMBED, {"image": image_payload(random_image(np.random.default_rng())), "image_id": image_id})
    body = click_body(np.array([[5.0, 5.0]]), image_id=image_id, has_mask_input=True, mask_input=polygon)
    reason = assert_error(http.post(SEGMENT, json=body), 422, "mask_input")["reason"]
    assert str(MAX_POLYGON_POINTS) in reason


def test_more_polygons_than_the_ring_limit_are_a_422(http: httpx.Client) -> None:
    triangles = [[[x, 0], [x + 1, 0], [x, 1]] for x in range(MAX_POLYGONS + 1)]
    image_id = new_image_id()
    post(http, EMBED, {"image": image_payload(random_image(np.random.default_rng())), "image_id": image_id})
    body = click_body(np.array([[5.0, 5.0]]), image_id=image_id, has_mask_input=True, mask_input=triangles)
    assert str(MAX_POLYGONS) in assert_error(http.post(SEGMENT, json=body), 422, "mask_input")["reason"]


# ---- 4. same request, same answer, on every path -------------------------------------------------------

EVERY_PATH_SHAPE = (1500, 2250)  # the size at which the fp32/fp16 difference showed (58 of 3.4 M pixels)


def test_the_same_prompt_gets_the_same_answer_on_every_path(http: httpx.Client, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, size=(*EVERY_PATH_SHAPE, 3), dtype=np.uint8)
    image_id = new_image_id()
    prompt = {"point_coords": [[1125.0, 750.0], [400.0, 300.0]], "point_labels": [1, 0], "multimask_output": True}

    def answer(body: dict[str, object]) -> tuple[np.ndarray, np.ndarray, list[float], str]:
        response = post(http, SEGMENT, {**prompt, **body, "format": "binary"})
        masks, low_res = npz_to_segment(response.content)
        scores = post(http, SEGMENT, {**prompt, **body, "format": "rle"}).json()["scores"]
        return masks, low_res, scores, response.headers["X-Decoder-Replica"]

    # Cold: the image goes to the encoder and its embedding reaches the decoder inline.
    cold = answer({"image": image_payload(pixels), "image_id": image_id, "use_mask_input_cache": False})
    # Cached: by id, read from Redis; then again until a replica answers from its local copy.
    cached = [answer({"image_id": image_id}) for _ in range(8)]
    replicas = [replica for *_, replica in cached]
    assert any(replicas.count(r) >= 2 for r in replicas), f"no replica answered twice (local copy): {replicas}"
    # A client's own embedding, taken from the binary embed route.
    embedding = npy_to_embedding(post(http, EMBED, {"image_id": image_id, "format": "binary"}).content)
    from_client = answer(
        {"embeddings": npy_base64(embedding), "embeddings_format": "binary", "orig_im_size": list(EVERY_PATH_SHAPE)}
    )

    for other in [*cached, from_client]:
        assert np.array_equal(other[0], cold[0]), f"{(other[0] != cold[0]).sum()} pixels differ"
        assert np.array_equal(other[1], cold[1])
        assert other[2] == cold[2]


def test_a_fresh_embedding_is_at_the_caches_storage_precision(http: httpx.Client) -> None:
    response = post(http, EMBED, {"image": image_payload(random_image(np.random.default_rng())), "format": "binary"})
    embedding = npy_to_embedding(response.content)
    assert np.array_equal(round_to_storage(embedding), embedding)


# ---- 5. mask-only prompts ------------------------------------------------------------------------------


def test_a_mask_alone_is_a_prompt_answered_as_the_seed_does(
    http: httpx.Client, tiny_model: LoadedModel, rng: np.random.Generator
) -> None:
    from segment_anything import SamPredictor

    pixels = random_image(rng)
    image_id = new_image_id()
    post(http, EMBED, {"image": image_payload(pixels), "image_id": image_id})
    predictor = SamPredictor(tiny_model.sam)
    predictor.set_image(pixels)
    _, previous = segment_binary(http, click_body(random_points(rng, 2), image_id=image_id))
    mask_input = previous.reshape(1, 1, 256, 256)

    # From the cache first (the previous click's logits), then the same mask sent explicitly.
    from_cache, _ = segment_binary(
        http, {"image_id": image_id, "point_coords": [], "point_labels": [], "has_mask_input": True}
    )
    explicit = {"has_mask_input": True, "mask_input": npy_base64(mask_input), "mask_input_format": "binary"}
    masks, _ = segment_binary(http, {"image_id": image_id, "point_coords": [], "point_labels": [], **explicit})

    # The seed appends its (0, 0)/-1 padding row to the (empty) points: the decoder sees that row alone, which
    # SamPredictor gives for no points (its prompt encoder pads) in multimask mode, best score.
    no_points, no_labels = np.zeros((0, 2)), np.zeros(0, dtype=int)
    expected = expected_mask(predictor, no_points, no_labels, mask_input=mask_input)
    assert iou(masks[0], expected) >= MIN_IOU_VS_PREDICTOR
    assert iou(from_cache[0], expected) >= MIN_IOU_VS_PREDICTOR  # the cached logits: fp16-rounded


def test_no_point_no_box_and_no_mask_is_still_refused(http: httpx.Client) -> None:
    image_id = new_image_id()
    post(http, EMBED, {"image": image_payload(random_image(np.random.default_rng())), "image_id": image_id})
    response = http.post(SEGMENT, json={"image_id": image_id, "point_coords": [], "point_labels": []})
    assert_error(response, 422, "point_coords")


# ---- 7. hash before decode -----------------------------------------------------------------------------


def test_a_repeat_image_without_id_is_found_by_its_hash_and_not_decoded(
    http: httpx.Client, rng: np.random.Generator
) -> None:
    body = {"image": image_payload(random_image(rng)), "point_coords": [[10.0, 10.0]], "point_labels": [1]}
    first = post(http, SEGMENT, body)
    runs = encoder_runs()
    second = post(http, SEGMENT, body)

    stages = dict(re.findall(r"(\w+);dur=([\d.]+)", second.headers["Server-Timing"]))
    assert "image" in dict(re.findall(r"(\w+);dur=([\d.]+)", first.headers["Server-Timing"]))
    assert "image" not in stages, second.headers["Server-Timing"]  # no pixel decode for a cached hash
    assert encoder_runs() == runs
    assert second.json()["image_id"] == first.json()["image_id"]


# ---- 8. a newcomer's first hour (the README's examples: tests/docs/test_examples.py) ------------------------


def test_docs_work_offline_from_the_packages_own_assets(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    scripts = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert scripts
    assert all(url.startswith("/") for url in scripts), scripts  # nothing from a CDN
    for url in scripts:
        assert http.get(url).status_code == 200, url


def test_readyz_documents_its_503(http: httpx.Client) -> None:
    responses = http.get("/openapi.json").json()["paths"]["/readyz"]["get"]["responses"]
    assert {"200", "503"} <= set(responses)
