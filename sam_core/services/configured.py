"""The model, encoder and decoders that `Settings` configure: checkpoint resolved (downloaded and verified when
needed), loaded on its device, and wrapped with the configured precision, speed and session options."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sam_core.model.build import LoadedModel, ModelIdentity, load_model
from sam_core.model.checkpoints import resolve_checkpoint
from sam_core.model.decoder import OnnxDecoder
from sam_core.model.decoder_export import decoder_files_exist
from sam_core.model.encoder import DEFAULT_MAX_BATCH_SIZE, ImageEncoder
from sam_core.settings import Settings

if TYPE_CHECKING:
    from segment_anything.modeling import Sam


def load_configured_model(settings: Settings, *, device: str | None = None) -> LoadedModel:
    """The configured checkpoint, verified and loaded (downloaded first when needed) on `device`."""
    return load_model(
        settings.model_type,
        checkpoint=settings.checkpoint,
        checkpoint_sha256=settings.checkpoint_sha256,
        checkpoint_url=settings.checkpoint_url,
        cache_dir=settings.cache_dir,
        device=device or settings.device,
    )


def resolve_configured_checkpoint(settings: Settings) -> tuple[Path, str]:
    """The configured checkpoint's path and sha256, downloading and verifying it when needed."""
    return resolve_checkpoint(
        settings.model_type,
        checkpoint=settings.checkpoint,
        sha256=settings.checkpoint_sha256,
        cache_dir=settings.cache_dir,
        url=settings.checkpoint_url,
    )


def configured_encoder(
    model: LoadedModel, settings: Settings, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> ImageEncoder:
    """The image encoder on the model's device with the configured precision and speed options."""
    return ImageEncoder(
        model.sam,
        device=model.device,
        dtype=settings.encoder_dtype,
        max_batch_size=max_batch_size,
        fused_attention=settings.encoder_fused_attention,
        channels_last=settings.encoder_channels_last,
        compile=settings.encoder_compile,
    )


def configured_decoder(sam: Sam | None, identity: ModelIdentity, settings: Settings, *, threads: int) -> OnnxDecoder:
    """The ONNX decoders (exported into cache_dir on first use) with the configured session options."""
    return OnnxDecoder.for_model(
        sam,
        identity,
        settings.cache_dir,
        quantized=settings.decoder_quantize,
        threads=threads,
        providers=settings.decoder_providers,
        spinning=settings.decoder_spinning,
    )


def open_decoder(settings: Settings, *, threads: int) -> tuple[OnnxDecoder, ModelIdentity]:
    """The ONNX decoders for the configured checkpoint, exporting them first if the cache dir lacks them.

    Only the checkpoint's hash is needed when the exported files exist (a sidecar keeps it), so a decoder
    replica loads torch weights at most once per cache dir.
    """
    _, sha256 = resolve_configured_checkpoint(settings)
    identity = ModelIdentity(settings.model_type, sha256)
    quantized = settings.decoder_quantize
    sam = None
    if not decoder_files_exist(identity, settings.cache_dir, quantized=quantized):
        sam = load_configured_model(settings, device="cpu").sam
    return configured_decoder(sam, identity, settings, threads=threads), identity
