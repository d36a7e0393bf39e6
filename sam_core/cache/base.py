"""The cache interface: per-(model, image) embeddings and low-res logits, encoded, keyed and logged here;
backends move bytes.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from sam_core.cache.codec import (
    HEADER_BYTES,
    CorruptCacheEntryError,
    decode_embedding,
    decode_low_res_logits,
    encode_embedding,
    encode_low_res_logits,
    header_content_id,
)
from sam_core.cache.keys import KIND_EMBEDDING, KIND_LOW_RES_LOGITS, KINDS, cache_key, image_id_hash
from sam_core.embedding import ImageEmbedding, same_content
from sam_core.errors import CacheUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

CacheReadObserver = Callable[[str, str, str], None]
"""Told of every cache read, once per kind: (model_id, kind, "hit" | "miss" | "unavailable")."""


@dataclass(frozen=True)
class FlightClaim:
    """What `claim_embedding_run` found: `landed` (cached now), `claimed` (the caller holds the run) or
    `held` (another caller does; `holder` is the value it set)."""

    state: Literal["landed", "claimed", "held"]
    holder: str | None = None


class EmbeddingCache(abc.ABC):
    """Per-(model, image) store of the image embedding and the last low-res logits, with a TTL.

    Getters return None on a miss (absent, expired, evicted, or unreadable bytes). Any method of a shared
    backend may raise `CacheUnavailable` when the backend cannot be reached in time. Backends implement
    the byte-level `_fetch`, `_store` and `_remove`; encoding, keys and logging live here.
    """

    shared: bool = True
    """Whether other processes see what this cache holds (Redis: yes; the in-memory LRU: no)."""

    read_observer: CacheReadObserver | None = None
    """Where hosts count hits and misses (the deployments hang their metrics here); None: nobody is told."""

    async def get_embedding(self, model_id: str, image_id: str) -> ImageEmbedding | None:
        """The cached embedding, or None. Reading refreshes its TTL."""
        (payload,) = await self._read("get", model_id, image_id, (KIND_EMBEDDING,))
        return self._decoded(decode_embedding, payload, model_id, image_id, KIND_EMBEDDING)

    async def has_embedding(self, model_id: str, image_id: str, content_id: str = "") -> bool:
        """Whether a readable embedding is cached, from its 80-byte header alone (refreshes its TTL); with a
        `content_id`, only one of that image (or of an unknown one)."""
        (head,) = await self._read("head", model_id, image_id, (KIND_EMBEDDING,), head_only=KIND_EMBEDDING)
        found = None if head is None else header_content_id(head)
        return found is not None and same_content(found, content_id)

    async def put_embedding(self, model_id: str, image_id: str, embedding: ImageEmbedding) -> int:
        """Store an embedding; returns the bytes stored (0 if the memory backend cannot hold it).

        The id's low-res logits are dropped with it: they were a mask of the image it held before.
        """
        key = cache_key(model_id, image_id, KIND_EMBEDDING)
        stored = await self._guarded("put", model_id, image_id, self._store(key, encode_embedding(embedding)))
        await self._guarded(
            "put", model_id, image_id, self._remove([cache_key(model_id, image_id, KIND_LOW_RES_LOGITS)])
        )
        return stored

    async def get_low_res_logits(self, model_id: str, image_id: str) -> np.ndarray | None:
        """The cached (1, 1, 256, 256) float32 low-res logits, or None. Reading refreshes their TTL."""
        (payload,) = await self._read("get", model_id, image_id, (KIND_LOW_RES_LOGITS,))
        return self._decoded(decode_low_res_logits, payload, model_id, image_id, KIND_LOW_RES_LOGITS)

    async def put_low_res_logits(self, model_id: str, image_id: str, logits: np.ndarray) -> int:
        """Store (1, 1, 256, 256) low-res logits; returns the bytes stored."""
        key = cache_key(model_id, image_id, KIND_LOW_RES_LOGITS)
        payload = encode_low_res_logits(logits)
        return await self._guarded("put", model_id, image_id, self._store(key, payload))

    async def get_all(
        self, model_id: str, image_id: str, *, with_logits: bool = True, logits_id: str | None = None
    ) -> tuple[ImageEmbedding | None, np.ndarray | None]:
        """Embedding and low-res logits in one round trip (what the decoder needs per click).

        `with_logits=False` skips the logits (None) for a click that does not feed them back; `logits_id`: the
        logits' own id when it is not `image_id` (a tenant's logits on a shared content entry).
        """
        _, embedding, logits = await self._read_in_full(
            model_id, image_id, with_logits=with_logits, logits_id=logits_id
        )
        return embedding, logits

    async def _read_in_full(
        self, model_id: str, image_id: str, *, with_logits: bool, logits_id: str | None = None
    ) -> tuple[bytes | None, ImageEmbedding | None, np.ndarray | None]:
        """`get_all`, with the embedding's payload as read (for its write tag)."""
        kinds = KINDS if with_logits else (KIND_EMBEDDING,)
        payload, *rest = await self._read("get_all", model_id, image_id, kinds, logits_id=logits_id)
        embedding = self._decoded(decode_embedding, payload, model_id, image_id, KIND_EMBEDDING)
        return payload, embedding, self._decoded_logits(rest, model_id, image_id)

    def _decoded_logits(self, payloads: list[bytes | None], model_id: str, image_id: str) -> np.ndarray | None:
        """The logits read alongside an embedding (`payloads` empty: not asked for, nothing observed)."""
        if not payloads:
            return None
        return self._decoded(decode_low_res_logits, payloads[0], model_id, image_id, KIND_LOW_RES_LOGITS)

    # ---- single flight: one embedding run per image across processes ------------------------------------

    async def claim_embedding_run(
        self, model_id: str, image_id: str, owner: str, ttl_s: float, content_id: str = ""
    ) -> FlightClaim:
        """Atomically: `landed` when the embedding of `content_id` (any, when "") is cached; else `claimed`
        when this caller now holds the image's run lock (`owner` is its value, held for `ttl_s` unless
        renewed); else `held`, with the holder's value. An entry of another image under the id is not
        `landed`: the holder of the lock overwrites it.

        A backend no other process sees has no one to coordinate with: its callers always claim (the
        ingress coalesces its own concurrent requests before it asks).
        """
        if await self.has_embedding(model_id, image_id, content_id):
            return FlightClaim("landed")
        return FlightClaim("claimed")

    async def renew_embedding_run(self, model_id: str, image_id: str, owner: str, ttl_s: float) -> bool:
        """Extend the run lock `owner` holds; False when it no longer holds it (it expired, or Redis lost it)."""
        return True

    async def release_embedding_run(self, model_id: str, image_id: str, owner: str) -> None:
        """Free the run lock if `owner` still holds it (never another holder's)."""
        return

    async def announce_models(self, app: str, role: str, replica: str, models: Sequence[str], ttl_s: float) -> None:
        """Record which models a replica of application `app` holds loaded, for `ttl_s` (it announces again
        before then; an empty `models` clears its record); a backend other processes cannot read keeps nothing."""
        return

    async def loaded_models(self, app: str) -> dict[str, dict[str, int]] | None:
        """Replicas of `app` holding each model loaded, by role: {model: {role: count}}; None when no other
        process's announcements can be read here (the in-memory cache)."""
        return None

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the backend answers now; never raises."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the cache may still be used afterwards (it reconnects)."""

    @abc.abstractmethod
    async def _fetch(self, keys: Sequence[str]) -> list[bytes | None]:
        """Payloads for `keys` in order (None when absent), refreshing the TTL of those present."""

    async def _fetch_head(self, head_key: str, keys: Sequence[str]) -> list[bytes | None]:
        """`_fetch(keys)`, but for `head_key` (one of them) only its first `HEADER_BYTES`.

        Backends that hold values remotely override this to move only the header.
        """
        values = await self._fetch(keys)
        return [v[:HEADER_BYTES] if k == head_key and v is not None else v for k, v in zip(keys, values, strict=True)]

    @abc.abstractmethod
    async def _store(self, key: str, payload: bytes) -> int:
        """Store `payload` with the TTL; returns the bytes stored."""

    @abc.abstractmethod
    async def _remove(self, keys: Sequence[str]) -> None:
        """Delete `keys` (absent keys are fine)."""

    @staticmethod
    async def _guarded(op: str, model_id: str, image_id: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except CacheUnavailable as exc:
            log.warning(
                "cache %s unavailable: model=%s image=%s: %s",
                op,
                model_id,
                image_id_hash(image_id),
                exc.reason,
            )
            raise

    async def _read(
        self,
        op: str,
        model_id: str,
        image_id: str,
        kinds: Sequence[str],
        *,
        head_only: str | None = None,
        logits_id: str | None = None,
    ) -> list[bytes | None]:
        """The payloads of `image_id`'s `kinds` in one round trip (the logits under `logits_id` when given)."""
        keys = [
            cache_key(model_id, logits_id if logits_id and kind == KIND_LOW_RES_LOGITS else image_id, kind)
            for kind in kinds
        ]
        if head_only is None:
            fetch = self._fetch(keys)
        else:
            fetch = self._fetch_head(cache_key(model_id, image_id, head_only), keys)
        try:
            return await self._guarded(op, model_id, image_id, fetch)
        except CacheUnavailable:
            for kind in kinds:
                self._observe(model_id, kind, "unavailable")
            raise

    def _observe(self, model_id: str, kind: str, result: str) -> None:
        if self.read_observer is not None:
            self.read_observer(model_id, kind, result)

    def _decoded(
        self, decode: Callable[[bytes], T], payload: bytes | None, model_id: str, image_id: str, kind: str
    ) -> T | None:
        if payload is None:
            self._observe(model_id, kind, "miss")
            return None
        try:
            value = decode(payload)
        except CorruptCacheEntryError as exc:
            # A stale format version or foreign bytes: recomputing is always correct, so it is a miss.
            log.warning(
                "unreadable cache entry treated as a miss: model=%s image=%s kind=%s: %s",
                model_id,
                image_id_hash(image_id),
                kind,
                exc,
            )
            self._observe(model_id, kind, "miss")
            return None
        self._observe(model_id, kind, "hit")
        return value
