"""The ONNX decoder reproduces SamPredictor.predict on the same weights (fidelity, fresh random inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from segment_anything import SamPredictor

from sam_core.cache.codec import decode_embedding, encode_embedding
from sam_core.embedding import ImageEmbedding
from sam_core.errors import InvalidInput
from sam_core.frames import preprocess_shape
from sam_core.model.build import LoadedModel
from sam_core.model.decoder import OnnxDecoder, upscale_logits
from sam_core.model.decoder_export import decoder_filename, ensure_decoder_file
from sam_core.model.encoder import ImageEncoder
from sam_core.model.prompts import build_prompt, onnx_prompt_inputs

MAX_RELATIVE_L2 = 1e-3


def relative_l2(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture
def scene(tiny_model: LoadedModel) -> tuple[SamPredictor, ImageEmbedding, np.random.Generator]:
    """A fresh random image, set on a predictor and embedded by our encoder."""
    rng = np.random.default_rng()
    height, width = (int(v) for v in rng.integers(200, 1400, size=2))
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    predictor = SamPredictor(tiny_model.sam)
    predictor.set_image(image)
    return predictor, ImageEncoder(tiny_model.sam).embed(image), rng


def random_points(rng: np.random.Generator, size: tuple[int, int], n: int) -> np.ndarray:
    height, width = size
    return np.stack([rng.uniform(0, width - 1, n), rng.uniform(0, height - 1, n)], axis=1).round(1)


def test_one_click_matches_predictor_best_multimask(tiny_decoder: OnnxDecoder, scene: tuple) -> None:
    # One click + padding = 2 rows: the single-mask model returns the best of the three multimask outputs.
    predictor, embedding, rng = scene
    points = random_points(rng, embedding.original_size, 1)
    out = tiny_decoder.decode(embedding, build_prompt(points.tolist(), [1], embedding.original_size))
    masks, scores, _ = predictor.predict(points, np.array([1]), multimask_output=True, return_logits=True)
    assert out.mask_logits.shape == (1, *embedding.original_size)
    assert relative_l2(out.mask_logits[0], masks[int(np.argmax(scores))]) <= MAX_RELATIVE_L2


def test_several_clicks_match_predictor_single_mask(tiny_decoder: OnnxDecoder, scene: tuple) -> None:
    predictor, embedding, rng = scene
    points = random_points(rng, embedding.original_size, 3)
    labels = np.array([1, 0, 1])
    prompt = build_prompt(points.tolist(), labels.tolist(), embedding.original_size)
    out = tiny_decoder.decode(embedding, prompt)
    masks, scores, low_res = predictor.predict(points, labels, multimask_output=False, return_logits=True)
    assert relative_l2(out.mask_logits[0], masks[0]) <= MAX_RELATIVE_L2
    assert relative_l2(out.low_res_logits[0], low_res[0]) <= MAX_RELATIVE_L2
    np.testing.assert_allclose(out.iou_scores, scores, atol=1e-4)


def test_box_matches_predictor_multimask(tiny_decoder: OnnxDecoder, scene: tuple) -> None:
    predictor, embedding, rng = scene
    height, width = embedding.original_size
    x0, x1 = sorted(rng.uniform(0, width - 1, 2).round(1))
    y0, y1 = sorted(rng.uniform(0, height - 1, 2).round(1))
    box = [x0, y0, x1 + 1, y1 + 1]
    out = tiny_decoder.decode(embedding, build_prompt([], [], embedding.original_size, box=box), multimask=True)
    masks, scores, low_res = predictor.predict(box=np.array(box), multimask_output=True, return_logits=True)
    assert out.mask_logits.shape == masks.shape
    assert relative_l2(out.mask_logits, masks) <= MAX_RELATIVE_L2
    assert relative_l2(out.low_res_logits, low_res) <= MAX_RELATIVE_L2
    np.testing.assert_allclose(out.iou_scores, scores, atol=1e-4)


def test_points_and_box_match_predictor(tiny_decoder: OnnxDecoder, scene: tuple) -> None:
    predictor, embedding, rng = scene
    height, width = embedding.original_size
    box = [width * 0.1, height * 0.2, width * 0.8, height * 0.9]
    points = random_points(rng, embedding.original_size, 2)
    labels = np.array([1, 0])
    prompt = build_prompt(points.tolist(), labels.tolist(), embedding.original_size, box=box)
    out = tiny_decoder.decode(embedding, prompt)
    masks, _, _ = predictor.predict(points, labels, box=np.array(box), multimask_output=False, return_logits=True)
    assert relative_l2(out.mask_logits[0], masks[0]) <= MAX_RELATIVE_L2


def test_mask_input_matches_predictor(tiny_decoder: OnnxDecoder, scene: tuple) -> None:
    predictor, embedding, rng = scene
    points = random_points(rng, embedding.original_size, 2)
    labels = np.array([1, 1])
    mask_input = rng.normal(0, 5, size=(1, 1, 256, 256)).astype(np.float32)
    prompt = build_prompt(points.tolist(), labels.tolist(), embedding.original_size)
    out = tiny_decoder.decode(embedding, prompt, mask_input=mask_input)
    masks, _, _ = predictor.predict(
        points, labels, mask_input=mask_input[0], multimask_output=False, return_logits=True
    )
    assert relative_l2(out.mask_logits[0], masks[0]) <= MAX_RELATIVE_L2


def test_fp16_cache_round_trip_keeps_masks(tiny_decoder: OnnxDecoder, scene: tuple) -> None:
    _, embedding, rng = scene
    restored = decode_embedding(encode_embedding(embedding))
    for _ in range(5):
        points = random_points(rng, embedding.original_size, 2)
        prompt = build_prompt(points.tolist(), [1, 0], embedding.original_size)
        exact = tiny_decoder.decode(embedding, prompt).masks
        cached = tiny_decoder.decode(restored, prompt).masks
        assert iou(exact, cached) >= 0.99


def test_wrong_mask_input_shape_is_refused(tiny_decoder: OnnxDecoder, scene: tuple) -> None:
    _, embedding, _ = scene
    prompt = build_prompt([[1, 1]], [1], embedding.original_size)
    with pytest.raises(InvalidInput) as raised:
        tiny_decoder.decode(embedding, prompt, mask_input=np.zeros((1, 256, 256), dtype=np.float32))
    assert raised.value.field == "mask_input"


def test_exported_decoder_is_reused_from_cache(tiny_model: LoadedModel, decoder_dir: Path) -> None:
    path = decoder_dir / decoder_filename(tiny_model.identity, multimask=False, quantized=False)
    assert path.exists()
    before = path.stat().st_mtime_ns
    again = ensure_decoder_file(None, tiny_model.identity, decoder_dir, multimask=False, quantized=False)
    assert again == path
    assert path.stat().st_mtime_ns == before


def test_sleeping_threads_give_the_same_masks_as_spinning_ones(
    tiny_model: LoadedModel, tiny_decoder: OnnxDecoder, decoder_dir: Path, scene: tuple
) -> None:
    _, embedding, rng = scene
    sleeping = OnnxDecoder.for_model(tiny_model.sam, tiny_model.identity, decoder_dir, threads=2, spinning=False)
    prompt = build_prompt(random_points(rng, embedding.original_size, 1).tolist(), [1], embedding.original_size)
    assert (
        relative_l2(sleeping.decode(embedding, prompt).mask_logits, tiny_decoder.decode(embedding, prompt).mask_logits)
        <= 1e-6
    )


@pytest.mark.slow
def test_int8_decoder_stays_close_to_fp32(
    tiny_model: LoadedModel, tiny_decoder: OnnxDecoder, decoder_dir: Path, scene: tuple
) -> None:
    _, embedding, rng = scene
    quantized = OnnxDecoder.for_model(tiny_model.sam, tiny_model.identity, decoder_dir, quantized=True)
    ious = []
    for _ in range(5):
        points = random_points(rng, embedding.original_size, 2)
        prompt = build_prompt(points.tolist(), [1, 1], embedding.original_size)
        ious.append(iou(tiny_decoder.decode(embedding, prompt).masks, quantized.decode(embedding, prompt).masks))
    assert float(np.mean(ious)) >= 0.9, ious


def test_the_decoder_service_refuses_an_entry_whose_size_is_over_the_image_limits(
    tiny_decoder: OnnxDecoder, tiny_model: LoadedModel
) -> None:
    """Whatever path an embedding came by (here a cache entry), its original size is held to the limits: the
    decoder upsamples its masks to that size."""
    import asyncio

    from sam_core.cache import MemoryEmbeddingCache
    from sam_core.errors import ImageTooLarge
    from sam_core.services.decoder import DecoderService
    from sam_core.settings import ImageLimits
    from sam_core.wire.messages import SegmentJob

    cache = MemoryEmbeddingCache(max_bytes=16 * 2**20, ttl_s=60)
    service = DecoderService(tiny_decoder, tiny_model.identity, cache, limits=ImageLimits())
    array = np.random.default_rng().normal(size=(1, 256, 64, 64)).astype(np.float32)
    huge = ImageEmbedding(embedding=array, original_size=(8000, 8000), input_size=(1024, 1024))
    model_id = tiny_model.identity.model_id
    asyncio.run(cache.put_embedding(model_id, "huge", huge))

    job = SegmentJob(cache_key="huge", point_coords=[[10.0, 10.0]], point_labels=[1.0])
    with pytest.raises(ImageTooLarge) as raised:
        asyncio.run(service.segment(job))
    assert raised.value.field == "orig_im_size"


@pytest.mark.parametrize("original_size", [(1500, 2250), (977, 431), (64, 1024)])
def test_logits_upscaled_outside_the_graph_are_sams_postprocessing(
    tiny_model: LoadedModel, original_size: tuple[int, int]
) -> None:
    """`upscale_logits` (OpenCV) against `Sam.postprocess_masks` (torch) on random low-res logits: the same
    logits to float rounding, and a handful of pixels of millions on the other side of 0."""
    import torch

    low_res = np.random.default_rng().normal(0, 8, (3, 256, 256)).astype(np.float32)
    input_size = preprocess_shape(original_size)
    with torch.inference_mode():
        expected = tiny_model.sam.postprocess_masks(torch.from_numpy(low_res[None]), input_size, original_size)[0]
    got = upscale_logits(low_res, original_size)
    assert got.shape == (3, *original_size)
    assert relative_l2(got, expected.numpy()) <= MAX_RELATIVE_L2
    differing = int(((got > 0) != (expected.numpy() > 0)).sum())
    assert differing <= max(20, got.size // 200_000), differing


def test_the_low_res_graph_runs_and_the_full_graph_is_what_clients_download(
    tiny_decoder: OnnxDecoder, scene: tuple
) -> None:
    """The server runs the low-res graphs (no `orig_im_size`, no image-size output); the files clients fetch
    (`paths`) are the full ones, and both give the same scores and low-res logits."""
    from sam_core.model.decoder import make_session

    _, embedding, rng = scene
    assert "orig_im_size" not in {i.name for i in tiny_decoder.multi.get_inputs()}
    full = make_session(tiny_decoder.paths[True, False])
    assert "orig_im_size" in {i.name for i in full.get_inputs()}
    point = random_points(rng, embedding.original_size, 1)
    prompt = build_prompt(point.tolist(), [1], embedding.original_size)
    out = tiny_decoder.decode(embedding, prompt, multimask=True)
    coords, labels = onnx_prompt_inputs(prompt, embedding.original_size)
    masks, iou, low_res = full.run(
        None,
        {
            "image_embeddings": embedding.embedding.astype(np.float32),
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(embedding.original_size, np.float32),
        },
    )
    np.testing.assert_allclose(out.iou_scores, iou[0, 1:], atol=1e-5)
    np.testing.assert_allclose(out.low_res_logits, low_res[0, 1:], rtol=1e-4, atol=1e-4)
    assert relative_l2(out.mask_logits, masks[0, 1:]) <= MAX_RELATIVE_L2


def test_a_graph_exported_with_a_batch_of_prompts_answers_each_as_alone(
    tiny_model: LoadedModel, tiny_decoder: OnnxDecoder, scene: tuple, tmp_path: Path
) -> None:
    """`export_decoder(prompt_batch=True)` (what `bench/report.py --only batch` times): three boxes in one run
    give each box's scores and low-res logits of the service's own one-prompt run."""
    from sam_core.model.decoder import make_session
    from sam_core.model.decoder_export import export_decoder

    _, embedding, rng = scene
    path = export_decoder(tiny_model.sam, tmp_path / "batch.onnx", multimask=False, low_res=True, prompt_batch=True)
    session = make_session(path, threads=2)
    height, width = embedding.original_size
    prompts = []
    for _ in range(3):
        x0, x1 = sorted(rng.uniform(0, width, 2))
        y0, y1 = sorted(rng.uniform(0, height, 2))
        prompts.append(build_prompt([], [], embedding.original_size, box=[x0, y0, x1, y1]))
    rows = [onnx_prompt_inputs(prompt, embedding.original_size) for prompt in prompts]
    scores, logits = session.run(
        None,
        {
            "image_embeddings": embedding.embedding.astype(np.float32),
            "point_coords": np.concatenate([coords for coords, _ in rows]),
            "point_labels": np.concatenate([labels for _, labels in rows]),
            "mask_input": np.zeros((3, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        },
    )
    assert logits.shape == (3, 1, 256, 256)
    for index, prompt in enumerate(prompts):
        alone = tiny_decoder.decode(embedding, prompt)
        np.testing.assert_allclose(scores[index], alone.iou_scores, atol=1e-5)
        np.testing.assert_allclose(logits[index], alone.low_res_logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="low-res"):
        export_decoder(tiny_model.sam, tmp_path / "full.onnx", multimask=False, prompt_batch=True)
