"""Model registry, seeded random checkpoints, and loading checkpoints (local and downloaded) by identity."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sam_core.errors import CheckpointError, ChecksumMismatch, ConfigurationError, UnknownModel
from sam_core.model.build import build_sam, load_model, make_random_checkpoint, resolve_device
from sam_core.model.registry import MODEL_REGISTRY
from sam_core.model.verify import sha256_file


def test_registry_lists_the_official_variants_and_the_tiny_one() -> None:
    assert {"vit_h", "vit_l", "vit_b", "vit_tiny"} <= set(MODEL_REGISTRY)
    assert not MODEL_REGISTRY["vit_tiny"].official


def test_tiny_model_has_the_real_prompt_encoder_and_mask_decoder() -> None:
    tiny, base = build_sam("vit_tiny"), build_sam("vit_b")
    tiny_decoder = {k: v.shape for k, v in tiny.state_dict().items() if not k.startswith("image_encoder.")}
    base_decoder = {k: v.shape for k, v in base.state_dict().items() if not k.startswith("image_encoder.")}
    assert tiny_decoder == base_decoder
    encoder_params = sum(p.numel() for p in tiny.image_encoder.parameters())
    assert encoder_params < 2_000_000


def test_same_seed_gives_the_same_checkpoint_bytes(tmp_path: Path) -> None:
    _, first = make_random_checkpoint("vit_tiny", tmp_path / "a.pth", seed=3)
    _, second = make_random_checkpoint("vit_tiny", tmp_path / "b.pth", seed=3)
    _, other = make_random_checkpoint("vit_tiny", tmp_path / "c.pth", seed=4)
    assert first == second
    assert first != other


def test_random_checkpoint_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_random_checkpoint("vit_tiny", tmp_path / "a.pth", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_loaded_model_knows_its_identity(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model = load_model("vit_tiny", checkpoint=tiny_checkpoint, cache_dir=tmp_path, device="cpu")
    sha256 = sha256_file(tiny_checkpoint)
    assert model.identity.model_type == "vit_tiny"
    assert model.identity.checkpoint_sha256 == sha256
    assert model.identity.model_id == f"vit_tiny-{sha256[:12]}"
    assert not model.sam.training


def test_checkpoint_with_wrong_sha256_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatch):
        load_model("vit_tiny", checkpoint=tiny_checkpoint, checkpoint_sha256="0" * 64, cache_dir=tmp_path)


@pytest.mark.slow
def test_checkpoint_of_another_type_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not fit vit_b"):
        load_model("vit_b", checkpoint=tiny_checkpoint, cache_dir=tmp_path)


def test_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError):
        load_model("vit_tiny", checkpoint=bogus, cache_dir=tmp_path)


def test_unofficial_type_without_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        load_model("vit_tiny", cache_dir=tmp_path)


def test_unknown_model_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel):
        load_model("vit_giant", cache_dir=tmp_path)


def test_auto_device_is_cuda_only_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        resolve_device("cuda")


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a temporary folder: (base URL, folder)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_official_type_is_downloaded_verified_and_loaded(file_server: tuple[str, Path], tmp_path: Path) -> None:
    # A random-weight vit_b stands in for Meta's file (no weights can be downloaded here); its own sha256 is
    # supplied, as a user with a mirror would.
    base_url, root = file_server
    _, sha256 = make_random_checkpoint("vit_b", root / "sam_vit_b_01ec64.pth", seed=0)
    cache_dir = tmp_path / "cache"
    model = load_model(
        "vit_b",
        checkpoint_sha256=sha256,
        checkpoint_url=f"{base_url}/sam_vit_b_01ec64.pth",
        cache_dir=cache_dir,
        device="cpu",
        progress=False,
    )
    assert model.identity.checkpoint_sha256 == sha256
    assert model.checkpoint_path == cache_dir / "sam_vit_b_01ec64.pth"
