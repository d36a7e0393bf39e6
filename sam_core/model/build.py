"""Building and loading SAM networks, and the identity of the weights they hold.

A model built from a checkpoint knows its identity (type + checkpoint sha256); cache keys and exported decoder
files carry it so that one model's embeddings never reach another model's decoder.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sam_core.errors import CheckpointError, ConfigurationError, UnknownModel
from sam_core.model.checkpoints import resolve_checkpoint
from sam_core.model.registry import architecture
from sam_core.model.verify import sha256_file

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights a model holds: its type and its checkpoint's sha256."""

    model_type: str
    checkpoint_sha256: str

    @property
    def model_id(self) -> str:
        """A short, key-safe id: `vit_b-ec2df6273261`. Used in cache keys and exported file names."""
        return f"{self.model_type}-{self.checkpoint_sha256[:12]}"


@dataclass
class LoadedModel:
    """A SAM network in eval mode on a device, with the identity of the weights it holds."""

    sam: Sam
    identity: ModelIdentity
    checkpoint_path: Path
    device: torch.device


def build_sam(model_type: str) -> Sam:
    """An untrained SAM of `model_type`, built by segment-anything's own builder (random init, eval mode)."""
    from segment_anything.build_sam import _build_sam, sam_model_registry

    arch = architecture(model_type)
    builder: Callable[..., Sam] | None = sam_model_registry.get(model_type)
    if builder is not None:
        return builder(checkpoint=None)
    # Variants that segment-anything does not list go through the same private builder its registry uses,
    # so the prompt encoder and mask decoder are exactly the real ones.
    return _build_sam(
        encoder_embed_dim=arch.encoder_embed_dim,
        encoder_depth=arch.encoder_depth,
        encoder_num_heads=arch.encoder_num_heads,
        encoder_global_attn_indexes=list(arch.encoder_global_attn_indexes),
        checkpoint=None,
    )


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available, else the CPU; an explicit device that is absent is refused."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device {device!r} requested but CUDA is not available", field="device")
    return resolved


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors onto the CPU without unpickling arbitrary objects."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; the caller needs one
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}", field="checkpoint") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds {type(state).__name__}, not a state dict")
    return state


def load_model(
    model_type: str,
    *,
    checkpoint: str | Path | None = None,
    checkpoint_sha256: str | None = None,
    checkpoint_url: str | None = None,
    cache_dir: Path,
    device: str = "auto",
    progress: bool = True,
) -> LoadedModel:
    """Build `model_type` and load its weights, downloading the official checkpoint when none is given.

    `checkpoint_url` replaces the official URL (a mirror); `checkpoint_sha256` the registry's hash.

    The checkpoint is verified (sha256, size) before use; a file that does not fit the architecture is
    refused with CheckpointError naming the mismatched tensors.
    """
    architecture(model_type)
    path, sha256 = resolve_checkpoint(
        model_type,
        checkpoint=checkpoint,
        sha256=checkpoint_sha256,
        cache_dir=cache_dir,
        progress=progress,
        url=checkpoint_url,
    )
    sam = build_sam(model_type)
    state = load_state_dict(path)
    try:
        missing, unexpected = sam.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes differ: a checkpoint of another variant
        first_lines = " ".join(str(exc).splitlines()[:3])
        raise CheckpointError(f"checkpoint {path} does not fit {model_type}: {first_lines}") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit {model_type}: "
            f"{len(missing)} missing tensors (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})",
            field="checkpoint",
        )
    torch_device = resolve_device(device)
    sam.to(torch_device).eval()
    identity = ModelIdentity(model_type, sha256)
    log.info("loaded %s from %s on %s", identity.model_id, path.name, torch_device)
    return LoadedModel(sam=sam, identity=identity, checkpoint_path=path, device=torch_device)


def make_random_checkpoint(model_type: str, path: Path, *, seed: int = 0) -> tuple[Path, str]:
    """Save a seeded random-weight SAM of `model_type` to `path`; returns (path, sha256).

    The same (model_type, seed) gives the same weights and the same file bytes, so its identity is stable
    across runs and machines. Written to a temporary name and renamed, so readers never see half a file.
    """
    import torch

    if not re.fullmatch(r"[A-Za-z0-9_]+", model_type):
        raise UnknownModel(f"bad model type {model_type!r}", field="model_type")
    # fork_rng keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam(model_type)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Saved through a buffer: torch.save names the archive's root folder after the file, so saving straight
    # to a temporary name would make the bytes (and the sha256) differ run to run.
    buffer = io.BytesIO()
    torch.save(sam.state_dict(), buffer)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(buffer.getbuffer())
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path, sha256_file(path)
