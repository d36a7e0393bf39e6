"""Single flight on a real redis-server: one embedding run per image across "replicas" (each a SingleFlight
with its own Redis client, as each ingress replica has), the lock's holder dying, another image under the
same image_id, and Redis down. The HTTP tests through two ingress replicas are in test_serve_single_flight.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
import redis

from sam_cli.local_redis import LocalRedis
from sam_core.cache import RedisEmbeddingCache
from sam_core.cache.keys import flight_key
from sam_core.embedding import ImageEmbedding
from sam_core.single_flight import Flight, SingleFlight
from tests.core.test_cache import random_embedding

MODEL = "vit_tiny-0123456789ab"
CONTENT = "sha256:" + "ab" * 32
OTHER_CONTENT = "sha256:" + "cd" * 32


class Encoder:
    """Stands for the encoder deployment: embeds after `seconds` and stores into the cache first, as the
    real one does before it answers; counts its runs."""

    def __init__(self, cache: RedisEmbeddingCache, seconds: float = 0.3) -> None:
        self.cache = cache
        self.seconds = seconds
        self.runs: list[str] = []
        self.rng = np.random.default_rng(0)

    def for_image(self, key: str, content_id: str) -> Callable[[], Awaitable[ImageEmbedding]]:
        async def embed() -> ImageEmbedding:
            self.runs.append(content_id)
            await asyncio.sleep(self.seconds)
            embedding = dataclasses.replace(random_embedding(self.rng), content_id=content_id)
            await self.cache.put_embedding(MODEL, key, embedding)
            return embedding

        return embed


def replicas(url: str, n: int, *, ttl_s: float = 2.0, wait_s: float = 30.0) -> list[SingleFlight]:
    return [
        SingleFlight(RedisEmbeddingCache(url, ttl_s=600, timeout_s=0.5), lock_ttl_s=ttl_s, wait_s=wait_s)
        for _ in range(n)
    ]


def test_eight_concurrent_requests_on_two_replicas_run_the_encoder_once(redis_url: str) -> None:
    async def main() -> list[Flight]:
        flights = replicas(redis_url, 2)
        encoder = Encoder(RedisEmbeddingCache(redis_url, ttl_s=600, timeout_s=0.5))
        results = await asyncio.gather(
            *(flights[i % 2].run(MODEL, "img-1", CONTENT, encoder.for_image("img-1", CONTENT)) for i in range(8))
        )
        assert encoder.runs == [CONTENT]
        return list(results)

    results = asyncio.run(main())
    # Once the run is over its lock is gone: nothing waits on a stale lock.
    assert redis.Redis.from_url(redis_url).exists(flight_key(MODEL, "img-1")) == 0
    roles = sorted(flight.role for flight in results)
    print(f"\nroles: {roles}")
    assert roles.count("holder") == 1
    # The holder's replica shares its run in process; the other replica's requests wait for it to land.
    assert set(roles) <= {"holder", "joined", "waited"}
    holder_replica = next(i % 2 for i, flight in enumerate(results) if flight.role == "holder")
    # Requests on the holder's replica have the embedding in hand; the other's read it from the cache.
    assert all((flight.embedding is not None) == (i % 2 == holder_replica) for i, flight in enumerate(results))


def test_a_holder_that_dies_frees_the_image_within_the_lock_ttl(redis_url: str) -> None:
    """A lock left by a holder that died (never renewed, never released): the waiters take the run over once
    it expires, and one of them, only one, runs the encoder."""
    ttl_s = 1.0

    async def main() -> tuple[list[Flight], float, Encoder]:
        cache = RedisEmbeddingCache(redis_url, ttl_s=600, timeout_s=0.5)
        dead = await cache.claim_embedding_run(MODEL, "img-2", f"dead-holder {CONTENT}", ttl_s)
        assert dead.state == "claimed"
        flights = replicas(redis_url, 2, ttl_s=ttl_s)
        encoder = Encoder(cache, seconds=0.2)
        started = time.monotonic()
        results = await asyncio.gather(
            *(flights[i % 2].run(MODEL, "img-2", CONTENT, encoder.for_image("img-2", CONTENT)) for i in range(4))
        )
        return list(results), time.monotonic() - started, encoder

    results, seconds, encoder = asyncio.run(main())
    print(f"\ntaken over after {seconds:.2f} s: {sorted(r.role for r in results)}")
    assert encoder.runs == [CONTENT]
    assert seconds < ttl_s + 0.2 + 1.0, "the waiters did not take over within the TTL plus one run"
    assert sorted(r.role for r in results).count("holder") == 1


def test_a_holder_renews_its_lock_while_a_long_run_lasts(redis_url: str) -> None:
    """A run three times longer than the lock's TTL keeps it (renewed every third): still one run."""

    async def main() -> Encoder:
        flights = replicas(redis_url, 2, ttl_s=0.6)
        encoder = Encoder(RedisEmbeddingCache(redis_url, ttl_s=600, timeout_s=0.5), seconds=1.8)
        await asyncio.gather(
            *(flights[i % 2].run(MODEL, "img-3", CONTENT, encoder.for_image("img-3", CONTENT)) for i in range(4))
        )
        return encoder

    assert asyncio.run(main()).runs == [CONTENT]


def test_another_image_under_the_same_image_id_is_embedded_for_itself(redis_url: str) -> None:
    """Two images sent under one image_id at once: each request gets its own image's embedding, never the
    other's (the image's hash is in the lock's value, and a waiter checks it)."""

    async def main() -> tuple[Flight, Flight, Encoder]:
        first, second = replicas(redis_url, 2)
        encoder = Encoder(RedisEmbeddingCache(redis_url, ttl_s=600, timeout_s=0.5))
        a, b = await asyncio.gather(
            first.run(MODEL, "shared-id", CONTENT, encoder.for_image("shared-id", CONTENT)),
            second.run(MODEL, "shared-id", OTHER_CONTENT, encoder.for_image("shared-id", OTHER_CONTENT)),
        )
        return a, b, encoder

    a, b, encoder = asyncio.run(main())
    assert sorted(encoder.runs) == sorted([CONTENT, OTHER_CONTENT])
    assert {a.role, b.role} == {"holder", "own"}
    assert a.embedding is not None
    assert b.embedding is not None
    assert not np.array_equal(a.embedding.embedding, b.embedding.embedding)


def test_another_images_entry_under_the_id_is_not_what_a_request_waits_for(redis_url: str) -> None:
    """The entry under an image_id is of another image: a request for this image claims the run and writes
    its own (the claim reads the entry's content hash); after that its image is found, and a request that
    names no content takes whatever the id holds."""

    async def main() -> tuple[Flight, Flight, Flight, Encoder]:
        cache = RedisEmbeddingCache(redis_url, ttl_s=600, timeout_s=0.5)
        other = dataclasses.replace(random_embedding(np.random.default_rng(1)), content_id=OTHER_CONTENT)
        await cache.put_embedding(MODEL, "shared-2", other)
        (flights,) = replicas(redis_url, 1)
        encoder = Encoder(cache, seconds=0.05)
        first = await flights.run(MODEL, "shared-2", CONTENT, encoder.for_image("shared-2", CONTENT))
        again = await flights.run(MODEL, "shared-2", CONTENT, encoder.for_image("shared-2", CONTENT))
        anyone = await flights.run(MODEL, "shared-2", "", encoder.for_image("shared-2", ""))
        stored = await cache.get_embedding(MODEL, "shared-2")
        assert stored is not None
        assert stored.content_id == CONTENT
        assert await cache.has_embedding(MODEL, "shared-2", CONTENT)
        assert not await cache.has_embedding(MODEL, "shared-2", OTHER_CONTENT)
        return first, again, anyone, encoder

    first, again, anyone, encoder = asyncio.run(main())
    assert encoder.runs == [CONTENT]
    assert (first.role, again.role, anyone.role) == ("holder", "landed", "landed")


def test_with_redis_down_every_request_embeds_for_itself(redis_server: LocalRedis, redis_url: str) -> None:
    redis_server.stop()
    try:

        async def main() -> list[Flight]:
            flights = replicas(redis_url, 2)

            async def embed() -> ImageEmbedding:
                await asyncio.sleep(0.05)
                return random_embedding(np.random.default_rng(1))

            return list(await asyncio.gather(*(flights[i % 2].run(MODEL, "img-4", CONTENT, embed) for i in range(4))))

        results = asyncio.run(main())
    finally:
        redis_server.start()
    # Each replica still runs one encoder call for its own concurrent requests.
    assert sorted(r.role for r in results) == ["joined", "joined", "own", "own"]
    assert all(r.embedding is not None for r in results)


def test_a_caller_that_leaves_does_not_cancel_the_run_others_share(redis_url: str) -> None:
    async def main() -> tuple[Flight, Encoder]:
        (flights,) = replicas(redis_url, 1)
        encoder = Encoder(RedisEmbeddingCache(redis_url, ttl_s=600, timeout_s=0.5), seconds=0.5)
        embed = encoder.for_image("img-5", CONTENT)
        leaver = asyncio.ensure_future(flights.run(MODEL, "img-5", CONTENT, embed))
        stayer = asyncio.ensure_future(flights.run(MODEL, "img-5", CONTENT, embed))
        await asyncio.sleep(0.1)
        leaver.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaver
        return await stayer, encoder

    flight, encoder = asyncio.run(main())
    assert flight.role == "joined"
    assert flight.embedding is not None
    assert encoder.runs == [CONTENT]
