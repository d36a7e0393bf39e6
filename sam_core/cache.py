"""The embedding cache shared by encoder and decoder: compact serialisation, hashed keys, Redis or memory.

An image is embedded once and clicked many times; the decoder reads the embedding (and the last low-res
logits, for `use_mask_input_cache`) from here on every click. Redis is the shared backend across replicas,
an in-process LRU the single-node fallback. Neither backend ever lets a Redis failure crash a request: it
becomes `CacheUnavailable`, which the caller turns into a recompute or a 503 that says to resend the image.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import logging
import re
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

import numpy as np
import redis.asyncio as redis_asyncio
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from sam_core.embedding import ImageEmbedding
from sam_core.errors import CacheUnavailable, ConfigurationError
from sam_core.frames import EMBEDDING_SHAPE, MASK_INPUT_SHAPE

log = logging.getLogger(__name__)

T = TypeVar("T")

KIND_EMBEDDING: Final = "emb"
KIND_LOW_RES_LOGITS: Final = "lowres"
KINDS: Final = (KIND_EMBEDDING, KIND_LOW_RES_LOGITS)

CacheReadObserver = Callable[[str, str, str], None]
"""Told of every cache read, once per kind: (model_id, kind, "hit" | "miss" | "unavailable")."""

_MODEL_ID_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")

# ---- serialisation -------------------------------------------------------------------------------------

_MAGIC: Final = b"SAMC"
_FORMAT_VERSION: Final = 2  # 2: the header ends in an 8-byte write tag
_KIND_CODES: Final = {KIND_EMBEDDING: 1, KIND_LOW_RES_LOGITS: 2}
_DTYPE_FLOAT16: Final = 1
_STORED_DTYPE: Final = np.dtype("<f2")  # explicit little-endian: the bytes mean the same on every host
_FP16_MAX: Final = float(np.finfo(np.float16).max)  # 65504

# magic, format version, kind code, dtype code, ndim, shape[4], original (h, w), input (h, w), write tag;
# 48 bytes. The write tag is random per write: equal tags mean equal bytes, so a decoder replica can check
# its local copy of an embedding by reading the header alone (see `LocalEmbeddingCopies`).
_HEADER: Final = struct.Struct("<4sBBBB4I2I2I8s")
HEADER_BYTES: Final = _HEADER.size
_TAG_OFFSET: Final = HEADER_BYTES - 8


class CorruptCacheEntryError(ValueError):
    """Bytes under a cache key that are not a value this module wrote (or a different format version).

    Never leaves this module's public methods: the getters log it and report a miss.
    """


def round_to_storage(array: np.ndarray) -> np.ndarray:
    """The float32 values the cache gives back for `array`: clipped to +-65504 and rounded through float16.

    Every path that hands an embedding to a decoder (fresh from the encoder, from the cache, a replica's local
    copy, a client's) decodes these values, so the same request gets the same answer whichever path served it.
    Idempotent: values already rounded come back unchanged.
    """
    return _stored(array).astype(np.float32)


def _stored(array: np.ndarray) -> np.ndarray:
    """`array` as the cache stores it: float16, clipped first (a float32 beyond +-65504 would become inf)."""
    return np.ascontiguousarray(np.clip(array, -_FP16_MAX, _FP16_MAX), dtype=_STORED_DTYPE)


def _encode(kind: str, array: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]) -> bytes:
    if array.ndim != 4:
        raise ValueError(f"{kind}: expected a 4-d array, got shape {array.shape}")
    try:
        header = _HEADER.pack(
            _MAGIC,
            _FORMAT_VERSION,
            _KIND_CODES[kind],
            _DTYPE_FLOAT16,
            array.ndim,
            *(int(n) for n in array.shape),
            *(int(n) for n in original_size),
            *(int(n) for n in input_size),
            secrets.token_bytes(8),
        )
    except struct.error as exc:
        raise ValueError(f"{kind}: sizes do not fit the header ({exc})") from exc
    return header + _stored(array).tobytes()


def _decode(kind: str, payload: bytes) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    if len(payload) < HEADER_BYTES:
        raise CorruptCacheEntryError(f"{kind}: {len(payload)} bytes is shorter than the {HEADER_BYTES}-byte header")
    magic, version, kind_code, dtype_code, ndim, *sizes, _tag = _HEADER.unpack_from(payload)
    if magic != _MAGIC:
        raise CorruptCacheEntryError(f"{kind}: bad magic {magic!r}")
    if version != _FORMAT_VERSION:
        raise CorruptCacheEntryError(f"{kind}: format version {version}, this code reads {_FORMAT_VERSION}")
    if kind_code != _KIND_CODES[kind]:
        raise CorruptCacheEntryError(f"{kind}: entry holds kind code {kind_code}")
    if dtype_code != _DTYPE_FLOAT16 or ndim != 4:
        raise CorruptCacheEntryError(f"{kind}: unsupported dtype code {dtype_code} / ndim {ndim}")
    shape = tuple(sizes[0:4])
    original_size = (sizes[4], sizes[5])
    input_size = (sizes[6], sizes[7])
    body = memoryview(payload)[HEADER_BYTES:]
    expected = int(np.prod(shape)) * _STORED_DTYPE.itemsize
    if len(body) != expected:
        raise CorruptCacheEntryError(f"{kind}: body is {len(body)} bytes, shape {shape} needs {expected}")
    array = np.frombuffer(body, dtype=_STORED_DTYPE).astype(np.float32).reshape(shape)
    return array, original_size, input_size


def write_tag(payload: bytes) -> bytes | None:
    """The 8-byte write tag of an encoded value (or of its first `HEADER_BYTES`), None if it is not one."""
    if len(payload) < HEADER_BYTES or payload[:4] != _MAGIC or payload[4] != _FORMAT_VERSION:
        return None
    return bytes(payload[_TAG_OFFSET:HEADER_BYTES])


def encode_embedding(embedding: ImageEmbedding) -> bytes:
    """Serialise an embedding: a 48-byte header then the (1, 256, 64, 64) array as float16 (2 MiB).

    float16 keeps ~3 significant digits, far below the decoder's sensitivity, and halves Redis memory and
    transfer. Values beyond the float16 range (+-65504) are clipped rather than turned into inf.
    """
    return _encode(KIND_EMBEDDING, embedding.embedding, embedding.original_size, embedding.input_size)


def decode_embedding(payload: bytes) -> ImageEmbedding:
    """Inverse of `encode_embedding`; the array comes back as float32. Raises `CorruptCacheEntryError`."""
    array, original_size, input_size = _decode(KIND_EMBEDDING, payload)
    if array.shape != EMBEDDING_SHAPE:
        raise CorruptCacheEntryError(f"{KIND_EMBEDDING}: shape {array.shape}, expected {EMBEDDING_SHAPE}")
    return ImageEmbedding(embedding=array, original_size=original_size, input_size=input_size)


def encode_low_res_logits(logits: np.ndarray) -> bytes:
    """Serialise (1, 1, 256, 256) low-res mask logits (256 low-res frame) as header + float16 (128 KiB).

    SAM's low-res logits sit within about +-100 in practice, where float16 is exact to ~0.05 %; anything
    beyond +-65504 is clipped, which leaves the mask (the sign) and the saturated sigmoid unchanged.
    """
    if tuple(logits.shape) != MASK_INPUT_SHAPE:
        raise ValueError(f"low-res logits must have shape {MASK_INPUT_SHAPE}, got {logits.shape}")
    return _encode(KIND_LOW_RES_LOGITS, logits, (0, 0), (0, 0))


def decode_low_res_logits(payload: bytes) -> np.ndarray:
    """Inverse of `encode_low_res_logits`: float32 (1, 1, 256, 256). Raises `CorruptCacheEntryError`."""
    array, _, _ = _decode(KIND_LOW_RES_LOGITS, payload)
    if array.shape != MASK_INPUT_SHAPE:
        raise CorruptCacheEntryError(f"{KIND_LOW_RES_LOGITS}: shape {array.shape}, expected {MASK_INPUT_SHAPE}")
    return array


# ---- keys ------------------------------------------------------------------------------------------------


def image_id_hash(image_id: str) -> str:
    """The 32-hex-digit digest that stands for a client image id in keys and logs."""
    # surrogatepass: any Python str a client id decodes to hashes, lone surrogates included.
    return hashlib.sha256(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def cache_key(model_id: str, image_id: str, kind: str) -> str:
    """`sam:{model_id}:{sha256(image_id)[:32]}:{kind}`.

    The model id (our own "model type + checkpoint sha prefix") namespaces every key so that an embedding
    never reaches another model's decoder; the client's image id is only ever hashed, so its length and
    characters cannot shape a key.
    """
    if not _MODEL_ID_RE.fullmatch(model_id):
        raise ValueError(f"model id {model_id!r} must be 1-128 characters of [A-Za-z0-9_.-]")
    if kind not in KINDS:
        raise ValueError(f"cache kind {kind!r} is not one of {KINDS}")
    return f"sam:{model_id}:{image_id_hash(image_id)}:{kind}"


# ---- a decoder replica's local copies ------------------------------------------------------------------


class LocalEmbeddingCopies:
    """A process's own LRU of decoded (float32) embeddings, each kept with the write tag it was read with.

    A follow-up click then reads only the embedding's 48-byte header from the shared cache, to compare tags
    and keep the entry's TTL fresh, instead of 2 MiB plus a float16->float32 conversion. A different tag
    (the image id was embedded again) or a miss in the shared cache drops the copy, so the shared cache stays
    the one truth: a copy is never served for an entry the shared cache no longer holds in the same bytes.
    The arrays are read-only, as they are shared by every request that reads them.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes ({max_bytes}) must be positive")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[bytes, ImageEmbedding]] = OrderedDict()
        self._total_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> tuple[bytes, ImageEmbedding] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, tag: bytes, embedding: ImageEmbedding) -> None:
        nbytes = embedding.embedding.nbytes
        if nbytes > self.max_bytes:
            return
        embedding.embedding.flags.writeable = False
        with self._lock:
            self._discard(key)
            while self._total_bytes + nbytes > self.max_bytes:
                self._discard(next(iter(self._entries)))
            self._entries[key] = (tag, embedding)
            self._total_bytes += nbytes

    def discard(self, key: str) -> None:
        with self._lock:
            self._discard(key)

    def _discard(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._total_bytes -= entry[1].embedding.nbytes


# ---- the interface ---------------------------------------------------------------------------------------


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

    local_copies: LocalEmbeddingCopies | None = None
    """Decoded embeddings this process keeps for `get_all` (the decoders set it); None: always read in full."""

    async def get_embedding(self, model_id: str, image_id: str) -> ImageEmbedding | None:
        """The cached embedding, or None. Reading refreshes its TTL."""
        (payload,) = await self._read("get", model_id, image_id, (KIND_EMBEDDING,))
        return self._decoded(decode_embedding, payload, model_id, image_id, KIND_EMBEDDING)

    async def has_embedding(self, model_id: str, image_id: str) -> bool:
        """Whether a readable embedding is cached, from its 48-byte header alone (refreshes its TTL)."""
        (head,) = await self._read("head", model_id, image_id, (KIND_EMBEDDING,), head_only=KIND_EMBEDDING)
        return head is not None and write_tag(head) is not None

    async def put_embedding(self, model_id: str, image_id: str, embedding: ImageEmbedding) -> int:
        """Store an embedding; returns the bytes stored (0 if the memory backend cannot hold it)."""
        key = cache_key(model_id, image_id, KIND_EMBEDDING)
        return await self._guarded("put", model_id, image_id, self._store(key, encode_embedding(embedding)))

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
        self, model_id: str, image_id: str, *, with_logits: bool = True
    ) -> tuple[ImageEmbedding | None, np.ndarray | None]:
        """Embedding and low-res logits in one round trip (what the decoder needs per click).

        With `local_copies`, an embedding this process has read before costs only its header's write tag.
        `with_logits=False` skips the logits (None) for a click that does not feed them back.
        """
        kinds = KINDS if with_logits else (KIND_EMBEDDING,)
        copies = self.local_copies
        key = cache_key(model_id, image_id, KIND_EMBEDDING)
        local = copies.get(key) if copies is not None else None
        if copies is not None and local is not None:
            head, *rest = await self._read("get_all", model_id, image_id, kinds, head_only=KIND_EMBEDDING)
            logits = self._decoded_logits(rest, model_id, image_id)
            if head is not None and write_tag(head) == local[0]:
                self._observe(model_id, KIND_EMBEDDING, "hit")
                return local[1], logits
            copies.discard(key)
            if head is None:
                self._observe(model_id, KIND_EMBEDDING, "miss")
                return None, logits
            # Embedded again since this copy was read: read the new value in full below.
        emb_payload, *rest = await self._read("get_all", model_id, image_id, kinds)
        embedding = self._decoded(decode_embedding, emb_payload, model_id, image_id, KIND_EMBEDDING)
        if copies is not None and embedding is not None and emb_payload is not None:
            tag = write_tag(emb_payload)
            if tag is not None:
                copies.put(key, tag, embedding)
        return embedding, self._decoded_logits(rest, model_id, image_id)

    def _decoded_logits(self, payloads: list[bytes | None], model_id: str, image_id: str) -> np.ndarray | None:
        """The logits read alongside an embedding (`payloads` empty: not asked for, nothing observed)."""
        if not payloads:
            return None
        return self._decoded(decode_low_res_logits, payloads[0], model_id, image_id, KIND_LOW_RES_LOGITS)

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
        self, op: str, model_id: str, image_id: str, kinds: Sequence[str], *, head_only: str | None = None
    ) -> list[bytes | None]:
        keys = [cache_key(model_id, image_id, kind) for kind in kinds]
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


# ---- Redis ---------------------------------------------------------------------------------------------


class RedisEmbeddingCache(EmbeddingCache):
    """Shared cache in Redis: `SET key value PX ttl`, reads by `GETEX ... PX ttl` so active images stay.

    Redis is expected to run with a `maxmemory` and an LRU policy, so writes evict old entries instead of
    failing. Every Redis or socket error, and any operation exceeding `2 * timeout_s`, is raised as
    `CacheUnavailable`; the connection pool reconnects on its own once Redis is back.

    redis.asyncio clients are bound to the event loop that created their connections, so the client is
    created lazily inside the running loop and recreated if a later call runs in a different loop.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        timeout_s: float,
        max_connections: int = 32,
        health_check_interval_s: int = 15,
    ) -> None:
        if ttl_s <= 0 or timeout_s <= 0:
            raise ValueError(f"ttl_s ({ttl_s}) and timeout_s ({timeout_s}) must be positive")
        try:
            parse_url(url)  # fail at start-up, not on the first request
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL: {exc}", field="redis_url") from exc
        self._url = url
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._timeout_s = timeout_s
        # Bounds connect + command (+ waiting for a pooled connection) so a caller never hangs on Redis.
        self._deadline_s = 2 * timeout_s
        self._max_connections = max_connections
        self._health_check_interval_s = health_check_interval_s
        self._client: redis_asyncio.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _new_client(self) -> redis_asyncio.Redis:
        # A blocking pool makes a burst wait for a free connection instead of failing "Too many connections".
        pool = redis_asyncio.BlockingConnectionPool.from_url(
            self._url,
            max_connections=self._max_connections,
            timeout=self._timeout_s,
            socket_timeout=self._timeout_s,
            socket_connect_timeout=self._timeout_s,
            health_check_interval=self._health_check_interval_s,
            # One immediate retry on connection errors only: it replaces a pooled socket that died while
            # Redis restarted. Timeouts are not retried (the old `retry_on_timeout=False`): a slow Redis
            # fails fast and the caller recomputes.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        return redis_asyncio.Redis.from_pool(pool)

    def _client_for_running_loop(self) -> redis_asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            if self._client is not None:
                # The old client's sockets belong to a finished loop and cannot be awaited from this one.
                log.debug("event loop changed: creating a new Redis client")
            self._client = self._new_client()
            self._loop = loop
        return self._client

    async def _call(self, op: str, command: Callable[[redis_asyncio.Redis], Awaitable[T]]) -> T:
        client = self._client_for_running_loop()
        try:
            return await asyncio.wait_for(command(client), self._deadline_s)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise CacheUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}") from exc

    async def _fetch(self, keys: Sequence[str]) -> list[bytes | None]:
        async def getex(client: redis_asyncio.Redis) -> list[bytes | None]:
            if len(keys) == 1:
                values = [await client.getex(keys[0], px=self._ttl_ms)]
            else:
                async with client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.getex(key, px=self._ttl_ms)
                    values = await pipe.execute()
            assert all(v is None or isinstance(v, bytes) for v in values), "client must not decode responses"
            return [v if isinstance(v, bytes) else None for v in values]

        return await self._call("get", getex)

    async def _fetch_head(self, head_key: str, keys: Sequence[str]) -> list[bytes | None]:
        async def getrange(client: redis_asyncio.Redis) -> list[bytes | None]:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    if key == head_key:
                        # GETRANGE does not touch the TTL; PEXPIRE refreshes it as GETEX would.
                        pipe.getrange(key, 0, HEADER_BYTES - 1)
                        pipe.pexpire(key, self._ttl_ms)
                    else:
                        pipe.getex(key, px=self._ttl_ms)
                replies = iter(await pipe.execute())
            values: list[bytes | None] = []
            for key in keys:
                value = next(replies)
                if key == head_key:
                    next(replies)  # PEXPIRE's 0/1
                    value = value or None  # GETRANGE of a missing key is b""
                values.append(value if isinstance(value, bytes) else None)
            return values

        return await self._call("get", getrange)

    async def _store(self, key: str, payload: bytes) -> int:
        await self._call("set", lambda client: client.set(key, payload, px=self._ttl_ms))
        return len(payload)

    async def _remove(self, keys: Sequence[str]) -> None:
        await self._call("delete", lambda client: client.delete(*keys))

    async def ping(self) -> bool:
        try:
            return bool(await self._call("ping", lambda client: client.ping()))
        except CacheUnavailable as exc:
            log.info("redis ping failed: %s", exc.reason)
            return False

    async def close(self) -> None:
        client, loop = self._client, self._loop
        self._client = self._loop = None
        if client is not None and loop is asyncio.get_running_loop():
            try:
                await client.aclose()
            except (RedisError, OSError) as exc:
                log.info("closing the Redis client: %s", exc)


# ---- in-process ----------------------------------------------------------------------------------------


class MemoryEmbeddingCache(EmbeddingCache):
    """In-process LRU bounded by the total bytes of stored payloads, with the same TTL semantics as Redis.

    Stores the same encoded bytes as Redis, so both backends return identical (float16-rounded) values and
    the bound counts what is really held. Every get or put moves the entry to the recent end and restarts
    its TTL; as all entries share one TTL, the least recently used entry is also the first to expire.
    Operations never await while holding state, and a lock makes them safe from other threads too.
    """

    shared = False

    def __init__(self, *, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_bytes <= 0 or ttl_s <= 0:
            raise ValueError(f"max_bytes ({max_bytes}) and ttl_s ({ttl_s}) must be positive")
        self.max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (payload, expires_at)
        self._total_bytes = 0
        self._lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        """Bytes of payload currently held (expired entries not yet purged included)."""
        return self._total_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def _pop(self, key: str) -> None:
        payload, _ = self._entries.pop(key)
        self._total_bytes -= len(payload)

    def _purge_expired(self, now: float) -> None:
        while self._entries:
            key, (_, expires_at) = next(iter(self._entries.items()))
            if expires_at > now:
                break
            self._pop(key)

    async def _fetch(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            now = self._clock()
            self._purge_expired(now)
            found: list[bytes | None] = []
            for key in keys:
                entry = self._entries.get(key)
                if entry is None:
                    found.append(None)
                    continue
                self._entries[key] = (entry[0], now + self._ttl_s)
                self._entries.move_to_end(key)
                found.append(entry[0])
            return found

    async def _store(self, key: str, payload: bytes) -> int:
        with self._lock:
            now = self._clock()
            if key in self._entries:
                self._pop(key)
            self._purge_expired(now)
            if len(payload) > self.max_bytes:
                log.warning("value of %d bytes exceeds the memory cache bound %d", len(payload), self.max_bytes)
                return 0
            while self._total_bytes + len(payload) > self.max_bytes:
                self._pop(next(iter(self._entries)))
            self._entries[key] = (payload, now + self._ttl_s)
            self._total_bytes += len(payload)
            return len(payload)

    async def _remove(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                if key in self._entries:
                    self._pop(key)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        """Nothing to release: the entries belong to the process and stay usable, as Redis's would."""


def make_cache(redis_url: str | None, *, ttl_s: int, timeout_s: float, memory_bytes: int) -> EmbeddingCache:
    """Redis when a URL is configured (shared across replicas), else the in-process LRU."""
    if redis_url:
        return RedisEmbeddingCache(redis_url, ttl_s=ttl_s, timeout_s=timeout_s)
    return MemoryEmbeddingCache(max_bytes=memory_bytes, ttl_s=ttl_s)
