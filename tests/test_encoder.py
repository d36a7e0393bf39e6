"""The batched encoder reproduces SamPredictor.set_image exactly (fp32) and closely (reduced precision)."""

from __future__ import annotations

import numpy as np
import pytest
from segment_anything import SamPredictor

from sam_core.encoder import ImageEncoder
from sam_core.errors import ConfigurationError, InvalidInput
from sam_core.models import LoadedModel


def random_image(rng: np.random.Generator, max_side: int = 1600) -> np.ndarray:
    height, width = (int(v) for v in rng.integers(16, max_side, size=2))
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_embedding_equals_sam_predictor(tiny_model: LoadedModel) -> None:
    rng = np.random.default_rng()
    image = random_image(rng)
    predictor = SamPredictor(tiny_model.sam)
    predictor.set_image(image)
    expected = predictor.features.cpu().numpy()

    got = ImageEncoder(tiny_model.sam).embed(image)

    scale = float(np.abs(expected).max())
    assert float(np.abs(got.embedding - expected).max()) <= 1e-4 * scale
    assert got.original_size == tuple(predictor.original_size)
    assert got.input_size == tuple(predictor.input_size)


def test_batch_of_different_sizes_equals_one_at_a_time(tiny_model: LoadedModel) -> None:
    rng = np.random.default_rng()
    images = [random_image(rng) for _ in range(3)]
    encoder = ImageEncoder(tiny_model.sam, max_batch_size=2)

    batched = encoder.embed_batch(images)
    single = [encoder.embed(image) for image in images]

    assert len(batched) == 3
    for one, many in zip(single, batched, strict=True):
        scale = float(np.abs(one.embedding).max())
        assert float(np.abs(one.embedding - many.embedding).max()) <= 1e-4 * scale
        assert one.original_size == many.original_size and one.input_size == many.input_size


def test_reduced_precision_stays_close_to_fp32(tiny_model: LoadedModel) -> None:
    # The GPU path (autocast) exercised on the CPU with bfloat16: same code, device as a parameter.
    image = random_image(np.random.default_rng())
    exact = ImageEncoder(tiny_model.sam, dtype="float32").embed(image).embedding
    reduced = ImageEncoder(tiny_model.sam, dtype="bfloat16").embed(image).embedding
    assert reduced.dtype == np.float32
    relative_l2 = np.linalg.norm(reduced - exact) / np.linalg.norm(exact)
    assert relative_l2 < 0.05


def test_large_image_is_resized_to_1024_before_the_network(tiny_model: LoadedModel) -> None:
    image = np.zeros((3000, 4500, 3), dtype=np.uint8)
    result = ImageEncoder(tiny_model.sam).embed(image)
    assert result.original_size == (3000, 4500)
    assert result.input_size == (683, 1024)


def test_non_rgb_array_is_refused(tiny_model: LoadedModel) -> None:
    with pytest.raises(InvalidInput):
        ImageEncoder(tiny_model.sam).embed(np.zeros((10, 10), dtype=np.uint8))


def test_unknown_dtype_is_a_configuration_error(tiny_model: LoadedModel) -> None:
    with pytest.raises(ConfigurationError):
        ImageEncoder(tiny_model.sam, dtype="int4")
