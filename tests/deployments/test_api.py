"""The HTTP and handle API: the seed's wire contract (Roboflow inference's SAM routes) and our extensions.

Every request runs against the real three-deployment app (`serve_app`): over HTTP with a keep-alive client,
and through the ingress's DeploymentHandle with the same request models. Fidelity is checked against
`SamPredictor` on the same weights, in the mode the served decoder matches (see `expected_mask`). Follow-up
requests read the embedding back from the fp16 cache, so masks are compared by IoU, not exactly.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve
from segment_anything import SamPredictor

from sam_core.embedding import round_to_storage
from sam_core.errors import InvalidInput
from sam_core.model.build import LoadedModel
from sam_core.model.encoder import ImageEncoder
from sam_core.wire.masks import polygons_to_mask
from sam_core.wire.messages import EmbedResult, SegmentResult
from sam_core.wire.npy import npy_to_embedding, npz_to_segment
from sam_core.wire.schemas import EmbedImageRequest, ImagePayload, SegmentImageRequest
from tests.conftest import APP_NAME, ServeApp, png_to_mask, rle_to_mask

pytestmark = pytest.mark.slow

IMAGE_SHAPE = (240, 320)  # (height, width): small, so the tiny encoder stays fast
MIN_IOU_VS_PREDICTOR = 0.99  # the served embedding passes through the fp16 cache
SCORE_MARGIN = 1e-3  # fp16 moves predicted IoUs by ~2e-6: a lead this large cannot flip the best mask
SEGMENT = "/sam/segment_image"
EMBED = "/sam/embed_image"


# ---- helpers --------------------------------------------------------------------------------------------


def random_image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(*IMAGE_SHAPE, 3), dtype=np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(pixels: np.ndarray) -> str:
    return base64.b64encode(png_bytes(pixels)).decode("ascii")


def npy_base64(array: np.ndarray, *, allow_pickle: bool = False) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_payload(pixels: np.ndarray) -> dict[str, str]:
    return {"type": "base64", "value": png_base64(pixels)}


def new_image_id() -> str:
    return f"api-{uuid.uuid4()}"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def relative_l2(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def encoder_runs() -> int:
    """Images the (single) encoder replica has embedded since the app started."""
    stats: dict[str, int] = serve.get_deployment_handle("SamEncoder", app_name=APP_NAME).stats.remote().result()
    return stats["images_embedded"]


def random_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """n (x, y) points in original-image pixels."""
    height, width = IMAGE_SHAPE
    return np.stack([rng.uniform(0, width - 1, n), rng.uniform(0, height - 1, n)], axis=1).round(1)


def random_box(rng: np.random.Generator) -> np.ndarray:
    """[x0, y0, x1, y1] in original-image pixels, at least 20 pixels a side."""
    height, width = IMAGE_SHAPE
    x0, y0 = rng.uniform(0, width - 21), rng.uniform(0, height - 21)
    return np.array([x0, y0, rng.uniform(x0 + 20, width - 1), rng.uniform(y0 + 20, height - 1)]).round(1)


def expected_mask(
    predictor: SamPredictor,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
) -> np.ndarray:
    """SamPredictor's mask for what the served single-mask decoder answers (DESIGN "Which mask").

    With at most 2 prompt rows (one click + padding, or a box with empty point lists) it is the best-scoring
    multimask output; with more rows, the single-output mask (`multimask_output=False`).
    """
    rows = (0 if points is None else len(points)) + (2 if box is not None else 1)
    multimask = rows <= 2
    low_res_input = None if mask_input is None else mask_input.reshape(1, 256, 256)
    masks, scores, _ = predictor.predict(points, labels, box=box, mask_input=low_res_input, multimask_output=multimask)
    return masks[int(np.argmax(scores))] if multimask else masks[0]


def unambiguous(predictor: SamPredictor, draw: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Draw prompts (predictor kwargs) until the best multimask output is clear and not empty.

    The random-weight model's three scores are often within 1e-2 of each other; a lead of SCORE_MARGIN keeps
    the fp16 cache from changing which mask is best, so the comparison tests the API, not luck.
    """
    for _ in range(100):
        prompt = draw()
        masks, scores, _ = predictor.predict(**prompt, multimask_output=True)
        ranked = np.sort(scores)
        if ranked[-1] - ranked[-2] >= SCORE_MARGIN and masks[int(np.argmax(scores))].mean() > 0.01:
            return prompt
    raise AssertionError("no unambiguous prompt in 100 draws")


def one_click(rng: np.random.Generator, predictor: SamPredictor) -> np.ndarray:
    """One foreground click (1, 2) whose best mask is unambiguous."""
    prompt = unambiguous(predictor, lambda: {"point_coords": random_points(rng, 1), "point_labels": np.array([1])})
    points: np.ndarray = prompt["point_coords"]
    return points


def click_body(points: np.ndarray, labels: np.ndarray | None = None, **fields: Any) -> dict[str, Any]:
    labels = np.ones(len(points), dtype=int) if labels is None else labels
    return {"point_coords": points.tolist(), "point_labels": labels.tolist(), **fields}


def post(http: httpx.Client, route: str, body: dict[str, Any]) -> httpx.Response:
    response = http.post(route, json=body)
    assert response.status_code == 200, response.text
    return response


def segment_binary(http: httpx.Client, body: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(bool masks (M, H, W), float32 low-res logits (M, 256, 256)) of a binary segment_image."""
    response = post(http, SEGMENT, {**body, "format": "binary"})
    return npz_to_segment(response.content)


def assert_error(response: httpx.Response, status: int, field: str | None) -> dict[str, Any]:
    """The error contract: the status, a JSON body {error, field, reason} naming the field, no traceback."""
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "field", "reason"}, body
    assert body["field"] == field, body
    assert body["reason"], body
    return body


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """A (H, W) bool mask with every background region not connected to the border filled."""
    padded = np.pad(mask, 1).astype(np.uint8)
    outside = padded.copy()
    flood_mask = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), dtype=np.uint8)
    cv2.floodFill(outside, flood_mask, (0, 0), 2, flags=4)
    return (outside != 2)[1:-1, 1:-1]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a (H, W) bool mask (what an external contour outlines)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    assert count > 1, "the mask is empty"
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


# ---- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(serve_app: ServeApp) -> Iterator[httpx.Client]:
    """One keep-alive client for the module, as real clients work."""
    with httpx.Client(base_url=serve_app.url, timeout=120) as client:
        yield client


@dataclass
class Scene:
    """A random image embedded once by the app under `image_id`, and SamPredictor set on it."""

    image_id: str
    pixels: np.ndarray
    predictor: SamPredictor


@pytest.fixture(scope="module")
def scene(http: httpx.Client, tiny_model: LoadedModel) -> Scene:
    pixels = random_image(np.random.default_rng())
    image_id = new_image_id()
    post(http, EMBED, {"image": image_payload(pixels), "image_id": image_id})
    predictor = SamPredictor(tiny_model.sam)
    predictor.set_image(pixels)
    return Scene(image_id, pixels, predictor)


@pytest.fixture(scope="module")
def cached_embedding(http: httpx.Client, scene: Scene) -> np.ndarray:
    """The scene's embedding as the cache holds it (fp16-rounded), via a binary embed_image."""
    response = post(http, EMBED, {"image_id": scene.image_id, "format": "binary"})
    return npy_to_embedding(response.content)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng()


# ---- embed_image ----------------------------------------------------------------------------------------


def test_embed_image_json_reports_the_image_and_embeds_an_image_id_only_once(http: httpx.Client) -> None:
    pixels = random_image(np.random.default_rng())
    body = {"image": image_payload(pixels), "image_id": new_image_id()}
    runs = encoder_runs()

    first = post(http, EMBED, body).json()
    after_first = encoder_runs()
    second = post(http, EMBED, body).json()

    assert first["image_id"] == second["image_id"] == body["image_id"]
    assert first["original_size"] == second["original_size"] == list(IMAGE_SHAPE)
    assert (first["cached"], second["cached"]) == (False, True)
    assert isinstance(first["time"], float)
    assert (after_first - runs, encoder_runs() - after_first) == (1, 0)


def test_embed_image_binary_is_the_float32_npy_of_the_embedding(http: httpx.Client, tiny_model: LoadedModel) -> None:
    pixels = random_image(np.random.default_rng())
    response = post(http, EMBED, {"image": image_payload(pixels), "image_id": new_image_id(), "format": "binary"})

    assert response.headers["content-type"] == "application/octet-stream"
    served = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert served.dtype == np.float32
    assert served.shape == (1, 256, 64, 64)
    expected = ImageEncoder(tiny_model.sam).embed(pixels).embedding
    # At the cache's storage precision (fp16, relative L2 ~3e-4), fresh or cached alike.
    assert np.array_equal(round_to_storage(served), served)
    assert relative_l2(served, expected) <= 1e-3


# ---- the seed's request fields --------------------------------------------------------------------------

BOOKKEEPING = {
    "id": "request-1",
    "api_key": "not-a-real-key",
    "usage_billable": True,
    "start": 1700000000.5,
    "source": "workflow",
    "source_info": "pytest",
    "disable_model_monitoring": True,
    "model_id": "sam/vit_h",
}
SEED_QUERY_PARAMS = {"api_key": "not-a-real-key", "countinference": "false", "service_secret": "secret"}


def test_seed_bookkeeping_fields_are_ignored_by_segment_image(
    http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    body = click_body(random_points(rng, 2), image_id=scene.image_id, format="binary")
    plain = post(http, SEGMENT, body)
    response = http.post(SEGMENT, json={**body, **BOOKKEEPING}, params=SEED_QUERY_PARAMS)

    assert response.status_code == 200, response.text
    assert np.array_equal(npz_to_segment(response.content)[0], npz_to_segment(plain.content)[0])


def test_seed_bookkeeping_fields_are_ignored_by_embed_image(http: httpx.Client, scene: Scene) -> None:
    response = http.post(EMBED, json={"image_id": scene.image_id, **BOOKKEEPING}, params=SEED_QUERY_PARAMS)

    assert response.status_code == 200, response.text
    assert response.json()["image_id"] == scene.image_id
    assert response.json()["cached"] is True


def test_a_misspelt_field_is_refused_naming_it(http: httpx.Client, scene: Scene) -> None:
    response = http.post(SEGMENT, json={"image_id": scene.image_id, "point_coord": [[10, 10]], "point_labels": [1]})
    body = assert_error(response, 422, "point_coord")
    assert "spelling" in body["reason"]


@pytest.mark.parametrize("route", [SEGMENT, EMBED])
def test_sam_version_id_of_the_served_model_is_accepted(http: httpx.Client, scene: Scene, route: str) -> None:
    post(http, route, {"image_id": scene.image_id, "sam_version_id": "vit_tiny"})


@pytest.mark.parametrize("route", [SEGMENT, EMBED])
def test_sam_version_id_of_another_model_is_404(http: httpx.Client, scene: Scene, route: str) -> None:
    response = http.post(route, json={"image_id": scene.image_id, "sam_version_id": "vit_h"})
    body = assert_error(response, 404, "sam_version_id")
    assert body["error"] == "UnknownModel"


def test_data_url_prefix_is_accepted_and_names_the_same_image(http: httpx.Client) -> None:
    pixels = random_image(np.random.default_rng())
    with_prefix = {"type": "base64", "value": "data:image/png;base64," + png_base64(pixels)}

    first = post(http, EMBED, {"image": with_prefix}).json()
    second = post(http, EMBED, {"image": image_payload(pixels)}).json()

    assert first["original_size"] == list(IMAGE_SHAPE)
    assert first["image_id"] == second["image_id"]
    assert second["cached"] is True


def test_segment_without_image_id_caches_the_embedding_by_content_hash(http: httpx.Client) -> None:
    rng = np.random.default_rng()
    pixels = random_image(rng)
    body = click_body(random_points(rng, 2), image=image_payload(pixels))
    runs = encoder_runs()

    first = post(http, SEGMENT, body).json()
    after_first = encoder_runs()
    second = post(http, SEGMENT, body).json()

    assert first["image_id"] == "sha256:" + hashlib.sha256(png_bytes(pixels)).hexdigest()
    assert second["image_id"] == first["image_id"]
    assert (after_first - runs, encoder_runs() - after_first) == (1, 0)


def test_segment_without_any_prompt_answers_one_mask(http: httpx.Client, scene: Scene) -> None:
    # The seed's defaults: point_coords [[0, 0]] labelled -1 (padding), i.e. no prompt at all.
    body = post(http, SEGMENT, {"image_id": scene.image_id}).json()
    assert len(body["masks"]) == len(body["low_res_masks"]) == len(body["scores"]) == 1


# ---- json response --------------------------------------------------------------------------------------


def test_json_response_has_one_polygon_per_mask_in_each_frame(
    http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    body = post(http, SEGMENT, click_body(one_click(rng, scene.predictor), image_id=scene.image_id)).json()

    assert set(body) == {"masks", "low_res_masks", "scores", "image_id", "time"}
    assert body["image_id"] == scene.image_id
    assert isinstance(body["time"], float)
    assert len(body["scores"]) == 1
    assert isinstance(body["scores"][0], float)
    (polygon,), (low_res_polygon,) = body["masks"], body["low_res_masks"]
    height, width = IMAGE_SHAPE
    for vertices, (frame_h, frame_w) in ((polygon, (height, width)), (low_res_polygon, (256, 256))):
        assert vertices, "expected a non-empty mask"
        assert all(len(v) == 2 and all(type(c) is int for c in v) for v in vertices)
        xs, ys = np.array(vertices).T
        assert xs.min() >= 0
        assert xs.max() < frame_w
        assert ys.min() >= 0
        assert ys.max() < frame_h


def test_json_polygon_outlines_the_largest_part_of_the_mask(
    http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    body = click_body(one_click(rng, scene.predictor), image_id=scene.image_id)
    (polygon,) = post(http, SEGMENT, body).json()["masks"]
    masks, _ = segment_binary(http, body)

    drawn = polygons_to_mask(polygon, IMAGE_SHAPE)
    # The polygon is the largest external contour: that component, holes filled (holes are not described).
    assert iou(drawn, fill_holes(largest_component(masks[0]))) > 0.95


# ---- fidelity vs SamPredictor ---------------------------------------------------------------------------


def test_one_click_matches_predictor_best_multimask(http: httpx.Client, scene: Scene, rng: np.random.Generator) -> None:
    points = one_click(rng, scene.predictor)
    masks, _ = segment_binary(http, click_body(points, image_id=scene.image_id))

    expected = expected_mask(scene.predictor, points, np.array([1]))
    assert masks.shape == (1, *IMAGE_SHAPE)
    assert iou(masks[0], expected) >= MIN_IOU_VS_PREDICTOR


def test_two_clicks_match_predictor_single_mask(http: httpx.Client, scene: Scene, rng: np.random.Generator) -> None:
    points, labels = random_points(rng, 2), np.array([1, 0])
    masks, _ = segment_binary(http, click_body(points, labels, image_id=scene.image_id))

    expected, _, _ = scene.predictor.predict(points, labels, multimask_output=False)
    assert iou(masks[0], expected[0]) >= MIN_IOU_VS_PREDICTOR


def test_box_alone_matches_predictor_best_multimask(http: httpx.Client, scene: Scene, rng: np.random.Generator) -> None:
    box = unambiguous(scene.predictor, lambda: {"box": random_box(rng)})["box"]
    masks, _ = segment_binary(http, {"image_id": scene.image_id, "box": box.tolist()})

    assert iou(masks[0], expected_mask(scene.predictor, box=box)) >= MIN_IOU_VS_PREDICTOR


def test_box_with_empty_point_lists_matches_predictor_best_multimask(
    http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    box = unambiguous(scene.predictor, lambda: {"box": random_box(rng)})["box"]
    body = {"image_id": scene.image_id, "box": box.tolist(), "point_coords": [], "point_labels": []}
    masks, _ = segment_binary(http, body)

    assert iou(masks[0], expected_mask(scene.predictor, box=box)) >= MIN_IOU_VS_PREDICTOR


def test_points_and_box_match_predictor(http: httpx.Client, scene: Scene, rng: np.random.Generator) -> None:
    points, labels, box = random_points(rng, 2), np.array([1, 0]), random_box(rng)
    masks, _ = segment_binary(http, click_body(points, labels, image_id=scene.image_id, box=box.tolist()))

    expected, _, _ = scene.predictor.predict(points, labels, box=box, multimask_output=False)
    assert iou(masks[0], expected[0]) >= MIN_IOU_VS_PREDICTOR


def test_multimask_output_gives_the_predictors_three_masks_and_scores(
    http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    points = random_points(rng, 1)
    body = click_body(points, image_id=scene.image_id, multimask_output=True, format="rle")
    response = post(http, SEGMENT, body).json()

    expected, scores, _ = scene.predictor.predict(points, np.array([1]), multimask_output=True)
    masks = [rle_to_mask(rle) for rle in response["masks"]]
    assert len(masks) == len(response["low_res_masks"]) == 3
    np.testing.assert_allclose(response["scores"], scores, atol=1e-2)
    for served, reference in zip(masks, expected, strict=True):
        assert iou(served, reference) >= MIN_IOU_VS_PREDICTOR


# ---- output formats -------------------------------------------------------------------------------------


def test_binary_format_is_an_npz_of_bool_masks_and_float32_low_res_logits(
    http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    response = post(http, SEGMENT, click_body(random_points(rng, 2), image_id=scene.image_id, format="binary"))

    assert response.headers["content-type"] == "application/octet-stream"
    with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
        assert sorted(archive.files) == ["low_res_masks", "masks"]
        masks, low_res = archive["masks"], archive["low_res_masks"]
    assert masks.dtype == np.bool_
    assert masks.shape == (1, *IMAGE_SHAPE)
    assert low_res.dtype == np.float32
    assert low_res.shape == (1, 256, 256)


@pytest.mark.parametrize("fmt", ["rle", "png"])
def test_rle_and_png_formats_decode_to_the_binary_masks(
    http: httpx.Client, scene: Scene, rng: np.random.Generator, fmt: str
) -> None:
    body = click_body(one_click(rng, scene.predictor), image_id=scene.image_id)
    encoded = post(http, SEGMENT, {**body, "format": fmt}).json()
    masks, low_res = segment_binary(http, body)

    def decode(value: Any) -> np.ndarray:
        return rle_to_mask(value) if fmt == "rle" else png_to_mask(base64.b64decode(value))

    assert len(encoded["masks"]) == len(encoded["low_res_masks"]) == 1
    assert np.array_equal(decode(encoded["masks"][0]), masks[0])
    assert np.array_equal(decode(encoded["low_res_masks"][0]), low_res[0] > 0)


# ---- mask_input -----------------------------------------------------------------------------------------


def test_binary_mask_input_of_previous_logits_refines_like_the_predictor(
    http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    points, labels = random_points(rng, 2), np.array([1, 1])
    body = click_body(points, labels, image_id=scene.image_id)
    _, previous = segment_binary(http, body)

    mask_input = previous.reshape(1, 1, 256, 256)
    masks, low_res = segment_binary(
        http, {**body, "has_mask_input": True, "mask_input": npy_base64(mask_input), "mask_input_format": "binary"}
    )

    assert not np.allclose(low_res, previous, atol=1e-3)
    expected = expected_mask(scene.predictor, points, labels, mask_input=mask_input)
    assert iou(masks[0], expected) >= MIN_IOU_VS_PREDICTOR


def test_json_mask_input_is_polygons_rasterised_in_the_low_res_frame(
    http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    x0, y0 = rng.integers(10, 120, 2)
    x1, y1 = rng.integers(140, 250, 2)
    polygon = [[int(x0), int(y0)], [int(x1), int(y0)], [int(x1), int(y1)], [int(x0), int(y1)]]
    points, labels = random_points(rng, 2), np.array([1, 1])
    body = click_body(points, labels, image_id=scene.image_id, has_mask_input=True, mask_input=polygon)
    masks, _ = segment_binary(http, {**body, "mask_input_format": "json"})

    rasterised = polygons_to_mask(polygon).astype(np.float32)  # 0/1 in the 256x256 frame
    assert iou(masks[0], expected_mask(scene.predictor, points, labels, mask_input=rasterised)) >= MIN_IOU_VS_PREDICTOR


def test_has_mask_input_without_mask_input_uses_the_previous_clicks_logits(
    http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    _, previous = segment_binary(http, click_body(random_points(rng, 2), image_id=scene.image_id))
    follow_up = click_body(random_points(rng, 2), image_id=scene.image_id, has_mask_input=True)

    from_cache, from_cache_low_res = segment_binary(http, follow_up)
    explicit, _ = segment_binary(
        http, {**follow_up, "mask_input": npy_base64(previous.reshape(1, 1, 256, 256)), "mask_input_format": "binary"}
    )
    _, without_mask_low_res = segment_binary(http, {**follow_up, "has_mask_input": False})

    # The cache holds the logits as fp16: the same mask up to rounding.
    assert iou(from_cache[0], explicit[0]) >= MIN_IOU_VS_PREDICTOR
    assert not np.allclose(from_cache_low_res, without_mask_low_res, atol=1e-3)


def test_an_explicit_mask_input_wins_over_the_cached_one(
    http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    _, previous = segment_binary(http, click_body(random_points(rng, 2), image_id=scene.image_id))
    explicit = rng.normal(0, 5, size=(1, 1, 256, 256)).astype(np.float32)
    points, labels = random_points(rng, 2), np.array([1, 1])
    body = click_body(points, labels, image_id=scene.image_id, has_mask_input=True, use_mask_input_cache=True)
    body |= {"mask_input": npy_base64(explicit), "mask_input_format": "binary"}
    masks, _ = segment_binary(http, body)

    with_explicit = expected_mask(scene.predictor, points, labels, mask_input=explicit)
    with_cached = expected_mask(scene.predictor, points, labels, mask_input=previous)
    assert iou(masks[0], with_explicit) >= MIN_IOU_VS_PREDICTOR
    assert iou(masks[0], with_explicit) > iou(masks[0], with_cached)


def test_has_mask_input_with_nothing_cached_and_no_mask_input_is_refused(
    http: httpx.Client, rng: np.random.Generator
) -> None:
    image_id = new_image_id()
    post(http, EMBED, {"image": image_payload(random_image(rng)), "image_id": image_id})

    response = http.post(SEGMENT, json=click_body(random_points(rng, 1), image_id=image_id, has_mask_input=True))
    assert_error(response, 422, "mask_input")


# ---- client-supplied embeddings -------------------------------------------------------------------------


def test_binary_client_embeddings_give_the_image_paths_mask(
    http: httpx.Client, scene: Scene, cached_embedding: np.ndarray, rng: np.random.Generator
) -> None:
    points = random_points(rng, 2)
    from_image, _ = segment_binary(http, click_body(points, image_id=scene.image_id))
    body = click_body(
        points, embeddings=npy_base64(cached_embedding), embeddings_format="binary", orig_im_size=list(IMAGE_SHAPE)
    )
    from_client, _ = segment_binary(http, body)

    # The same (fp16-rounded) embedding either way: the same mask exactly.
    assert np.array_equal(from_client, from_image)


def test_json_client_embeddings_give_the_image_paths_mask(
    http: httpx.Client, scene: Scene, cached_embedding: np.ndarray, rng: np.random.Generator
) -> None:
    points = random_points(rng, 2)
    from_image, _ = segment_binary(http, click_body(points, image_id=scene.image_id))
    body = click_body(points, embeddings=cached_embedding.tolist(), orig_im_size=list(IMAGE_SHAPE))
    from_client, _ = segment_binary(http, {**body, "embeddings_format": "json"})

    assert np.array_equal(from_client, from_image)


def test_client_embeddings_without_orig_im_size_are_refused(
    http: httpx.Client, cached_embedding: np.ndarray, rng: np.random.Generator
) -> None:
    body = click_body(random_points(rng, 1), embeddings=npy_base64(cached_embedding), embeddings_format="binary")
    assert_error(http.post(SEGMENT, json=body), 422, "orig_im_size")


def test_client_embeddings_of_the_wrong_shape_are_refused(http: httpx.Client, rng: np.random.Generator) -> None:
    wrong = rng.normal(size=(1, 256, 32, 32)).astype(np.float32)
    body = click_body(
        random_points(rng, 1), embeddings=npy_base64(wrong), embeddings_format="binary", orig_im_size=list(IMAGE_SHAPE)
    )
    assert_error(http.post(SEGMENT, json=body), 422, "embeddings")


class _MakesDirectoryWhenUnpickled:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.path),)


@pytest.mark.parametrize("field", ["embeddings", "mask_input", "image.value"])
def test_a_pickled_npy_is_refused_and_never_unpickled(
    http: httpx.Client, scene: Scene, tmp_path: Path, field: str
) -> None:
    marker = tmp_path / "unpickled"
    payload = npy_base64(np.array([_MakesDirectoryWhenUnpickled(marker)], dtype=object), allow_pickle=True)
    route, body = {
        "embeddings": (SEGMENT, {"embeddings": payload, "embeddings_format": "binary", "orig_im_size": [240, 320]}),
        "mask_input": (
            SEGMENT,
            {"image_id": scene.image_id, "has_mask_input": True, "mask_input": payload, "mask_input_format": "binary"},
        ),
        "image.value": (EMBED, {"image": {"type": "numpy", "value": payload}}),
    }[field]

    response = http.post(route, json=body)

    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code, field)
    assert not marker.exists()


# ---- image sources --------------------------------------------------------------------------------------


def test_unknown_image_id_without_image_is_404(http: httpx.Client, rng: np.random.Generator) -> None:
    response = http.post(SEGMENT, json=click_body(random_points(rng, 1), image_id=new_image_id()))
    body = assert_error(response, 404, "image_id")
    assert body["error"] == "CacheMiss"


def test_an_uncached_image_id_with_its_image_is_embedded_and_cached(
    http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    image_id = new_image_id()
    points = random_points(rng, 2)
    runs = encoder_runs()

    first = post(http, SEGMENT, click_body(points, image_id=image_id, image=image_payload(scene.pixels))).json()
    follow_up = post(http, SEGMENT, click_body(points, image_id=image_id)).json()

    assert first["image_id"] == follow_up["image_id"] == image_id
    assert encoder_runs() - runs == 1


def test_a_numpy_image_payload_is_read_as_rgb_pixels(
    http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    points, labels = random_points(rng, 2), np.array([1, 0])
    image = {"type": "numpy", "value": npy_base64(scene.pixels)}
    masks, _ = segment_binary(http, click_body(points, labels, image=image, image_id=new_image_id()))

    expected, _, _ = scene.predictor.predict(points, labels, multimask_output=False)
    assert iou(masks[0], expected[0]) >= MIN_IOU_VS_PREDICTOR


def test_a_server_file_path_as_image_is_refused(http: httpx.Client) -> None:
    response = http.post(EMBED, json={"image": {"type": "file", "value": "/etc/passwd"}})
    assert_error(response, 403, "image.type")


def test_an_image_url_is_refused_while_url_input_is_disabled(http: httpx.Client) -> None:
    response = http.post(EMBED, json={"image": {"type": "url", "value": "http://127.0.0.1/cat.png"}})
    assert_error(response, 403, "image.value")


# ---- prompt validation ----------------------------------------------------------------------------------


def test_a_point_outside_the_image_is_refused(http: httpx.Client, scene: Scene) -> None:
    _, width = IMAGE_SHAPE
    response = http.post(
        SEGMENT, json={"image_id": scene.image_id, "point_coords": [[width + 5, 1]], "point_labels": [1]}
    )
    assert_error(response, 422, "point_coords")


def test_fewer_labels_than_points_are_refused(http: httpx.Client, scene: Scene) -> None:
    response = http.post(
        SEGMENT, json={"image_id": scene.image_id, "point_coords": [[1, 1], [2, 2]], "point_labels": [1]}
    )
    assert_error(response, 422, "point_labels")


def test_an_inverted_box_is_refused(http: httpx.Client, scene: Scene) -> None:
    response = http.post(SEGMENT, json={"image_id": scene.image_id, "box": [100, 10, 50, 60]})
    assert_error(response, 422, "box")


def test_a_nan_coordinate_is_refused(http: httpx.Client, scene: Scene) -> None:
    # Strict JSON has no NaN, but Python's json.dumps writes it by default, so clients do send it.
    content = json.dumps({"image_id": scene.image_id, "point_coords": [[float("nan"), 1]], "point_labels": [1]})
    assert "NaN" in content
    response = http.post(SEGMENT, content=content, headers={"content-type": "application/json"})

    assert 400 <= response.status_code < 500, response.text
    assert "Traceback" not in response.text
    body = response.json()
    assert set(body) == {"error", "field", "reason"}, body
    assert str(body["field"]).startswith("point_coords"), body


# ---- the handle API (no JSON) ---------------------------------------------------------------------------


def handle_segment(serve_app: ServeApp, request: SegmentImageRequest) -> SegmentResult:
    result: SegmentResult = serve_app.handle.segment.remote(request).result()
    return result


def test_handle_segment_json_equals_the_http_answer(
    serve_app: ServeApp, http: httpx.Client, scene: Scene, rng: np.random.Generator
) -> None:
    points = random_points(rng, 2)
    body = click_body(points, image_id=scene.image_id)
    over_http = post(http, SEGMENT, body).json()

    result = handle_segment(serve_app, SegmentImageRequest(**body))

    assert isinstance(result.body, dict)
    assert result.media_type == "application/json"
    assert result.body["masks"] == over_http["masks"]
    assert result.body["low_res_masks"] == over_http["low_res_masks"]
    assert result.body["image_id"] == scene.image_id
    np.testing.assert_allclose(result.body["scores"], over_http["scores"], rtol=1e-6)


def test_handle_segment_binary_matches_the_predictor(
    serve_app: ServeApp, scene: Scene, rng: np.random.Generator
) -> None:
    points = one_click(rng, scene.predictor)
    request = SegmentImageRequest(**click_body(points, image_id=scene.image_id, format="binary"))

    result = handle_segment(serve_app, request)

    assert isinstance(result.body, bytes)
    assert result.media_type == "application/octet-stream"
    masks, low_res = npz_to_segment(result.body)
    assert low_res.shape == (1, 256, 256)
    assert iou(masks[0], expected_mask(scene.predictor, points, np.array([1]))) >= MIN_IOU_VS_PREDICTOR


def test_handle_segment_rle_decodes_to_the_binary_mask(
    serve_app: ServeApp, scene: Scene, rng: np.random.Generator
) -> None:
    body = click_body(random_points(rng, 2), image_id=scene.image_id)

    rle = handle_segment(serve_app, SegmentImageRequest(**body, format="rle"))
    binary = handle_segment(serve_app, SegmentImageRequest(**body, format="binary"))

    assert isinstance(rle.body, dict)
    assert isinstance(binary.body, bytes)
    assert np.array_equal(rle_to_mask(rle.body["masks"][0]), npz_to_segment(binary.body)[0][0])


def test_handle_embed_takes_an_ndarray_image(serve_app: ServeApp) -> None:
    pixels = random_image(np.random.default_rng())
    request = EmbedImageRequest(image=ImagePayload(type="numpy", value=pixels), format="binary")

    result: EmbedResult = serve_app.handle.embed.remote(request).result()

    assert result.response.image_id.startswith("sha256:")
    assert result.response.original_size == IMAGE_SHAPE
    assert result.response.cached is False
    assert result.npy is not None
    assert npy_to_embedding(result.npy).shape == (1, 256, 64, 64)


def test_handle_raises_invalid_input_naming_the_field(serve_app: ServeApp, scene: Scene) -> None:
    request = SegmentImageRequest(image_id=scene.image_id, point_coords=[[1, 1], [2, 2]], point_labels=[1])

    with pytest.raises(InvalidInput) as raised:
        handle_segment(serve_app, request)

    assert raised.value.field == "point_labels"


# ---- health and docs ------------------------------------------------------------------------------------


def test_healthz_answers(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200


def test_readyz_names_the_served_model(http: httpx.Client, tiny_model: LoadedModel) -> None:
    response = http.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["ready"] is True
    assert response.json()["model_id"] == tiny_model.identity.model_id


def test_openapi_docs_list_both_routes(http: httpx.Client) -> None:
    assert http.get("/docs").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    assert {EMBED, SEGMENT} <= set(paths)
