"""Several prompts in one `segment_image` request: each answered exactly as it would be alone, in order, and as
SamPredictor.predict_torch answers the same batch; bad prompts refused by index."""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from segment_anything import SamPredictor

from sam_core.cache import MemoryEmbeddingCache
from sam_core.client import AsyncSamClient, SamClient, SegmentArrays
from sam_core.embedding import ImageEmbedding
from sam_core.errors import ImageTooLarge, InvalidInput
from sam_core.model.build import LoadedModel
from sam_core.model.decoder import OnnxDecoder
from sam_core.model.encoder import ImageEncoder
from sam_core.services.decoder import DecoderService
from sam_core.settings import ImageLimits
from sam_core.wire.jobs import prompt_mask_inputs, segment_job
from sam_core.wire.messages import JobPrompt, SegmentJob
from sam_core.wire.npy import npz_to_prompts, npz_to_segment
from sam_core.wire.schemas import MAX_PROMPTS, SegmentImageRequest, SegmentPromptsResponse
from tests.conftest import ServeApp

MIN_IOU = 0.99
MAX_RELATIVE_L2 = 1e-3
SEGMENT = "/sam/segment_image"


def relative_l2(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def random_box(rng: np.random.Generator, size: tuple[int, int]) -> list[float]:
    height, width = size
    x0, y0 = rng.uniform(0, width - 21), rng.uniform(0, height - 21)
    return [round(float(v), 1) for v in (x0, y0, rng.uniform(x0 + 20, width - 1), rng.uniform(y0 + 20, height - 1))]


def random_click(rng: np.random.Generator, size: tuple[int, int]) -> list[float]:
    height, width = size
    return [round(float(rng.uniform(0, width - 1)), 1), round(float(rng.uniform(0, height - 1)), 1)]


def mixed_prompts(rng: np.random.Generator, size: tuple[int, int]) -> list[JobPrompt]:
    """Boxes, clicks, a click with a box, two labelled clicks, and a box with a mask input."""
    mask = rng.normal(0, 4, size=(1, 1, 256, 256)).astype(np.float32)
    return [
        JobPrompt(point_coords=[], point_labels=[], box=random_box(rng, size)),
        JobPrompt(point_coords=[random_click(rng, size)], point_labels=[1.0]),
        JobPrompt(point_coords=[random_click(rng, size)], point_labels=[1.0], box=random_box(rng, size)),
        JobPrompt(point_coords=[random_click(rng, size), random_click(rng, size)], point_labels=[1.0, 0.0]),
        JobPrompt(point_coords=[], point_labels=[], box=random_box(rng, size), mask_input=mask),
        JobPrompt(point_coords=[], point_labels=[], box=random_box(rng, size)),
    ]


@pytest.fixture
def scene(tiny_model: LoadedModel, tiny_decoder: OnnxDecoder) -> tuple[DecoderService, SamPredictor, ImageEmbedding]:
    """A fresh random image of a random size: the decoder service, a predictor set on it, its embedding."""
    rng = np.random.default_rng()
    height, width = (int(v) for v in rng.integers(200, 1200, size=2))
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    predictor = SamPredictor(tiny_model.sam)
    predictor.set_image(image)
    cache = MemoryEmbeddingCache(max_bytes=16 * 2**20, ttl_s=60)
    service = DecoderService(tiny_decoder, tiny_model.identity, cache, limits=ImageLimits())
    return service, predictor, ImageEncoder(tiny_model.sam).embed(image)


def segment(service: DecoderService, job: SegmentJob) -> Any:
    return asyncio.run(service.segment(job)).body


# ---- the decoder service -----------------------------------------------------------------------------


@pytest.mark.parametrize("multimask", [False, True], ids=["single-mask", "multimask"])
def test_each_prompt_is_answered_exactly_as_it_would_be_alone(scene: tuple, multimask: bool) -> None:
    service, _, embedding = scene
    prompts = mixed_prompts(np.random.default_rng(), embedding.original_size)

    many = SegmentJob(None, [], [], embedding=embedding, multimask_output=multimask, format="binary", prompts=prompts)
    masks, low_res, scores = npz_to_prompts(segment(service, many))
    many_json = segment(service, SegmentJob(None, [], [], embedding=embedding, multimask_output=multimask,
                                            format="json", prompts=prompts))  # fmt: skip

    per_prompt = 3 if multimask else 1
    assert masks.shape == (len(prompts), per_prompt, *embedding.original_size)
    assert low_res.shape == (len(prompts), per_prompt, 256, 256)
    assert scores.shape == (len(prompts), per_prompt)
    assert len(many_json["results"]) == len(prompts)
    for index, prompt in enumerate(prompts):
        alone = SegmentJob(
            None,
            prompt.point_coords,
            prompt.point_labels,
            box=prompt.box,
            embedding=embedding,
            has_mask_input=prompt.mask_input is not None,
            mask_input=prompt.mask_input,
            multimask_output=multimask,
        )
        alone_masks, alone_low_res = npz_to_segment(segment(service, SegmentJob(**{**vars(alone), "format": "binary"})))
        alone_json = segment(service, alone)
        assert np.array_equal(masks[index], alone_masks), f"prompt {index}: masks differ from its answer alone"
        assert np.array_equal(low_res[index], alone_low_res), f"prompt {index}: low-res logits differ"
        assert many_json["results"][index] == {k: alone_json[k] for k in ("masks", "low_res_masks", "scores")}
        np.testing.assert_allclose(scores[index], alone_json["scores"], rtol=1e-6)


def test_a_batch_of_boxes_matches_predict_torch(scene: tuple) -> None:
    import torch

    service, predictor, embedding = scene
    rng = np.random.default_rng()
    boxes = [random_box(rng, embedding.original_size) for _ in range(8)]
    job = SegmentJob(
        None,
        [],
        [],
        embedding=embedding,
        multimask_output=True,
        format="binary",
        prompts=[JobPrompt(point_coords=[], point_labels=[], box=box) for box in boxes],
    )
    masks, low_res, scores = npz_to_prompts(segment(service, job))

    with torch.no_grad():
        transformed = predictor.transform.apply_boxes_torch(torch.tensor(boxes), embedding.original_size)
        expected, expected_scores, expected_low_res = predictor.predict_torch(
            None, None, boxes=transformed, multimask_output=True, return_logits=True
        )
    expected_masks = (expected > 0).numpy()
    for index in range(len(boxes)):
        for token in range(3):
            assert iou(masks[index, token], expected_masks[index, token]) >= MIN_IOU, f"box {index}, mask {token}"
    assert relative_l2(low_res, expected_low_res.numpy()) <= MAX_RELATIVE_L2
    np.testing.assert_allclose(scores, expected_scores.numpy(), atol=1e-4)


def test_a_bad_prompt_is_refused_by_its_index_before_any_is_decoded(scene: tuple) -> None:
    service, _, embedding = scene
    height, width = embedding.original_size
    prompts = mixed_prompts(np.random.default_rng(), embedding.original_size)
    prompts[3] = JobPrompt(point_coords=[], point_labels=[], box=[10.0, 10.0, width + 50.0, height / 2])

    with pytest.raises(InvalidInput) as raised:
        segment(service, SegmentJob(None, [], [], embedding=embedding, prompts=prompts))
    assert raised.value.field == "prompts.3.box"


def test_a_binary_answer_over_the_mask_budget_is_refused(scene: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    from sam_core.services import decoder as service_module

    service, _, embedding = scene
    prompts = mixed_prompts(np.random.default_rng(), embedding.original_size)
    height, width = embedding.original_size
    monkeypatch.setattr(service_module, "MAX_BINARY_MASK_BYTES", len(prompts) * height * width - 1)

    with pytest.raises(ImageTooLarge) as raised:
        segment(service, SegmentJob(None, [], [], embedding=embedding, format="binary", prompts=prompts))
    assert raised.value.field == "prompts"
    body = segment(service, SegmentJob(None, [], [], embedding=embedding, format="rle", prompts=prompts))
    assert len(body["results"]) == len(prompts), "the json formats are not bounded by the binary budget"


# ---- the request -------------------------------------------------------------------------------------


def test_prompts_and_the_single_prompt_fields_exclude_each_other() -> None:
    request = SegmentImageRequest(
        image_id="a", point_coords=[[1, 2]], point_labels=[1], prompts=[{"box": [1, 2, 3, 4]}]
    )

    with pytest.raises(InvalidInput, match="point_coords, point_labels") as raised:
        segment_job(request)
    assert raised.value.field == "prompts"


def test_a_prompts_request_does_not_use_the_cached_logits() -> None:
    job = segment_job(SegmentImageRequest(image_id="a", prompts=[{"box": [1, 2, 3, 4]}], use_mask_input_cache=True))

    assert job.prompts is not None
    assert job.prompts[0].box == [1.0, 2.0, 3.0, 4.0]
    assert not job.use_mask_input_cache
    assert not job.has_mask_input


def test_a_bad_mask_input_of_one_prompt_names_it() -> None:
    request = SegmentImageRequest(
        image_id="a",
        prompts=[{"box": [1, 2, 3, 4]}, {"box": [1, 2, 3, 4], "mask_input": [[[1, 1], [2], [1, 5]]]}],
    )
    job = segment_job(request)

    with pytest.raises(InvalidInput) as raised:
        prompt_mask_inputs(request, job)
    assert raised.value.field == "prompts.1.mask_input"


# ---- over HTTP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(serve_app: ServeApp) -> Any:
    with httpx.Client(base_url=serve_app.url, timeout=120.0) as client:
        yield client


@pytest.fixture(scope="module")
def cached_image(http: httpx.Client) -> tuple[str, tuple[int, int]]:
    rng = np.random.default_rng()
    pixels = rng.integers(0, 256, size=(300, 420, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    image_id = f"prompts-{uuid.uuid4()}"
    image = {"type": "base64", "value": base64.b64encode(buffer.getvalue()).decode("ascii")}
    http.post("/sam/embed_image", json={"image": image, "image_id": image_id, "format": "metadata"}).raise_for_status()
    return image_id, (300, 420)


def test_prompts_over_http_are_answered_in_order_as_single_requests_are(
    http: httpx.Client, cached_image: tuple[str, tuple[int, int]]
) -> None:
    image_id, size = cached_image
    rng = np.random.default_rng()
    prompts: list[dict[str, Any]] = [
        {"box": random_box(rng, size)},
        {"point_coords": [random_click(rng, size)], "point_labels": [1]},
    ]

    many = http.post(SEGMENT, json={"image_id": image_id, "prompts": prompts, "format": "rle"})

    assert many.status_code == 200, many.text
    body = many.json()
    assert body["image_id"] == image_id
    assert len(body["results"]) == 2
    for prompt, result in zip(prompts, body["results"], strict=True):
        single = {"point_coords": [], "point_labels": [], **prompt}
        alone = http.post(SEGMENT, json={"image_id": image_id, **single, "format": "rle"}).json()
        assert result == {k: alone[k] for k in ("masks", "low_res_masks", "scores")}


def test_binary_prompts_over_http_carry_every_prompt_and_its_scores(
    http: httpx.Client, cached_image: tuple[str, tuple[int, int]]
) -> None:
    image_id, size = cached_image
    rng = np.random.default_rng()
    body = {"image_id": image_id, "prompts": [{"box": random_box(rng, size)} for _ in range(5)]}

    answer = http.post(SEGMENT, json={**body, "format": "binary", "multimask_output": True})

    assert answer.status_code == 200, answer.text
    masks, low_res, scores = npz_to_prompts(answer.content)
    assert masks.shape == (5, 3, *size)
    assert low_res.shape == (5, 3, 256, 256)
    assert scores.shape == (5, 3)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"prompts": []}, "prompts"),
        ({"prompts": [{"box": [1, 2, 30, 40]}] * (MAX_PROMPTS + 1)}, "prompts"),
        ({"prompts": [{"box": [1, 2, 30, 40]}], "point_coords": [[5, 5]], "point_labels": [1]}, "prompts"),
        ({"prompts": [{"box": [1, 2, 30, 40]}, {"box": [1, 2, 30, 40]}, {"box": [50, 2, 30, 40]}]}, "prompts.2.box"),
        ({"prompts": [{"boxes": [1, 2, 30, 40]}]}, "prompts.0.boxes"),
        ({"prompts": [{"point_coords": [[1, 2]], "point_labels": [7]}]}, "prompts.0.point_labels"),
    ],
    ids=["empty", "over-the-limit", "with-single-fields", "bad-box", "unknown-field", "bad-label"],
)
def test_bad_prompts_are_a_422_naming_the_field(
    http: httpx.Client, cached_image: tuple[str, tuple[int, int]], extra: dict[str, Any], field: str
) -> None:
    image_id, _ = cached_image

    answer = http.post(SEGMENT, json={"image_id": image_id, **extra})

    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert http.get("/healthz").status_code == 200


def test_the_client_sends_prompts_and_reads_both_answers(
    serve_app: ServeApp, cached_image: tuple[str, tuple[int, int]]
) -> None:
    image_id, size = cached_image
    rng = np.random.default_rng()
    mask = rng.normal(0, 4, size=(256, 256)).astype(np.float32)
    prompts: list[dict[str, Any]] = [
        {"box": random_box(rng, size)},
        {"point_coords": [random_click(rng, size)]},
        {"box": random_box(rng, size), "mask_input": mask},
    ]

    with SamClient(serve_app.url, timeout=120.0) as sam:
        listed = sam.segment_prompts(prompts, image_id=image_id, format="rle")
        arrays = sam.segment_prompts(prompts, image_id=image_id, format="binary", multimask_output=True)
        alone = sam.segment_image(image_id=image_id, box=prompts[2]["box"], mask_input=mask, format="rle")

    assert isinstance(listed, SegmentPromptsResponse)
    assert len(listed.results) == 3
    assert listed.results[2].masks == alone.masks, "the prompt's own mask input was sent with it"
    assert isinstance(arrays, SegmentArrays)
    assert arrays.masks.shape == (3, 3, *size)
    assert arrays.scores is not None
    assert arrays.scores.shape == (3, 3)


def test_the_async_client_sends_prompts(serve_app: ServeApp, cached_image: tuple[str, tuple[int, int]]) -> None:
    image_id, size = cached_image
    boxes = [random_box(np.random.default_rng(), size) for _ in range(2)]

    async def ask() -> Any:
        async with AsyncSamClient(serve_app.url, timeout=120.0) as sam:
            return await sam.segment_prompts([{"box": box} for box in boxes], image_id=image_id)

    answer = asyncio.run(ask())

    assert isinstance(answer, SegmentPromptsResponse)
    assert [len(result.masks) for result in answer.results] == [1, 1]
