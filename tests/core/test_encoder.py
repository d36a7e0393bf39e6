"""The batched encoder reproduces SamPredictor.set_image exactly (fp32) and closely (reduced precision).

Its speed options (fused attention, channels-last, torch.compile) keep fp32 embeddings within
EXACT_OPTION_REL_L2 of the standard encoder's, on models whose relative-position tables are random (SAM's
builder zero-initialises them, which would hide the attention bias).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import ImageEncoderViT

from sam_core.embedding import EncoderInput
from sam_core.errors import ConfigurationError, InvalidInput
from sam_core.model.build import LoadedModel, build_sam
from sam_core.model.encoder import ImageEncoder
from sam_core.services.encoder import EncoderService
from sam_core.settings import Settings
from sam_core.wire.images import resize_to_input_frame

# fp32 options change only the order of floating-point operations: a relative L2 of ~1e-6 is rounding.
EXACT_OPTION_REL_L2 = 1e-5
# Reduced precision against fp32; measured ~8e-3 (bfloat16) and ~1e-3 (float16) on vit_tiny and vit_b.
REDUCED_PRECISION_REL_L2 = {"bfloat16": 2e-2, "float16": 5e-3}


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


def test_the_ingress_resize_is_sam_predictors_exactly() -> None:
    from segment_anything.utils.transforms import ResizeLongestSide

    rng = np.random.default_rng()
    transform = ResizeLongestSide(1024)
    for size in [(1, 1), (1024, 700), (3, 5000), *((int(h), int(w)) for h, w in rng.integers(1, 3000, size=(6, 2)))]:
        pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        assert np.array_equal(resize_to_input_frame(pixels), transform.apply_image(pixels)), size


def test_an_encoder_input_resized_where_decoded_embeds_as_the_original_pixels(tiny_model: LoadedModel) -> None:
    image = random_image(np.random.default_rng())
    encoder = ImageEncoder(tiny_model.sam)
    resized = EncoderInput(pixels=resize_to_input_frame(image), original_size=(image.shape[0], image.shape[1]))

    from_original, from_resized = encoder.embed(image), encoder.embed(resized)

    assert np.array_equal(from_resized.embedding, from_original.embedding)
    assert (from_resized.original_size, from_resized.input_size) == (
        from_original.original_size,
        from_original.input_size,
    )


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
        assert one.original_size == many.original_size
        assert one.input_size == many.input_size


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


# ---- speed options ----------------------------------------------------------------------------------------


def relative_l2(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def tiny_sam(*, use_rel_pos: bool, seed: int) -> Sam:
    """vit_tiny (a windowed block, then a global one), its relative-position tables random when it has them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam("vit_tiny")
        if not use_rel_pos:
            sam.image_encoder = ImageEncoderViT(
                depth=2, embed_dim=64, num_heads=2, out_chans=256, use_rel_pos=False, window_size=14,
                global_attn_indexes=(1,),
            )  # fmt: skip
        with torch.no_grad():
            for name, parameter in sam.image_encoder.named_parameters():
                if "rel_pos" in name:
                    parameter.normal_(0.0, 0.5)
    return sam.eval()


@pytest.fixture(scope="module")
def rel_pos_sam() -> Sam:
    return tiny_sam(use_rel_pos=True, seed=1)


@pytest.mark.parametrize("use_rel_pos", [True, False], ids=["rel_pos", "no_rel_pos"])
def test_fused_attention_matches_standard_attention(use_rel_pos: bool) -> None:
    sam = tiny_sam(use_rel_pos=use_rel_pos, seed=2)
    rng = np.random.default_rng()
    images = [random_image(rng) for _ in range(2)]

    standard = ImageEncoder(sam, max_batch_size=2).embed_batch(images)
    fused = ImageEncoder(sam, max_batch_size=2, fused_attention=True).embed_batch(images)

    for exact, got in zip(standard, fused, strict=True):
        assert relative_l2(got.embedding, exact.embedding) <= EXACT_OPTION_REL_L2


def test_channels_last_matches_standard_layout(rel_pos_sam: Sam) -> None:
    image = random_image(np.random.default_rng())
    exact = ImageEncoder(rel_pos_sam).embed(image).embedding
    got = ImageEncoder(rel_pos_sam, channels_last=True, fused_attention=True).embed(image).embedding
    assert relative_l2(got, exact) <= EXACT_OPTION_REL_L2


@pytest.mark.parametrize("dtype", sorted(REDUCED_PRECISION_REL_L2))
def test_fused_attention_under_autocast_stays_close_to_fp32(rel_pos_sam: Sam, dtype: str) -> None:
    # The GPU configuration (all options + reduced precision), exercised on the CPU.
    image = random_image(np.random.default_rng())
    exact = ImageEncoder(rel_pos_sam).embed(image).embedding
    encoder = ImageEncoder(rel_pos_sam, fused_attention=True, channels_last=True, dtype=dtype)
    reduced = encoder.embed(image).embedding
    assert reduced.dtype == np.float32
    assert relative_l2(reduced, exact) <= REDUCED_PRECISION_REL_L2[dtype]


def test_speed_options_leave_the_callers_model_unchanged(rel_pos_sam: Sam) -> None:
    image = random_image(np.random.default_rng())
    predictor = SamPredictor(rel_pos_sam)
    predictor.set_image(image)

    ImageEncoder(rel_pos_sam, fused_attention=True, channels_last=True).embed(image)

    predictor_again = SamPredictor(rel_pos_sam)
    predictor_again.set_image(image)
    assert torch.equal(predictor_again.features, predictor.features)
    convs = [m for m in rel_pos_sam.image_encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(conv.weight.is_contiguous() for conv in convs)


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor needs a C++ compiler on CPU")
def test_compiled_encoder_matches_standard(rel_pos_sam: Sam) -> None:
    # ~25 s here with a cold inductor cache: almost all of it the one-off compilation on the first call.
    image = random_image(np.random.default_rng())
    exact = ImageEncoder(rel_pos_sam).embed(image).embedding
    got = ImageEncoder(rel_pos_sam, compile=True, fused_attention=True).embed(image).embedding
    assert relative_l2(got, exact) <= EXACT_OPTION_REL_L2


def test_service_default_is_fp32_with_the_exact_speed_options() -> None:
    defaults = {name: field.default for name, field in Settings.model_fields.items() if name.startswith("encoder_")}
    assert defaults == {
        "encoder_dtype": "float32",
        "encoder_fused_attention": True,
        "encoder_channels_last": True,
        "encoder_compile": False,
    }


def test_settings_pass_the_speed_options_to_the_encoder(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAM_ENCODER_CHANNELS_LAST", "false")
    settings = Settings(
        model_type="vit_tiny", checkpoint=str(tiny_checkpoint), cache_dir=tmp_path, device="cpu",
        encoder_fused_attention=True, encoder_compile=False,
    )  # fmt: skip

    encoder = EncoderService.from_settings(settings).encoder

    # Read off the network the encoder runs: fused attention on, channels-last off (the weights are the
    # model's own tensors, not channels-last copies), not compiled.
    from segment_anything.modeling.image_encoder import Attention

    from sam_core.model.attention import _sdpa_attention_forward

    attention = [m for m in encoder.image_encoder.modules() if isinstance(m, Attention)]
    assert attention
    assert all(getattr(m.forward, "__func__", None) is _sdpa_attention_forward for m in attention)
    shared = zip(encoder.image_encoder.parameters(), encoder.sam.image_encoder.parameters(), strict=True)
    assert all(fast is own for fast, own in shared)
    assert not encoder.channels_last
    assert type(encoder.image_encoder).__name__ != "OptimizedModule"


@pytest.mark.parametrize(
    "options",
    [{"encoder_fused_attention": "sometimes"}, {"encoder_channels_last": 2}, {"encoder_compile": "fast"}],
    ids=["fused_attention", "channels_last", "compile"],
)
def test_bad_speed_option_in_settings_is_a_configuration_error(options: dict[str, Any]) -> None:
    from deployments.app import load_settings

    with pytest.raises(ConfigurationError, match=next(iter(options))):
        load_settings(options, env_overrides=False)


def test_non_boolean_speed_option_is_a_configuration_error(tiny_model: LoadedModel) -> None:
    # A YAML "false" is a truthy string: refused rather than taken as on.
    with pytest.raises(ConfigurationError):
        ImageEncoder(tiny_model.sam, fused_attention="false")  # type: ignore[arg-type]
