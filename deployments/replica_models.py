"""Several models per encoder or decoder replica: Serve's model multiplexing over `Settings.served_models`.

A call names its model by the handle's `multiplexed_model_id` (the ingress sets it for every call; a call
without one gets the default model). The replica loads a model on its first call, off the event loop, keeps
at most `max_models_per_replica` and unloads the least recently used. Serve routes the encoder's calls to a
replica that holds the model when one does, and splits `@serve.batch` batches by model, so a forward pass is
one model's. The decoders' consistent-hash router keeps an image's clicks on one replica instead (it ignores
model affinity by design): that replica loads the model the image's clicks name.

Each replica announces what it holds loaded to the shared cache, for `GET /sam/models`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from ray import serve

from sam_core.cache import EmbeddingCache
from sam_core.errors import ModelUnavailable, SamServeError, UnknownModel, describe, error_reason
from sam_core.settings import Settings

log = logging.getLogger("ray.serve")

T = TypeVar("T")

ANNOUNCE_EVERY_S = 10.0
"""How often a replica says again which models it holds; an announcement lives three times as long."""


class _Held(Generic[T]):
    """A loaded model as Serve's multiplexer holds it; Serve calls `__del__` when it unloads the model."""

    def __init__(self, model: str, service: T, on_unload: Callable[[str, T], None]) -> None:
        self.model, self.service, self._on_unload = model, service, on_unload

    def __del__(self) -> None:
        self._on_unload(self.model, self.service)


class ReplicaModels(Generic[T]):
    """The models one replica serves: `build` makes a model's service from its settings (in a worker thread,
    except the default model's, built at start-up so that a bad checkpoint fails the replica at once)."""

    def __init__(self, settings: Settings, role: str, build: Callable[[Settings], T], cache: EmbeddingCache) -> None:
        self.settings = settings
        self.role = role
        self.cache = cache
        self.services: dict[str, T] = {}
        context = serve.get_replica_context()
        self.app, self.replica_id = context.app_name, context.replica_id.unique_id
        self._preloaded: dict[str, T] = {settings.default_model: build(settings.for_model(settings.default_model))}
        self._announcer: asyncio.Task[None] | None = None

        async def load(model: str) -> _Held[T]:
            service = self._preloaded.pop(model, None)
            if service is None and len(self.services) + len(self._preloaded) >= settings.max_models_per_replica:
                # The start-up model counts against the limit until Serve holds it: let it go for this one.
                self._preloaded.clear()
            if service is None:
                try:
                    model_settings = settings.for_model(model)
                except KeyError:
                    raise UnknownModel(f"no served model {model!r}", field="model") from None
                log.info("%s loading model %s", role, model)
                try:
                    service = await asyncio.to_thread(build, model_settings)
                except Exception as exc:  # noqa: BLE001 - any failure to load is this model's, not the replica's
                    log.warning("%s could not load model %s: %s", role, model, describe(exc))
                    detail = error_reason(exc) if isinstance(exc, SamServeError) else describe(exc)
                    reason = f"model {model!r} could not be loaded: {detail}"
                    raise ModelUnavailable(reason, field="model") from None
            self.services[model] = service
            await self._announce()
            return _Held(model, service, self._unloaded)

        self._load = serve.multiplexed(max_num_models_per_replica=settings.max_models_per_replica)(load)
        with contextlib.suppress(RuntimeError):  # announced from the start when built on the replica's loop
            self._announcer = asyncio.get_running_loop().create_task(self._announce_forever())

    @property
    def default(self) -> T:
        """The default model's service built at start-up (before any call)."""
        return self._preloaded[self.settings.default_model]

    @property
    def held(self) -> list[T]:
        """Every model's service this replica holds: those Serve loaded, and the start-up one until its first call."""
        return [*self.services.values(), *self._preloaded.values()]

    async def current(self) -> tuple[str, T]:
        """The model the running call names (the default when it names none) and its service, loaded if need be."""
        model = serve.get_multiplexed_model_id() or self.settings.default_model
        if self._announcer is None:
            self._announcer = asyncio.get_running_loop().create_task(self._announce_forever())
        held: _Held[T] = await self._load(model)
        return model, held.service

    def _unloaded(self, model: str, service: T) -> None:
        # Serve's unload and the garbage collector both call this: only the service it held goes.
        if self.services.get(model) is service:
            del self.services[model]
            log.info("%s unloaded model %s", self.role, model)

    async def shutdown(self) -> None:
        """The replica is going: its models are no longer held (the listing stops counting it at once)."""
        if self._announcer is not None:
            self._announcer.cancel()
        self.services.clear()
        self._preloaded.clear()
        await self._announce()

    async def _announce(self) -> None:
        ttl_s = 3 * ANNOUNCE_EVERY_S
        try:
            held = [*self.services, *self._preloaded]
            await self.cache.announce_models(self.app, self.role, self.replica_id, held, ttl_s)
        except Exception as exc:  # noqa: BLE001 - the listing is informative; serving goes on without it
            log.info("announcing the loaded models failed: %s", exc)

    async def _announce_forever(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await self._announce()
                await asyncio.sleep(ANNOUNCE_EVERY_S)
