"""The shared cache in Redis: values with a TTL, refreshed by every read, every failure a `CacheUnavailable`.

An embedding (2 MiB + its 80-byte header) is stored as a Redis hash: field "0" the header, then "1", "2", ...
chunks of `CHUNK_BYTES`, so that each allocation fits jemalloc's size classes. One 2 MiB + 80 B string takes its
2.5 MiB class (MEMORY USAGE 2,621,488 B); the hash takes 2,097,984 B for the 2,097,232 B payload. It is still one
key, evicted and expired as a unit; the header (a click's tag check) is one small HGET. Low-res logits (128 KiB)
stay strings.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import redis.asyncio as redis_asyncio
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sam_core.cache.base import EmbeddingCache, FlightClaim
from sam_core.cache.breaker import Breaker
from sam_core.cache.codec import CONTENT_OFFSET, HEADER_BYTES, content_digest
from sam_core.cache.keys import KIND_EMBEDDING, cache_key, flight_key
from sam_core.errors import CacheUnavailable, ConfigurationError

log = logging.getLogger(__name__)

T = TypeVar("T")


CHUNK_BYTES = 512 * 1024 - 64
"""The chunk size of an embedding's hash (jemalloc's 512 KiB class less Redis's own per-string overhead)."""

_MAX_FIELDS = 16
"""Fields a chunked read asks for: the header and up to 15 chunks (an embedding has 5; absent ones are nil)."""

_FIELDS = [str(i) for i in range(_MAX_FIELDS)]


def _replica_models_prefix(app: str) -> str:
    """`sam:replica-models:{sha256(app)[:16]}:` + `{role}:{replica id}`: the JSON list of the models a replica of
    the Serve application `app` holds loaded, with a TTL (apps sharing one Redis count their own replicas)."""
    return f"sam:replica-models:{hashlib.sha256(app.encode()).hexdigest()[:16]}:"


def _chunked(key: str) -> bool:
    """Whether a key's value is stored as a hash of chunks (embeddings) rather than one string."""
    return key.endswith(f":{KIND_EMBEDDING}")


def _wrong_type(reply: object) -> bool:
    """A reply that is Redis's WRONGTYPE error: an entry of the older one-string layout, read as a miss."""
    return isinstance(reply, RedisError) and "WRONGTYPE" in str(reply)


# Single flight, each step atomic in Redis. KEYS[1] the embedding, KEYS[2] the run lock; ARGV owner, TTL (ms),
# the image's 32-byte content hash (zeros: any), and where the header holds it (first, last byte).
# Returns {2} when the embedding of that image (or of an unknown one) is cached, {1} when the caller now holds
# the lock, {0, holder} when another does.
_CLAIM_SCRIPT = """
local content = ''
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  content = string.sub(redis.call('HGET', KEYS[1], '0') or '', tonumber(ARGV[4]) + 1, tonumber(ARGV[5]) + 1)
end
local unknown = string.rep('\\0', 32)
if content ~= '' and (content == ARGV[3] or content == unknown or ARGV[3] == unknown) then return {2, false} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, false} end
return {0, redis.call('GET', KEYS[2])}
"""

# Renew or release the lock only while the caller is its holder: a late holder never frees another's lock.
_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisEmbeddingCache(EmbeddingCache):
    """Shared cache in Redis: `SET key value PX ttl`, reads by `GETEX ... PX ttl` so active images stay.

    Redis is expected to run with a `maxmemory` and an LRU policy, so writes evict old entries instead of
    failing. Every Redis or socket error, and any operation exceeding `2 * timeout_s`, is raised as
    `CacheUnavailable`; the connection pool reconnects on its own once Redis is back. After a timeout, calls
    fail at once until Redis answers a ping (`sam_core.cache.breaker`).

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
        self._breaker = Breaker(lambda: self._client_for_running_loop().ping(), deadline_s=self._deadline_s)

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
        self._breaker.check(op)  # Redis timed out before: fail at once until it answers a ping
        client = self._client_for_running_loop()
        try:
            return await asyncio.wait_for(command(client), self._deadline_s)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            if isinstance(exc, (asyncio.TimeoutError, RedisTimeoutError)):
                self._breaker.trip()
            raise CacheUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}") from exc

    async def _fetch(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._fetch_head("", keys)

    async def _fetch_head(self, head_key: str, keys: Sequence[str]) -> list[bytes | None]:
        """One pipeline: each string by GETEX; each hash's fields by HMGET (for `head_key` its header field
        alone, by HGET) and its TTL refreshed by PEXPIRE."""

        async def read(client: redis_asyncio.Redis) -> list[bytes | None]:
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    if not _chunked(key):
                        pipe.getex(key, px=self._ttl_ms)
                        continue
                    if key == head_key:
                        pipe.hget(key, "0")
                    else:
                        pipe.hmget(key, _FIELDS)
                    pipe.pexpire(key, self._ttl_ms)
                replies = iter(await pipe.execute(raise_on_error=False))
            values: list[bytes | None] = []
            for key in keys:
                reply = next(replies)
                if _chunked(key):
                    next(replies)  # PEXPIRE's 0/1
                if isinstance(reply, list):  # the fields in order, then nils; a nil between chunks: unreadable
                    count = next((i for i, chunk in enumerate(reply) if chunk is None), len(reply))
                    whole = count > 0 and all(chunk is None for chunk in reply[count:])
                    reply = b"".join(reply[:count]) if whole else None
                if _wrong_type(reply):
                    reply = None
                elif isinstance(reply, Exception):
                    raise reply
                values.append(reply if isinstance(reply, bytes) else None)
            return values

        return await self._call("get", read)

    async def _store(self, key: str, payload: bytes) -> int:
        if not _chunked(key):
            await self._call("set", lambda client: client.set(key, payload, px=self._ttl_ms))
            return len(payload)
        body = range(HEADER_BYTES, len(payload), CHUNK_BYTES)
        chunks = {"0": payload[:HEADER_BYTES]}
        chunks.update({str(i): payload[at : at + CHUNK_BYTES] for i, at in enumerate(body, 1)})

        async def store_hash(client: redis_asyncio.Redis) -> None:
            # One transaction: readers see the old value or the whole new one, never a mix of chunks.
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping=chunks)  # type: ignore[arg-type]  # (redis-py: Mapping is invariant in its keys)
                pipe.pexpire(key, self._ttl_ms)
                await pipe.execute()

        await self._call("set", store_hash)
        return len(payload)

    async def _remove(self, keys: Sequence[str]) -> None:
        await self._call("delete", lambda client: client.delete(*keys))

    async def claim_embedding_run(
        self, model_id: str, image_id: str, owner: str, ttl_s: float, content_id: str = ""
    ) -> FlightClaim:
        keys = [cache_key(model_id, image_id, KIND_EMBEDDING), flight_key(model_id, image_id)]
        ttl_ms = max(1, round(ttl_s * 1000))
        args = (owner, ttl_ms, content_digest(content_id), CONTENT_OFFSET, CONTENT_OFFSET + 31)
        state, holder = await self._call("claim", lambda client: client.eval(_CLAIM_SCRIPT, 2, *keys, *args))
        if state == 2:
            return FlightClaim("landed")
        if state == 1:
            return FlightClaim("claimed", owner)
        # The holder's lock may have expired between the SET and the GET: nil, which the caller retries.
        return FlightClaim("held", holder.decode() if isinstance(holder, bytes) else None)

    async def renew_embedding_run(self, model_id: str, image_id: str, owner: str, ttl_s: float) -> bool:
        key, ttl_ms = flight_key(model_id, image_id), max(1, round(ttl_s * 1000))
        renewed = await self._call("renew", lambda client: client.eval(_RENEW_SCRIPT, 1, key, owner, ttl_ms))
        return bool(renewed)

    async def release_embedding_run(self, model_id: str, image_id: str, owner: str) -> None:
        key = flight_key(model_id, image_id)
        await self._call("release", lambda client: client.eval(_RELEASE_SCRIPT, 1, key, owner))

    async def announce_models(self, app: str, role: str, replica: str, models: Sequence[str], ttl_s: float) -> None:
        key, ttl_ms = f"{_replica_models_prefix(app)}{role}:{replica}", max(1, round(ttl_s * 1000))
        if not models:
            await self._call("announce", lambda client: client.delete(key))
            return
        value = json.dumps(sorted(models))
        await self._call("announce", lambda client: client.set(key, value, px=ttl_ms))

    async def loaded_models(self, app: str) -> dict[str, dict[str, int]] | None:
        prefix = _replica_models_prefix(app)

        async def read(client: redis_asyncio.Redis) -> dict[str, dict[str, int]]:
            keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
            values = await client.mget(keys) if keys else []
            counts: dict[str, dict[str, int]] = {}
            for key, value in zip(keys, values, strict=True):
                if value is None:  # expired between the scan and the read
                    continue
                role = key.decode().removeprefix(prefix).split(":", 1)[0]
                for model in json.loads(value):
                    by_role = counts.setdefault(str(model), {})
                    by_role[role] = by_role.get(role, 0) + 1
            return counts

        return await self._call("loaded", read)

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
