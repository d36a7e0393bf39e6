"""The application builder that serve_config.yaml imports: `import_path: deployments.app:build_app`.

    SamIngress.bind(SamEncoder.bind(settings), SamDecoder.bind(settings), settings)

Application args are `sam_core.settings.Settings` fields; each is overridden by its `SAM_*` environment
variable, and the whole is validated here, at deploy time, with errors that name the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from ray.serve import Application

from deployments.decoder import SamDecoder
from deployments.encoder import SamEncoder
from deployments.ingress import SamIngress
from sam_core.errors import ConfigurationError
from sam_core.served_models import check_served_models
from sam_core.settings import Settings


def load_settings(args: Mapping[str, Any], *, env_overrides: bool = True) -> Settings:
    """Validate settings; a ConfigurationError names every bad field.

    Application args are overridden by `SAM_*` variables (`env_overrides`); a command line's explicit flags
    are not (`env_overrides=False`: the variables then fill only the fields not given).
    """
    try:
        settings = Settings.with_env_overrides(args) if env_overrides else Settings(**args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"invalid sam-serve settings: {problems}") from None
    check_served_models(settings)
    return settings


def compose(
    settings: Settings,
    *,
    encoder_options: Mapping[str, Any] | None = None,
    decoder_options: Mapping[str, Any] | None = None,
    ingress_options: Mapping[str, Any] | None = None,
) -> Application:
    """The application from validated settings; `*_options` go to each deployment's `.options()`, their
    `ray_actor_options` over the deployment's own (a caller that sets `num_cpus` keeps the runtime env).

    serve_config.yaml overrides deployment options itself; the options here serve Python callers (the
    `sam-serve run` command, tests) that run the app without a config file.
    """
    encoder = _with_options(SamEncoder, encoder_options).bind(settings)
    decoder = _with_options(SamDecoder, decoder_options).bind(settings)
    application: Application = _with_options(SamIngress, ingress_options).bind(encoder, decoder, settings)
    return application


def _with_options(deployment: Any, options: Mapping[str, Any] | None) -> Any:
    """`deployment.options(**options)`, with `ray_actor_options` merged into the deployment's own."""
    options = dict(options or {})
    if "ray_actor_options" in options:
        options["ray_actor_options"] = {**deployment.ray_actor_options, **options["ray_actor_options"]}
    return deployment.options(**options)


def build_app(args: dict[str, Any]) -> Application:
    """Build the three-deployment application from application args (serve_config.yaml's `args`)."""
    return compose(load_settings(args))
