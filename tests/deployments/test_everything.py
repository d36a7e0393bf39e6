"""Segment everything: the same masks as `SamAutomaticMaskGenerator` on the same weights, over HTTP and handles,
with every parameter range-checked, and a run that stops when its client goes away."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import rle_to_mask as amg_rle_to_mask

from sam_cli.main import main
from sam_core.client import AsyncSamClient, SamClient, SamClientError
from sam_core.embedding import ImageEmbedding
from sam_core.errors import ImageTooLarge, InvalidInput
from sam_core.generator_options import EverythingOptions
from sam_core.model.build import LoadedModel
from sam_core.model.decoder import OnnxDecoder
from sam_core.model.encoder import ImageEncoder
from sam_core.model.mask_generator import (
    GenerationCancelled,
    check_options,
    check_work,
    crop_boxes,
    generate_everything,
    points_to_decode,
    total_points,
)
from sam_core.wire.generator_schemas import SegmentEverythingRequest, SegmentEverythingResponse
from sam_core.wire.masks import polygons_to_mask
from tests.conftest import ServeApp, png_to_mask, rle_to_mask, second_app

pytestmark = pytest.mark.slow

EVERYTHING = "/sam/segment_everything"
SIZE = (240, 320)
MIN_IOU = 0.99
MAX_AREA_DIFFERENCE = 1e-3
"""Relative: the ONNX and torch decoders differ by float rounding, which flips a few pixels whose logits are
~1e-6 from 0 (random-weight masks are all boundary: 7% of them differ by at most 1.4e-4 of their area)."""

NO_FILTERS = EverythingOptions(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
"""Every mask of every point kept (108): the widest comparison random weights allow."""
FILTERS_AND_CROPS = EverythingOptions(
    points_per_side=4,
    pred_iou_thresh=0.01,
    stability_score_thresh=0.2,
    stability_score_offset=0.01,
    box_nms_thresh=0.95,
    crop_n_layers=1,
    min_mask_region_area=50,
)
"""The IoU and stability filters, crop layers with cross-crop NMS, and the small-region clean-up."""
FEW_POINTS_AND_CROPS = EverythingOptions(
    points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.95, crop_n_layers=1
)


def scene(seed: int = 0, size: tuple[int, int] = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    height, width = size
    image = np.zeros((height, width, 3), np.uint8)
    for _ in range(30):
        y, x = rng.integers(0, height), rng.integers(0, width)
        image[y : y + rng.integers(20, 200), x : x + rng.integers(20, 200)] = rng.integers(0, 255, 3)
    return image


def png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def reference(model: LoadedModel, image: np.ndarray, options: EverythingOptions) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = SamAutomaticMaskGenerator(model.sam, **options.as_kwargs()).generate(image)
    return records


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_same_masks(expected: list[dict[str, Any]], got: list[dict[str, Any]], masks: list[np.ndarray]) -> None:
    """Same count, same order; each mask at IoU >= 0.99 with equal bbox and (within float rounding) area."""
    assert len(got) == len(expected)
    for want, have, mask in zip(expected, got, masks, strict=True):
        assert iou(mask, want["segmentation"]) >= MIN_IOU
        assert have["bbox"] == want["bbox"]
        assert abs(have["area"] - want["area"]) <= MAX_AREA_DIFFERENCE * want["area"]
        assert have["area"] == int(mask.sum())
        assert have["predicted_iou"] == pytest.approx(want["predicted_iou"], abs=1e-4)
        assert have["stability_score"] == pytest.approx(want["stability_score"], abs=2e-3)
        assert have["point_coords"][0] == pytest.approx(want["point_coords"][0])
        assert have["crop_box"] == want["crop_box"]


def crop_embeddings(model: LoadedModel, image: np.ndarray, options: EverythingOptions) -> list[ImageEmbedding]:
    encoder = ImageEncoder(model.sam, device=model.device)
    size = (image.shape[0], image.shape[1])
    return [encoder.embed(np.ascontiguousarray(image[y0:y1, x0:x1])) for x0, y0, x1, y1 in crop_boxes(size, options)]


# ---- the generator, in process -----------------------------------------------------------------------


@pytest.mark.parametrize("options", [NO_FILTERS, FILTERS_AND_CROPS], ids=["no-filters", "filters-and-crops"])
def test_generator_finds_the_masks_sam_automatic_mask_generator_finds(
    tiny_model: LoadedModel, tiny_decoder: OnnxDecoder, options: EverythingOptions
) -> None:
    image = scene()
    expected = reference(tiny_model, image, options)
    assert expected, "the setting keeps some masks"
    done: list[int] = []
    got = generate_everything(tiny_decoder, crop_embeddings(tiny_model, image, options), options, progress=done.append)
    assert_same_masks(expected, got, [amg_rle_to_mask(record["segmentation"]) for record in got])
    assert sum(done) == total_points(SIZE, options)


def test_a_cancelled_run_stops_at_the_next_batch(tiny_model: LoadedModel, tiny_decoder: OnnxDecoder) -> None:
    options = EverythingOptions(points_per_side=8, points_per_batch=4)
    cancelled = threading.Event()
    done: list[int] = []

    def progress(points: int) -> None:
        done.append(points)
        cancelled.set()

    embeddings = crop_embeddings(tiny_model, scene(), options)
    with pytest.raises(GenerationCancelled):
        generate_everything(tiny_decoder, embeddings, options, cancelled=cancelled, progress=progress)
    assert done == [4], "one batch of 64 points decoded, then the run stopped"


def test_settings_the_generator_cannot_run_are_refused() -> None:
    with pytest.raises(ImageTooLarge) as too_big:
        check_options((2000, 3000), EverythingOptions(points_per_batch=1024))
    assert too_big.value.field == "points_per_batch"
    assert "points_per_batch <= 59" in too_big.value.reason
    check_options((1500, 2250), EverythingOptions())  # the generator's defaults fit a 3.4 MP image
    with pytest.raises(ImageTooLarge, match="points_per_batch <= 26"):
        check_options((1500, 2250), EverythingOptions(), max_batch_bytes=1024**3)
    with pytest.raises(InvalidInput) as no_points:
        check_options(SIZE, EverythingOptions(points_per_side=4, crop_n_layers=2, crop_n_points_downscale_factor=4))
    assert no_points.value.field == "crop_n_points_downscale_factor"


@pytest.mark.parametrize(
    "options",
    [
        EverythingOptions(),
        EverythingOptions(points_per_side=16, crop_n_layers=1, crop_n_points_downscale_factor=2),
        EverythingOptions(points_per_side=9, crop_n_layers=2, crop_n_points_downscale_factor=2),
        EverythingOptions(points_per_side=128, crop_n_layers=2),
    ],
)
def test_the_decodes_counted_up_front_are_the_generators(options: EverythingOptions) -> None:
    """Counted without the image: the same as segment_anything's crops give on images of any shape."""
    for size in [(48, 64), (1500, 2250), (4000, 300)]:
        assert points_to_decode(options) == total_points(size, options)


def test_a_run_of_more_decodes_than_the_cap_is_refused_naming_points_per_side() -> None:
    check_work(EverythingOptions(points_per_side=128), 16_384)
    with pytest.raises(InvalidInput) as refused:
        check_work(EverythingOptions(points_per_side=128, crop_n_layers=1), 16_384)
    assert refused.value.field == "points_per_side"
    assert "81920 decodes (at most 16384" in refused.value.reason


# ---- over HTTP and handles ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(serve_app: ServeApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_app.url, timeout=300) as client:
        yield client


def body(options: EverythingOptions, **fields: Any) -> dict[str, Any]:
    return {**options.as_kwargs(), **fields}


def test_http_answer_matches_the_generator_in_every_format(http: httpx.Client, tiny_model: LoadedModel) -> None:
    image = scene(1)
    expected = reference(tiny_model, image, NO_FILTERS)
    image_id = f"everything-{uuid.uuid4()}"
    payload = {"type": "base64", "value": png_base64(image)}
    answer = http.post(EVERYTHING, json=body(NO_FILTERS, image=payload, image_id=image_id))
    assert answer.status_code == 200, answer.text
    parsed = SegmentEverythingResponse.model_validate(answer.json())
    assert parsed.image_id == image_id
    records = answer.json()["masks"]
    masks = [rle_to_mask(record["segmentation"]) for record in records]
    # The cache keeps embeddings at fp16: the masks still match the in-process fp32 generator.
    assert_same_masks(expected, records, masks)

    # By image_id alone (the embedding is cached), as polygons and PNGs: the same masks (a smaller grid).
    small = EverythingOptions(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    as_rle, as_json, as_png = (
        http.post(EVERYTHING, json=body(small, image_id=image_id, format=fmt)).json()["masks"]
        for fmt in ("rle", "json", "png")
    )
    assert len(as_rle) == 12
    for rle, polygon, png in zip(as_rle, as_json, as_png, strict=True):
        mask = rle_to_mask(rle["segmentation"])
        assert np.array_equal(png_to_mask(base64.b64decode(png["segmentation"])), mask)
        redrawn = polygons_to_mask([polygon["segmentation"]], SIZE)
        assert redrawn.sum() > 0
        assert iou(redrawn, mask) > 0  # the largest outline only: part of a random-weight mask


def test_crop_layers_over_http_and_then_by_image_id(http: httpx.Client, tiny_model: LoadedModel) -> None:
    image = scene(2)
    expected = reference(tiny_model, image, FEW_POINTS_AND_CROPS)
    image_id = f"crops-{uuid.uuid4()}"
    payload = {"type": "base64", "value": png_base64(image)}
    # Embedded without crops first: a crop run by image_id alone needs the image.
    assert http.post("/sam/embed_image", json={"image": payload, "image_id": image_id, "format": "metadata"}).is_success
    refused = http.post(EVERYTHING, json=body(FEW_POINTS_AND_CROPS, image_id=image_id))
    assert refused.status_code == 404
    assert refused.json()["field"] == "image"
    for request in (
        body(FEW_POINTS_AND_CROPS, image=payload, image_id=image_id),
        body(FEW_POINTS_AND_CROPS, image_id=image_id),
    ):
        answer = http.post(EVERYTHING, json=request)
        assert answer.status_code == 200, answer.text
        records = answer.json()["masks"]
        assert_same_masks(expected, records, [rle_to_mask(record["segmentation"]) for record in records])


def test_handle_callers_get_the_same_records(serve_app: ServeApp, http: httpx.Client) -> None:
    image = scene(3)
    options = EverythingOptions(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    image_id = f"handle-{uuid.uuid4()}"
    payload = {"type": "base64", "value": png_base64(image)}
    over_http = http.post(EVERYTHING, json=body(options, image=payload, image_id=image_id)).json()
    request = SegmentEverythingRequest(image_id=image_id, **options.as_kwargs())
    result = serve_app.handle.segment_everything.remote(request).result(timeout_s=120)
    assert isinstance(result.body, dict)
    assert result.body["masks"] == over_http["masks"]
    assert result.replica


BAD_PARAMETERS = [
    ("points_per_side", 0),
    ("points_per_side", 129),
    ("points_per_batch", 0),
    ("pred_iou_thresh", 1.5),
    ("stability_score_thresh", -0.1),
    ("stability_score_offset", -1.0),
    ("box_nms_thresh", 2),
    ("crop_n_layers", 3),
    ("crop_nms_thresh", -1),
    ("crop_overlap_ratio", 1.0),
    ("crop_n_points_downscale_factor", 0),
    ("min_mask_region_area", -5),
    ("format", "binary"),
    ("points_per_side", "many"),
]


def test_bad_input_is_a_4xx_naming_the_field_and_the_service_stays_healthy(
    http: httpx.Client, serve_app: ServeApp
) -> None:
    image = {"type": "base64", "value": png_base64(scene(4))}
    for name, value in BAD_PARAMETERS:
        answer = http.post(EVERYTHING, json={"image": image, name: value})
        assert answer.status_code == 422, (name, value, answer.text)
        assert answer.json()["field"] == name, (name, answer.json())
    crop_points = http.post(
        EVERYTHING, json={"image": image, "points_per_side": 4, "crop_n_layers": 2, "crop_n_points_downscale_factor": 4}
    )
    assert crop_points.status_code == 422
    assert crop_points.json()["field"] == "crop_n_points_downscale_factor"
    assert http.post(EVERYTHING, json={}).json()["field"] == "image"
    unknown = http.post(EVERYTHING, json={"image_id": f"never-{uuid.uuid4()}"})
    assert (unknown.status_code, unknown.json()["field"]) == (404, "image_id")
    big = {"type": "base64", "value": png_base64(np.zeros((600, 610, 3), np.uint8))}
    batch = http.post(EVERYTHING, json={"image": big, "points_per_batch": 1024, "points_per_side": 1})
    assert (batch.status_code, batch.json()["field"]) == (413, "points_per_batch")
    limit = serve_app.settings.images.max_side
    over = {"type": "base64", "value": png_base64(np.zeros((8, limit + 1, 3), np.uint8))}
    too_large = http.post(EVERYTHING, json={"image": over, "points_per_side": 1})
    assert too_large.status_code == 413
    assert http.get("/readyz").json()["ready"]


def test_a_client_that_disconnects_stops_the_run(serve_app: ServeApp) -> None:
    """Ray Serve cancels the request when the HTTP client goes away; the run stops at its next batch, so the
    replica's generator thread is free for the next run at once instead of after the abandoned one."""
    name = "sam-everything-cancel"
    with (
        second_app(name, serve_app.settings),
        httpx.Client(base_url=f"{serve_app.url}/{name}", timeout=300) as http,
    ):
        image = {"type": "base64", "value": png_base64(scene(5))}
        small = {"image": image, "points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
        started = time.perf_counter()
        assert http.post(EVERYTHING, json=small).status_code == 200  # embeds the image, warms the replica
        small_s = time.perf_counter() - started
        # 64 x 64 points: about a minute of decoding here, in batches of 16.
        long_run = {**small, "points_per_side": 64, "points_per_batch": 16}
        with pytest.raises(httpx.ReadTimeout):
            http.post(EVERYTHING, json=long_run, timeout=httpx.Timeout(300, read=3.0))
        started = time.perf_counter()
        assert http.post(EVERYTHING, json=small).status_code == 200
        after_s = time.perf_counter() - started
        print(f"\nsmall run {small_s:.2f} s; after an abandoned 4096-point run {after_s:.2f} s")
        assert after_s < 15.0, "the abandoned run kept the generator thread"


# ---- the clients and the command line -----------------------------------------------------------------


def test_clients_send_the_generator_parameters_and_read_the_records(
    serve_app: ServeApp, tiny_model: LoadedModel
) -> None:
    image = scene(6)
    options = EverythingOptions(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    expected = reference(tiny_model, image, options)
    with SamClient(serve_app.url) as sam:
        answer = sam.segment_everything(image, **options.as_kwargs())
        records = [mask.model_dump() for mask in answer.masks]
        assert_same_masks(expected, records, [rle_to_mask(record["segmentation"]) for record in records])
        assert answer.image_id is not None
        with pytest.raises(SamClientError) as refused:
            sam.segment_everything(image_id=answer.image_id, crop_n_layers=1)
        assert (refused.value.status, refused.value.field) == (404, "image")
    with pytest.raises(ValidationError):  # refused before it is sent
        SamClient(serve_app.url).segment_everything(image, points_per_side=0)

    async def by_id() -> SegmentEverythingResponse:
        async with AsyncSamClient(serve_app.url) as sam:
            return await sam.segment_everything(image_id=answer.image_id, **options.as_kwargs())

    assert asyncio.run(by_id()).masks == answer.masks


def test_the_command_line_writes_coco_style_records(
    capsys: pytest.CaptureFixture[str],
    tiny_model: LoadedModel,
    tiny_checkpoint: Path,
    decoder_dir: Path,
    tmp_path: Path,
) -> None:
    image = scene(7)
    path, out = tmp_path / "scene.png", tmp_path / "masks.json"
    path.write_bytes(base64.b64decode(png_base64(image)))
    flags = ["--model-type", "vit_tiny", "--checkpoint", str(tiny_checkpoint), "--cache-dir", str(decoder_dir)]
    generator = ["--points-per-side", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    code = main(["everything", str(path), "--out", str(out), *flags, "--device", "cpu", *generator])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    records = json.loads(out.read_text())
    assert summary["masks"] == len(records)
    options = EverythingOptions(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    expected = reference(tiny_model, image, options)
    assert_same_masks(expected, records, [rle_to_mask(record["segmentation"]) for record in records])

    bad = main(["everything", str(path), "--out", str(out), *flags, "--box-nms-thresh", "1.5"])
    assert bad == 2
    assert "box_nms_thresh" in capsys.readouterr().err
    # The batch-memory bound is a setting: 1024 points of 3 masks at 320x240 are 944 MB of logits.
    capped = ["--everything-max-batch-bytes", str(64 * 1024**2), "--points-per-batch", "1024"]
    assert main(["everything", str(path), "--out", str(out), *flags, "--device", "cpu", *capped]) == 2
    assert "points_per_batch <= 72" in capsys.readouterr().err
