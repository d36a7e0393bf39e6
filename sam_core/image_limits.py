"""What an input image may be (`ImageLimits`, `SAM_IMAGE_*`), and the environment-first variant of a settings
class that `Settings.with_env_overrides` builds, nested limits included. Re-exported by `sam_core.settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, PositiveFloat, PositiveInt, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ImageLimits(BaseSettings):
    """What an input image may be; enforced before any pixel reaches the model."""

    model_config = SettingsConfigDict(env_prefix="SAM_IMAGE_", extra="forbid")

    max_bytes: PositiveInt = Field(default=20 * 1024 * 1024, description="largest encoded image accepted")
    max_pixels: PositiveInt = Field(
        default=50_000_000, description="largest width*height accepted (decompression bombs)"
    )
    max_side: PositiveInt = Field(default=16_384, description="longest side accepted, in pixels")
    formats: tuple[str, ...] = Field(
        default=("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"), description="PIL format names accepted"
    )
    allow_url: bool = Field(default=False, description="fetch http(s) image URLs (off: SSRF risk)")
    url_timeout_s: PositiveFloat = Field(
        default=10.0, description="one deadline per URL fetch: DNS, connect, headers, body and redirects"
    )
    max_url_fetches: PositiveInt = Field(
        default=8, description="URL fetches one ingress replica runs at once (the rest wait, within their deadline)"
    )
    allow_private_urls: bool = Field(
        default=False, description="allow URLs resolving to private/loopback addresses (tests only)"
    )


class EnvFirst:
    """Mixin for a settings class whose environment variables win over the arguments given."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings, dotenv_settings, file_secret_settings


class EnvFirstImageLimits(EnvFirst, ImageLimits):
    """`ImageLimits` whose `SAM_IMAGE_*` variables win over the arguments given."""


def env_first_image_limits(value: Any) -> Any:
    """`value` (limits, or a mapping of them) as `EnvFirstImageLimits`; anything else as given, for pydantic.

    A nested settings model given as a dict is validated without reading its environment, hence this.

    Raises:
        ValueError: a limit is invalid, named under `images` like any other field's error.
    """
    if isinstance(value, ImageLimits):
        value = value.model_dump(exclude_unset=True)
    if not isinstance(value, Mapping):
        return value
    try:
        return EnvFirstImageLimits(**value)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
