"""One settings model for the whole service, read from arguments with `SAM_*` environment overrides.

Every knob lives here so that no module reads `os.environ` itself; the Ray Serve application builder and the
CLI both construct `Settings` and pass it (or the parts they need) down.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

# ImageLimits is imported from here all over the tree; it lives with the env-first machinery it shares.
from sam_core.image_limits import EnvFirst, EnvFirstImageLimits, ImageLimits, env_first_image_limits

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
"""Largest HTTP request body by default: a 20 MiB image as base64 (27 MiB) with room for the rest."""


def default_cache_dir() -> Path:
    """Where downloaded checkpoints and exported decoders live unless configured otherwise."""
    return Path.home() / ".cache" / "sam-serve"


def default_ui_dir() -> Path:
    """The labelling page's folder in a source checkout (`web/`, with onnxruntime-web in its node_modules)."""
    return Path(__file__).resolve().parents[1] / "web"


def _unset(description: str) -> Any:
    """A field that is None (unset) unless configured."""
    return Field(default=None, description=description)


def _off(description: str) -> Any:
    """A switch that is off unless configured."""
    return Field(default=False, description=description)


MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""A served model's id: what requests name in `model`, and Serve's multiplexed model id."""


class ModelSpec(BaseModel):
    """One served model: an official type, or a custom SAM1-architecture checkpoint (by path, or by URL + sha256)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=MODEL_ID_PATTERN, description="short id requests name in `model`, e.g. vit_b, medsam")
    model_type: str = Field(description="architecture: vit_h, vit_l, vit_b or vit_tiny")
    checkpoint: str | None = _unset("local checkpoint path")
    checkpoint_url: str | None = _unset("download from this URL (verified by sha256)")
    checkpoint_sha256: str | None = _unset("expected sha256 of the checkpoint")

    @field_validator("checkpoint_sha256")
    @classmethod
    def _sha256_is_hex(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("must be 64 hex digits (a sha256)")
        return value.lower() if value else value


class Settings(BaseSettings):
    """Service configuration. Field `x` is overridden by the environment variable `SAM_X`."""

    model_config = SettingsConfigDict(env_prefix="SAM_", extra="forbid")

    model_type: str = Field(
        default="vit_h", description="vit_h, vit_l, vit_b or vit_tiny (sam_core.model.registry.MODEL_REGISTRY)"
    )
    checkpoint: str | None = _unset(
        "local checkpoint path; when unset the official checkpoint is downloaded to cache_dir"
    )
    checkpoint_url: str | None = _unset("download the checkpoint from this mirror instead of the official URL")
    checkpoint_sha256: str | None = _unset("expected sha256 of the checkpoint; overrides the registry's value")
    models: tuple[ModelSpec, ...] = Field(
        default=(),
        description="several served models (env SAM_MODELS as JSON), the first the default; unset: the one model "
        "of model_type/checkpoint*, whose id is its model_type",
    )
    max_models_per_replica: int = Field(
        default=2,
        ge=1,
        description="models an encoder or decoder replica keeps loaded at once (Serve's multiplexing, least "
        "recently used unloaded first)",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir, description="where checkpoints and exported decoders are kept"
    )
    device: str = Field(default="auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'")
    encoder_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description="autocast dtype of the image encoder (reduced precision on GPU)"
    )
    # On by default: same fp32 math within 1e-5 relative L2 of the standard encoder, and faster
    # (bench/bench_encoder.py); off gives the exact segment_anything forward.
    encoder_fused_attention: bool = Field(
        default=True, description="image-encoder attention through scaled_dot_product_attention"
    )
    encoder_channels_last: bool = Field(default=True, description="channels-last layout in the image encoder")
    encoder_compile: bool = _off(
        "torch.compile the image encoder: compiled on first use of each batch size (tens of seconds), "
        "needs a C++ compiler on the CPU"
    )
    decoder_threads: NonNegativeInt = Field(default=0, description="ONNX Runtime intra-op threads; 0 = CPUs")
    decoder_providers: tuple[str, ...] = Field(
        default=("CPUExecutionProvider",),
        description="ONNX Runtime execution providers of the decoder sessions, in order of preference (with the "
        "gpu extra: CUDAExecutionProvider first)",
    )
    decoder_spinning: bool = _off(
        "ONNX Runtime's idle threads busy-wait (fastest in a process alone); false (default): they "
        "sleep, leaving the cores to the ingress and proxy beside them (clicks 0.88x quiet, 0.78x beside a busy "
        "process, side by side)"
    )
    decoder_quantize: bool = _off("int8 dynamic quantisation of the decoder")
    decoder_local_cache_bytes: NonNegativeInt = Field(
        default=256 * 1024 * 1024,
        description="per decoder replica: decoded embeddings kept locally (4 MiB each), checked against the "
        "shared cache by an 8-byte tag on every click; 0 = read every embedding in full",
    )
    everything_max_points: PositiveInt = Field(
        default=16_384,
        description="segment everything: most point prompts one run decodes (points_per_side^2 over every crop "
        "layer's crops), refused up front with a 422 naming points_per_side; the default is one 128x128 grid",
    )
    everything_max_batch_bytes: int = Field(
        default=4 * 1024**3,
        ge=64 * 1024**2,
        description="segment everything: most bytes of float32 full-size logits one batch of points may hold "
        "(points_per_batch x 3 x H x W x 4; a run peaks at about twice that); more is a 413 naming points_per_batch",
    )
    redis_url: SecretStr | None = _unset(
        "redis://[:password@]host:port/db; None = in-memory cache (a secret: it may carry the password, "
        "so it never shows in logs or settings dumps)"
    )
    cache_ttl_s: PositiveInt = Field(default=3600, description="time to live of every cached entry")
    cache_timeout_s: PositiveFloat = Field(default=0.5, description="Redis socket timeout per operation")
    memory_cache_bytes: PositiveInt = Field(default=512 * 1024 * 1024, description="in-memory LRU bound")
    embed_lock_ttl_s: float = Field(
        default=10.0,
        ge=0.5,
        le=600,
        description="single flight: life of the Redis lock an ingress holds while it has an image embedded (its "
        "holder renews it every third of this; a holder that dies frees it after this long)",
    )
    embed_wait_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="single flight: longest a request waits for another replica's run of the same image before "
        "it has the image embedded itself (0: never wait)",
    )
    images: ImageLimits = Field(default_factory=ImageLimits)
    labelstudio_url: str | None = _unset(
        "the Label Studio server whose task images the /labelstudio backend fetches (relative task URLs "
        "resolve against it; its host is fetched with the token, whatever the URL-fetch rules say)"
    )
    labelstudio_token: SecretStr | None = _unset(
        "Label Studio API token for fetching task images (a legacy token, or a personal access token "
        "exchanged for access tokens); unset: the token Label Studio's /setup sends for a matching hostname"
    )
    labelstudio_accept_setup_token: bool = _off(
        "when labelstudio_token is unset, use the token Label Studio's /setup sends (for "
        "labelstudio_url's host only); off: /setup installs nothing, whoever calls it"
    )
    labelstudio_backend_password: SecretStr | None = _unset(
        "Label Studio's own credential for /labelstudio (its ML backend connection's Basic "
        "Authentication password, or a bearer token): when set, /labelstudio takes only it, no tenant token, and "
        "it opens nothing else"
    )
    ui_dir: Path = Field(
        default_factory=default_ui_dir,
        description="the labelling page's folder: ui/ (the page) and node_modules/onnxruntime-web (npm ci); the "
        "page answers 404 naming this setting when the folder is missing",
    )
    auth_token: SecretStr | None = _unset(
        "when set, /sam/* routes require `Authorization: Bearer <token>` (the one-tenant form: the "
        "token of tenant `default`)"
    )
    auth_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="tenants: name -> bearer token (SAM_AUTH_TOKENS as a JSON object); each tenant's image_ids and "
        "low-res logits live apart, another tenant's id is a 404",
    )
    auth_tokens_file: Path | None = _unset(
        "a JSON object file of tenant -> token, read when a replica starts (a mounted Kubernetes "
        "Secret); merged with auth_tokens"
    )
    auth_required: bool = _off(
        "refuse to start (a clear error) when no token is configured: a cluster whose token Secret "
        "is empty fails loudly instead of serving everyone"
    )
    tenant_max_in_flight: PositiveInt = Field(
        default=32,
        description="with auth on: most requests one tenant may have in flight on one ingress replica (more: "
        "429 with Retry-After)",
    )
    max_body_bytes: PositiveInt = Field(
        default=DEFAULT_MAX_BODY_BYTES, description="largest HTTP request body (base64 images, embeddings)"
    )

    @classmethod
    def with_env_overrides(cls, args: Mapping[str, Any]) -> Settings:
        """Application args (e.g. from serve_config.yaml), each overridden by its `SAM_*` environment variable.

        pydantic-settings ranks init arguments above the environment, which is right for a command line; an
        application's config file is the default and the environment the override, so this builds the
        variant whose sources run the other way round (`settings_customise_sources`, nested limits too).
        """
        return _EnvFirstSettings(**args)

    @property
    def served_models(self) -> tuple[ModelSpec, ...]:
        """The models served, the default first."""
        if self.models:
            return self.models
        only = ModelSpec(
            id=self.model_type,
            model_type=self.model_type,
            checkpoint=self.checkpoint,
            checkpoint_url=self.checkpoint_url,
            checkpoint_sha256=self.checkpoint_sha256,
        )
        return (only,)

    @property
    def default_model(self) -> str:
        """The id of the model a request that names none gets."""
        return self.served_models[0].id

    def for_model(self, model: str) -> Settings:
        """These settings with `model`'s architecture and checkpoint as the one model (what a service loads)."""
        spec = next((s for s in self.served_models if s.id == model), None)
        if spec is None:
            raise KeyError(model)
        fields = spec.model_dump(exclude={"id"})
        return self.model_copy(update={**fields, "models": ()})

    @model_validator(mode="after")
    def _model_ids_unique(self) -> Settings:
        ids = [spec.id for spec in self.models]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"models: each id once, {', '.join(repeated)} repeated")
        return self

    @field_validator("labelstudio_url")
    @classmethod
    def _labelstudio_url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, e.g. http://127.0.0.1:8080")
        return value.rstrip("/") if value else value

    @field_validator("device")
    @classmethod
    def _device_is_known(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda", "mps") or value.startswith("cuda:"):
            return value
        raise ValueError(f"unknown device {value!r}: use auto, cpu, cuda, cuda:N or mps")

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url_scheme(cls, value: object) -> object:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is None or text == "":
            return None
        if not isinstance(text, str) or not text.startswith(("redis://", "rediss://", "unix://")):
            # The value is not echoed: it may carry a password.
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return text

    def redis_url_value(self) -> str | None:
        """The Redis URL with its password, for the client that connects to it (never log it)."""
        return self.redis_url.get_secret_value() if self.redis_url else None


class _EnvFirstSettings(EnvFirst, Settings):
    """`Settings` whose `SAM_*` variables win over the arguments given (`Settings.with_env_overrides`)."""

    images: EnvFirstImageLimits = Field(default_factory=EnvFirstImageLimits)

    @field_validator("images", mode="before")
    @classmethod
    def _images_read_their_environment(cls, value: Any) -> Any:
        return env_first_image_limits(value)
