"""The ingress's view of the served models: which one a request names, each one's identity (the weights' id in
cache keys, asked of a decoder once), the encoder and decoder handles that name it, and `GET /sam/models`."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from sam_core.cache import EmbeddingCache, image_id_hash
from sam_core.errors import CacheUnavailable
from sam_core.model.build import ModelIdentity
from sam_core.model.registry import OFFICIAL_CHECKPOINTS
from sam_core.served_models import resolve_model
from sam_core.settings import Settings
from sam_core.wire.schemas import ServedModelInfo, ServedModelsResponse


class ModelRouting:
    """Resolves requests to served model ids and hands out the handles that carry them (Serve's
    `multiplexed_model_id`), so every encoder and decoder call names its model."""

    def __init__(
        self, settings: Settings, encoder: DeploymentHandle, decoder: DeploymentHandle, cache: EmbeddingCache
    ) -> None:
        self.settings = settings
        self.specs = {spec.id: spec for spec in settings.served_models}
        self.default = settings.default_model
        self.cache = cache
        self.app = serve.get_replica_context().app_name
        self._encoders = {model: encoder.options(multiplexed_model_id=model) for model in self.specs}
        self._decoders = {model: decoder.options(multiplexed_model_id=model) for model in self.specs}
        self._identities: dict[str, ModelIdentity] = {}
        self._locks = {model: asyncio.Lock() for model in self.specs}

    def resolve(self, request: Any) -> str:
        """The served id a request names (`model`, else Roboflow inference's `sam_version_id`, else the default), or
        UnknownModel (404) naming the field."""
        return resolve_model(self.settings.served_models, request.model, request.sam_version_id).id

    def named(self, model: str | None) -> str:
        """`model` if it is served, the default when None; UnknownModel (404) naming `model` otherwise."""
        return resolve_model(self.settings.served_models, model, None).id

    async def identity(self, model: str) -> ModelIdentity:
        """The model's weights (type and checkpoint sha256), asked of a decoder once (it resolves the checkpoint)."""
        if model not in self._identities:
            async with self._locks[model]:
                if model not in self._identities:
                    self._identities[model] = await self._decoders[model].identity.remote()
        return self._identities[model]

    async def model_id(self, model: str) -> str:
        """The model's id in cache keys (`vit_b-ec2df6273261`): an embedding never reaches another model."""
        return (await self.identity(model)).model_id

    def encoder(self, model: str) -> DeploymentHandle:
        return self._encoders[model]

    def decoder(self, model: str, cache_key: str | None) -> DeploymentHandle:
        """The model's decoder handle keyed by the image (its key's hash, never the client's id), so the
        decoders' consistent-hash router sends an image's every click to the replica holding its decoded copy.

        Without a shared cache the embedding travels inline with every call: no replica holds anything, and
        the calls spread over the replicas."""
        handle = self._decoders[model]
        if cache_key is None or not self.cache.shared:
            return handle
        return handle.options(session_id=image_id_hash(f"{model}:{cache_key}"))

    async def listing(self) -> ServedModelsResponse:
        """Every served model: id, architecture, sha256, identity once known, and replicas holding it loaded."""
        try:
            loaded = await self.cache.loaded_models(self.app)
        except CacheUnavailable:
            loaded = None
        models = []
        for model, spec in self.specs.items():
            identity = self._identities.get(model)
            official = OFFICIAL_CHECKPOINTS.get(spec.model_type)
            configured = spec.checkpoint_sha256 or (official.sha256 if official and not spec.checkpoint else None)
            info = ServedModelInfo(
                id=model,
                model_type=spec.model_type,
                default=model == self.default,
                checkpoint_sha256=identity.checkpoint_sha256 if identity else configured,
                model_id=identity.model_id if identity else None,
                loaded=None if loaded is None else {"encoder": 0, "decoder": 0, **loaded.get(model, {})},
            )
            models.append(info)
        return ServedModelsResponse(models=models)
