"""Specification of the embedding cache: serialisation, keys, TTL, LRU, and Redis faults."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np
import pytest

from sam_cli.local_redis import LocalRedis, free_port
from sam_core.cache import (
    KINDS,
    EmbeddingCache,
    LocallyCopiedCache,
    MemoryEmbeddingCache,
    RedisEmbeddingCache,
    cache_key,
    codec,
    make_cache,
)
from sam_core.cache.local_copies import LocalEmbeddingCopies
from sam_core.embedding import ImageEmbedding
from sam_core.errors import CacheUnavailable
from sam_core.frames import EMBEDDING_SHAPE, MASK_INPUT_SHAPE
from sam_core.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

T = TypeVar("T")

MODEL = "vit_b-01ec64d2"
OTHER_MODEL = "vit_h-a7bf3b02"
TIMEOUT_S = 0.5
EMBEDDING_PAYLOAD_BYTES = codec.HEADER_BYTES + 2 * int(np.prod(EMBEDDING_SHAPE))


class CacheFactory(Protocol):
    def __call__(self, *, ttl_s: float = 60.0) -> EmbeddingCache: ...


def run(coro: Awaitable[T]) -> T:
    """Each call runs in a fresh event loop, as separate requests in tests do."""

    async def main() -> T:
        return await coro

    return asyncio.run(main())


def assert_fp16_close(restored: np.ndarray, original: np.ndarray) -> None:
    """float16 round trip: relative error within half an ulp (2**-11), absolute 2**-24 near zero."""
    assert restored.dtype == np.float32
    assert restored.shape == original.shape
    error = np.abs(restored - original)
    bound = np.abs(original) * 2.0**-11 + 2.0**-24
    assert np.all(error <= bound), f"max error {error.max()} (scale {np.abs(original).max()})"


@pytest.fixture
def rng() -> np.random.Generator:
    seed = secrets.randbits(128)  # what np.random.SeedSequence() draws when given no entropy
    print(f"rng seed: {seed}")  # shown by pytest when the test fails
    return np.random.default_rng(seed)


def random_embedding(rng: np.random.Generator) -> ImageEmbedding:
    scale = rng.uniform(0.1, 10.0)
    array = (rng.standard_normal(EMBEDDING_SHAPE) * scale).astype(np.float32)
    height, width = (int(n) for n in rng.integers(1, 16_384, size=2))
    longest = max(height, width)
    input_size = (max(1, round(height * 1024 / longest)), max(1, round(width * 1024 / longest)))
    return ImageEmbedding(embedding=array, original_size=(height, width), input_size=input_size)


def random_logits(rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(MASK_INPUT_SHAPE) * 20.0).astype(np.float32)


@pytest.fixture(params=["memory", "redis"])
def new_cache(request: pytest.FixtureRequest) -> CacheFactory:
    """Builds caches of the backend under test; Redis runs on the private test server."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")

        def factory(*, ttl_s: float = 60.0) -> EmbeddingCache:
            return RedisEmbeddingCache(url, ttl_s=ttl_s, timeout_s=TIMEOUT_S)

    else:

        def factory(*, ttl_s: float = 60.0) -> EmbeddingCache:
            return MemoryEmbeddingCache(max_bytes=64 * 1024 * 1024, ttl_s=ttl_s)

    return factory


# ---- serialisation ---------------------------------------------------------------------------------------


def test_encoded_embedding_is_header_plus_float16(rng: np.random.Generator) -> None:
    assert len(codec.encode_embedding(random_embedding(rng))) == EMBEDDING_PAYLOAD_BYTES


def test_logits_beyond_float16_range_are_clipped_not_infinite() -> None:
    logits = np.zeros(MASK_INPUT_SHAPE, dtype=np.float32)
    logits[0, 0, 0, :2] = [1e6, -1e6]
    restored = codec.decode_low_res_logits(codec.encode_low_res_logits(logits))
    assert np.all(np.isfinite(restored))
    assert restored[0, 0, 0, 0] == 65504.0
    assert restored[0, 0, 0, 1] == -65504.0


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:10], id="shorter-than-header"),
        pytest.param(lambda b: b[:-1], id="truncated-body"),
        pytest.param(lambda b: b"XXXX" + b[4:], id="bad-magic"),
        pytest.param(lambda b: b[:4] + bytes([99]) + b[5:], id="unknown-version"),
        pytest.param(lambda b: b"", id="empty"),
    ],
)
def test_decoding_malformed_bytes_raises_corrupt_cache_entry(
    rng: np.random.Generator, damage: Callable[[bytes], bytes]
) -> None:
    with pytest.raises(codec.CorruptCacheEntryError):
        codec.decode_embedding(damage(codec.encode_embedding(random_embedding(rng))))


def test_logits_bytes_do_not_decode_as_an_embedding(rng: np.random.Generator) -> None:
    with pytest.raises(codec.CorruptCacheEntryError, match="kind"):
        codec.decode_embedding(codec.encode_low_res_logits(random_logits(rng)))


# ---- keys ------------------------------------------------------------------------------------------------


def test_cache_key_is_namespaced_by_model_and_hashes_the_image_id() -> None:
    key = cache_key(MODEL, "photo.jpg", "emb")
    prefix, model, digest, kind = key.split(":")
    assert (prefix, model, kind) == ("sam", MODEL, "emb")
    assert len(digest) == 32
    assert all(c in "0123456789abcdef" for c in digest)
    assert "photo" not in key


@pytest.mark.parametrize("model_id", ["", "vit b", "vit:b", "a/b", "x" * 200])
def test_cache_key_rejects_model_ids_outside_the_allowed_characters(model_id: str) -> None:
    with pytest.raises(ValueError, match="model id"):
        cache_key(model_id, "image", "emb")


def test_cache_key_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="kind"):
        cache_key(MODEL, "image", "mask")


# ---- behaviour on both backends ----------------------------------------------------------------------


def test_embedding_round_trip_restores_sizes_and_float16_values(
    new_cache: CacheFactory, rng: np.random.Generator
) -> None:
    cache, embedding = new_cache(), random_embedding(rng)

    async def scenario() -> tuple[int, ImageEmbedding | None]:
        stored = await cache.put_embedding(MODEL, "img-1", embedding)
        restored = await cache.get_embedding(MODEL, "img-1")
        await cache.close()
        return stored, restored

    stored, restored = run(scenario())
    assert stored == EMBEDDING_PAYLOAD_BYTES
    assert restored is not None
    assert restored.original_size == embedding.original_size
    assert restored.input_size == embedding.input_size
    assert_fp16_close(restored.embedding, embedding.embedding)


def test_low_res_logits_round_trip(new_cache: CacheFactory, rng: np.random.Generator) -> None:
    cache, logits = new_cache(), random_logits(rng)

    async def scenario() -> np.ndarray | None:
        await cache.put_low_res_logits(MODEL, "img-1", logits)
        restored = await cache.get_low_res_logits(MODEL, "img-1")
        await cache.close()
        return restored

    restored = run(scenario())
    assert restored is not None
    assert_fp16_close(restored, logits)


def test_get_all_returns_embedding_and_logits_together(new_cache: CacheFactory, rng: np.random.Generator) -> None:
    cache, embedding, logits = new_cache(), random_embedding(rng), random_logits(rng)

    async def scenario() -> tuple[ImageEmbedding | None, np.ndarray | None]:
        await cache.put_embedding(MODEL, "img-1", embedding)
        await cache.put_low_res_logits(MODEL, "img-1", logits)
        both = await cache.get_all(MODEL, "img-1")
        await cache.close()
        return both

    restored_embedding, restored_logits = run(scenario())
    assert restored_embedding is not None
    assert restored_logits is not None
    assert_fp16_close(restored_embedding.embedding, embedding.embedding)
    assert_fp16_close(restored_logits, logits)


def test_get_all_reports_missing_logits_as_none(new_cache: CacheFactory, rng: np.random.Generator) -> None:
    cache = new_cache()

    async def scenario() -> tuple[ImageEmbedding | None, np.ndarray | None]:
        await cache.put_embedding(MODEL, "img-1", random_embedding(rng))
        both = await cache.get_all(MODEL, "img-1")
        await cache.close()
        return both

    restored_embedding, restored_logits = run(scenario())
    assert restored_embedding is not None
    assert restored_logits is None


def with_local_copies(cache: EmbeddingCache, max_bytes: int = 64 * 1024 * 1024) -> LocallyCopiedCache:
    return LocallyCopiedCache(cache, max_bytes)


def test_local_copy_answers_follow_ups_with_the_same_values(new_cache: CacheFactory, rng: np.random.Generator) -> None:
    cache, embedding, logits = with_local_copies(new_cache()), random_embedding(rng), random_logits(rng)

    async def scenario() -> list[tuple[ImageEmbedding | None, np.ndarray | None]]:
        await cache.put_embedding(MODEL, "img-1", embedding)
        first = await cache.get_all(MODEL, "img-1")
        await cache.put_low_res_logits(MODEL, "img-1", logits)
        second = await cache.get_all(MODEL, "img-1")
        await cache.close()
        return [first, second]

    (first, no_logits), (second, second_logits) = run(scenario())
    assert first is not None
    assert second is not None
    assert no_logits is None
    assert second is first, "the follow-up read did not use the local copy"
    assert_fp16_close(second.embedding, embedding.embedding)
    assert not second.embedding.flags.writeable, "a shared copy must be read-only"
    assert second_logits is not None, "logits written after the first read must still be read"
    assert_fp16_close(second_logits, logits)


def test_local_copy_is_replaced_when_the_image_id_is_embedded_again(
    new_cache: CacheFactory, rng: np.random.Generator
) -> None:
    cache, old, new = with_local_copies(new_cache()), random_embedding(rng), random_embedding(rng)

    async def scenario() -> ImageEmbedding | None:
        await cache.put_embedding(MODEL, "img-1", old)
        await cache.get_all(MODEL, "img-1")
        await cache.put_embedding(MODEL, "img-1", new)  # e.g. evicted, then embedded from another image
        restored, _ = await cache.get_all(MODEL, "img-1")
        await cache.close()
        return restored

    restored = run(scenario())
    assert restored is not None
    assert_fp16_close(restored.embedding, new.embedding)
    assert restored.original_size == new.original_size


def test_local_copy_is_not_served_once_the_shared_entry_is_gone(
    new_cache: CacheFactory, rng: np.random.Generator
) -> None:
    cache = with_local_copies(new_cache())

    async def scenario() -> tuple[ImageEmbedding | None, np.ndarray | None]:
        await cache.put_embedding(MODEL, "img-1", random_embedding(rng))
        await cache.get_all(MODEL, "img-1")
        # The shared entry is evicted behind this process's back.
        await cache._remove([cache_key(MODEL, "img-1", kind) for kind in KINDS])
        both = await cache.get_all(MODEL, "img-1")
        await cache.close()
        return both

    assert run(scenario()) == (None, None)
    assert len(cache.copies) == 0


def test_follow_ups_answered_from_the_local_copy_keep_the_entry_alive(
    new_cache: CacheFactory, rng: np.random.Generator
) -> None:
    ttl_s = 0.6
    cache = with_local_copies(new_cache(ttl_s=ttl_s))

    async def scenario() -> bool:
        await cache.put_embedding(MODEL, "img-1", random_embedding(rng))
        end = time.monotonic() + 2 * ttl_s
        while time.monotonic() < end:
            embedding, _ = await cache.get_all(MODEL, "img-1")
            if embedding is None:
                return False
            await asyncio.sleep(ttl_s / 6)
        # Read by another process without copies: the shared entry itself must still be there.
        alive = await cache.get_embedding(MODEL, "img-1") is not None
        await cache.close()
        return alive

    assert run(scenario()), "the shared entry expired while follow-ups read only its header"


def test_get_all_without_logits_reads_only_the_embedding(new_cache: CacheFactory, rng: np.random.Generator) -> None:
    cache, heard = new_cache(), []
    cache.read_observer = lambda model_id, kind, result: heard.append((kind, result))

    async def scenario() -> tuple[ImageEmbedding | None, np.ndarray | None]:
        await cache.put_embedding(MODEL, "img-1", random_embedding(rng))
        await cache.put_low_res_logits(MODEL, "img-1", random_logits(rng))
        both = await cache.get_all(MODEL, "img-1", with_logits=False)
        await cache.close()
        return both

    embedding, logits = run(scenario())
    assert embedding is not None
    assert logits is None
    assert heard == [("emb", "hit")]


def test_an_embedding_keeps_the_content_hash_of_its_image(new_cache: CacheFactory, rng: np.random.Generator) -> None:
    """The header carries the image's sha256: read back whole, from the header alone, and "" when unknown."""
    cache = new_cache()
    content = "sha256:" + hashlib.sha256(b"an image").hexdigest()
    other = "sha256:" + hashlib.sha256(b"another image").hexdigest()

    async def scenario() -> tuple[str, str, list[bool]]:
        await cache.put_embedding(MODEL, "img-1", dataclasses.replace(random_embedding(rng), content_id=content))
        await cache.put_embedding(MODEL, "img-2", random_embedding(rng))
        first, second = await cache.get_embedding(MODEL, "img-1"), await cache.get_embedding(MODEL, "img-2")
        assert first is not None
        assert second is not None
        checks = [
            await cache.has_embedding(MODEL, "img-1", content),
            await cache.has_embedding(MODEL, "img-1", other),
            await cache.has_embedding(MODEL, "img-1"),
            await cache.has_embedding(MODEL, "img-2", other),  # unknown content matches any
        ]
        await cache.close()
        return first.content_id, second.content_id, checks

    assert run(scenario()) == (content, "", [True, False, True, True])
    assert codec.content_digest("not-a-content-id") == bytes(32)


def test_has_embedding_answers_from_the_header(new_cache: CacheFactory, rng: np.random.Generator) -> None:
    cache = new_cache()

    async def scenario() -> tuple[bool, bool, bool]:
        before = await cache.has_embedding(MODEL, "img-1")
        await cache.put_embedding(MODEL, "img-1", random_embedding(rng))
        after = await cache.has_embedding(MODEL, "img-1")
        other_model = await cache.has_embedding(OTHER_MODEL, "img-1")
        await cache.close()
        return before, after, other_model

    assert run(scenario()) == (False, True, False)


def test_local_copies_keep_the_most_recently_used_within_their_bound(rng: np.random.Generator) -> None:
    one = random_embedding(rng).embedding.nbytes
    copies = LocalEmbeddingCopies(max_bytes=2 * one)
    for name in ("a", "b"):
        copies.put(name, b"tag-" + name.encode(), random_embedding(rng))
    assert copies.get("a") is not None  # "a" is now the most recent
    copies.put("c", b"tag-c", random_embedding(rng))
    assert copies.get("b") is None
    assert copies.get("a") is not None
    assert copies.get("c") is not None
    assert len(copies) == 2


def test_entries_expire_after_their_ttl(new_cache: CacheFactory, rng: np.random.Generator) -> None:
    ttl_s = 0.3
    cache = new_cache(ttl_s=ttl_s)

    async def scenario() -> ImageEmbedding | None:
        await cache.put_embedding(MODEL, "img-1", random_embedding(rng))
        # Not a guess at timing: both backends expire exactly at the TTL, and any read before it would
        # refresh the entry, so the one read comes just after the deadline.
        await asyncio.sleep(ttl_s + 0.05)
        after_ttl = await cache.get_embedding(MODEL, "img-1")
        await cache.close()
        return after_ttl

    assert run(scenario()) is None


def test_reading_an_entry_keeps_it_alive_past_its_ttl(new_cache: CacheFactory, rng: np.random.Generator) -> None:
    ttl_s = 0.6
    cache = new_cache(ttl_s=ttl_s)

    async def read_for(duration_s: float) -> bool:
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            if await cache.get_embedding(MODEL, "img-1") is None:
                return False
            await asyncio.sleep(ttl_s / 6)
        return True

    async def scenario() -> bool:
        await cache.put_embedding(MODEL, "img-1", random_embedding(rng))
        alive = await read_for(2 * ttl_s)
        await cache.close()
        return alive

    assert run(scenario()), "an entry read every ttl/6 expired"


def test_an_embedding_stored_for_one_model_is_a_miss_for_another(
    new_cache: CacheFactory, rng: np.random.Generator
) -> None:
    cache = new_cache()

    async def scenario() -> tuple[ImageEmbedding | None, ImageEmbedding | None]:
        await cache.put_embedding(MODEL, "img-1", random_embedding(rng))
        result = await cache.get_embedding(OTHER_MODEL, "img-1"), await cache.get_embedding(MODEL, "img-1")
        await cache.close()
        return result

    other, same = run(scenario())
    assert other is None
    assert same is not None


@pytest.mark.parametrize(
    "image_id",
    [
        pytest.param("a\x00b\r\n\x1b[31m:*?", id="control-characters"),
        pytest.param("x" * 10_240, id="10kB"),
        pytest.param("sam:other:key:emb", id="key-lookalike"),
        pytest.param("\udcff lone surrogate", id="lone-surrogate"),
    ],
)
def test_odd_image_ids_work_and_never_appear_in_the_key(
    new_cache: CacheFactory, rng: np.random.Generator, image_id: str
) -> None:
    key = cache_key(MODEL, image_id, "emb")
    assert image_id not in key
    assert len(key) < 100
    cache = new_cache()

    async def scenario() -> tuple[ImageEmbedding | None, ImageEmbedding | None]:
        await cache.put_embedding(MODEL, image_id, random_embedding(rng))
        result = await cache.get_embedding(MODEL, image_id), await cache.get_embedding(MODEL, image_id + "!")
        await cache.close()
        return result

    found, neighbour = run(scenario())
    assert found is not None
    assert neighbour is None


def test_malformed_bytes_under_a_key_are_a_miss(new_cache: CacheFactory, rng: np.random.Generator) -> None:
    cache = new_cache()

    async def scenario() -> tuple[ImageEmbedding | None, ImageEmbedding | None, np.ndarray | None]:
        await cache._store(cache_key(MODEL, "img-1", "emb"), b"not an embedding")
        # Valid bytes of the wrong kind are just as unreadable.
        await cache._store(cache_key(MODEL, "img-1", "lowres"), codec.encode_embedding(random_embedding(rng)))
        embedding = await cache.get_embedding(MODEL, "img-1")
        both = await cache.get_all(MODEL, "img-1")
        await cache.close()
        return embedding, *both

    assert run(scenario()) == (None, None, None)


def test_read_observer_hears_hit_or_miss_once_per_kind_read_and_nothing_of_writes(
    new_cache: CacheFactory, rng: np.random.Generator
) -> None:
    cache = new_cache()
    heard: list[tuple[str, str, str]] = []
    cache.read_observer = lambda model_id, kind, result: heard.append((model_id, kind, result))

    async def scenario() -> None:
        await cache.put_embedding(MODEL, "img-1", random_embedding(rng))
        await cache.get_embedding(MODEL, "img-1")
        await cache.get_low_res_logits(MODEL, "img-1")
        await cache.get_all(MODEL, "img-1")
        await cache._store(cache_key(MODEL, "img-2", "emb"), b"not an embedding")
        await cache.get_embedding(MODEL, "img-2")
        await cache.close()

    run(scenario())
    assert heard == [
        (MODEL, "emb", "hit"),
        (MODEL, "lowres", "miss"),
        (MODEL, "emb", "hit"),
        (MODEL, "lowres", "miss"),
        (MODEL, "emb", "miss"),
    ]


def test_a_closed_cache_reopens_in_a_new_event_loop(new_cache: CacheFactory, rng: np.random.Generator) -> None:
    cache = new_cache()

    async def put_then_close() -> None:
        await cache.put_embedding(MODEL, "img-1", random_embedding(rng))
        await cache.close()

    async def get_then_close() -> ImageEmbedding | None:
        found = await cache.get_embedding(MODEL, "img-1")
        await cache.close()
        return found

    run(put_then_close())
    assert run(get_then_close()) is not None


def test_redis_cache_left_open_works_in_the_next_event_loop(redis_url: str, rng: np.random.Generator) -> None:
    cache = RedisEmbeddingCache(redis_url, ttl_s=60, timeout_s=TIMEOUT_S)
    run(cache.put_embedding(MODEL, "img-1", random_embedding(rng)))  # its loop ends with connections open

    async def get_then_close() -> ImageEmbedding | None:
        found = await cache.get_embedding(MODEL, "img-1")
        await cache.close()
        return found

    def get_in_a_new_loop_and_collect() -> ImageEmbedding | None:
        found = run(get_then_close())
        gc.collect()
        return found

    # The first loop's sockets cannot be closed from the second loop; they are dropped with a warning.
    with pytest.warns(ResourceWarning):
        found = get_in_a_new_loop_and_collect()
    assert found is not None


# ---- memory backend ----------------------------------------------------------------------------------------


def test_memory_cache_evicts_the_least_recently_used_entry_by_bytes(rng: np.random.Generator) -> None:
    cache = MemoryEmbeddingCache(max_bytes=3 * EMBEDDING_PAYLOAD_BYTES + 100, ttl_s=60)

    async def scenario() -> dict[str, bool]:
        for image_id in ("a", "b", "c"):
            await cache.put_embedding(MODEL, image_id, random_embedding(rng))
        await cache.get_embedding(MODEL, "a")  # touching "a" makes "b" the least recently used
        await cache.put_embedding(MODEL, "d", random_embedding(rng))
        return {i: await cache.get_embedding(MODEL, i) is not None for i in ("a", "b", "c", "d")}

    assert run(scenario()) == {"a": True, "b": False, "c": True, "d": True}
    assert cache.total_bytes == 3 * EMBEDDING_PAYLOAD_BYTES <= cache.max_bytes


def test_memory_cache_evicts_as_many_entries_as_a_large_value_needs(rng: np.random.Generator) -> None:
    small = len(codec.encode_low_res_logits(random_logits(rng)))
    cache = MemoryEmbeddingCache(max_bytes=EMBEDDING_PAYLOAD_BYTES + small, ttl_s=60)

    async def scenario() -> None:
        for image_id in ("a", "b", "c"):
            await cache.put_low_res_logits(MODEL, image_id, random_logits(rng))
        await cache.put_embedding(MODEL, "big", random_embedding(rng))

    run(scenario())
    assert len(cache) == 2
    assert cache.total_bytes <= cache.max_bytes


def test_memory_cache_does_not_store_a_value_larger_than_its_bound(rng: np.random.Generator) -> None:
    cache = MemoryEmbeddingCache(max_bytes=1024, ttl_s=60)
    assert run(cache.put_embedding(MODEL, "img-1", random_embedding(rng))) == 0
    assert run(cache.get_embedding(MODEL, "img-1")) is None
    assert cache.total_bytes == 0


# ---- Redis backend ---------------------------------------------------------------------------------------


def test_make_cache_picks_redis_when_a_url_is_given_and_memory_otherwise() -> None:
    shared = make_cache("redis://127.0.0.1:1/0", ttl_s=60, timeout_s=TIMEOUT_S, memory_bytes=1024)
    local = make_cache(None, ttl_s=60, timeout_s=TIMEOUT_S, memory_bytes=1024)
    assert isinstance(shared, RedisEmbeddingCache)
    assert isinstance(local, MemoryEmbeddingCache)


def test_redis_keys_hold_only_the_hashed_image_id(
    redis_server: LocalRedis, redis_url: str, rng: np.random.Generator
) -> None:
    image_id = "secret-customer-photo\x00.jpg"
    cache = RedisEmbeddingCache(redis_url, ttl_s=60, timeout_s=TIMEOUT_S)

    async def scenario() -> None:
        await cache.put_embedding(MODEL, image_id, random_embedding(rng))
        await cache.close()

    run(scenario())
    with redis_server.client() as client:
        keys = [key.decode() for key in client.keys("*")]
        ttl_ms = client.pttl(keys[0])
    assert keys == [cache_key(MODEL, image_id, "emb")]
    assert "secret" not in keys[0]
    assert 0 < ttl_ms <= 60_000


def test_redis_down_raises_cache_unavailable_quickly_then_recovers_on_its_own(
    redis_server: LocalRedis, redis_url: str, rng: np.random.Generator
) -> None:
    cache = RedisEmbeddingCache(redis_url, ttl_s=60, timeout_s=TIMEOUT_S)
    embedding = random_embedding(rng)

    async def fails_quickly(call: Awaitable[object]) -> float:
        start = time.monotonic()
        with pytest.raises(CacheUnavailable):
            await call
        return time.monotonic() - start

    async def while_down() -> tuple[list[float], bool]:
        await cache.put_embedding(MODEL, "img-1", embedding)  # pooled connections now exist
        redis_server.stop()
        elapsed = [
            await fails_quickly(cache.get_embedding(MODEL, "img-1")),
            await fails_quickly(cache.put_embedding(MODEL, "img-1", embedding)),
            await fails_quickly(cache.get_all(MODEL, "img-1")),
        ]
        return elapsed, await cache.ping()

    async def after_restart() -> tuple[bool, ImageEmbedding | None]:
        # Same object, same loop as before the outage would also do; the first call must already work.
        await cache.put_embedding(MODEL, "img-1", embedding)
        result = await cache.ping(), await cache.get_embedding(MODEL, "img-1")
        await cache.close()
        return result

    async def scenario() -> tuple[list[float], bool, bool, ImageEmbedding | None]:
        elapsed, ping_while_down = await while_down()
        redis_server.start()
        return elapsed, ping_while_down, *await after_restart()

    try:
        elapsed, ping_while_down, ping_after, restored = run(scenario())
    finally:
        redis_server.start()
    assert max(elapsed) < 2 * TIMEOUT_S, f"calls took {elapsed} s while Redis was down"
    assert ping_while_down is False
    assert ping_after is True
    assert restored is not None


def test_read_observer_hears_unavailable_for_each_kind_of_a_read_while_redis_is_down(
    redis_server: LocalRedis, redis_url: str
) -> None:
    cache = RedisEmbeddingCache(redis_url, ttl_s=60, timeout_s=TIMEOUT_S)
    heard: list[tuple[str, str, str]] = []
    cache.read_observer = lambda model_id, kind, result: heard.append((model_id, kind, result))

    async def scenario() -> None:
        with pytest.raises(CacheUnavailable):
            await cache.get_all(MODEL, "img-1")
        await cache.close()

    redis_server.stop()
    try:
        run(scenario())
    finally:
        redis_server.start()
    assert heard == [(MODEL, "emb", "unavailable"), (MODEL, "lowres", "unavailable")]


def test_a_stalled_redis_raises_cache_unavailable_within_twice_the_timeout(
    redis_server: LocalRedis, redis_url: str, rng: np.random.Generator
) -> None:
    cache = RedisEmbeddingCache(redis_url, ttl_s=60, timeout_s=TIMEOUT_S)
    embedding = random_embedding(rng)

    async def scenario() -> tuple[float, ImageEmbedding | None]:
        await cache.put_embedding(MODEL, "img-1", embedding)
        with redis_server.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", 5_000, "WRITE")  # holds GETEX; UNPAUSE still runs
            start = time.monotonic()
            try:
                with pytest.raises(CacheUnavailable):
                    await cache.get_embedding(MODEL, "img-1")
                elapsed = time.monotonic() - start
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
        found = None
        for _ in range(40):  # the timeout opened the breaker: calls fail at once until its ping answers
            with contextlib.suppress(CacheUnavailable):
                found = await cache.get_embedding(MODEL, "img-1")
                break
            await asyncio.sleep(0.05)
        await cache.close()
        return elapsed, found

    elapsed, found_after = run(scenario())
    assert elapsed < 2 * TIMEOUT_S, f"took {elapsed:.2f} s"
    assert found_after is not None


def test_a_redis_restart_between_calls_is_invisible_to_the_caller(
    redis_server: LocalRedis, redis_url: str, rng: np.random.Generator
) -> None:
    cache = RedisEmbeddingCache(redis_url, ttl_s=60, timeout_s=TIMEOUT_S)
    embedding = random_embedding(rng)

    async def scenario() -> ImageEmbedding | None:
        await cache.put_embedding(MODEL, "img-1", embedding)
        redis_server.stop()  # the pooled connection dies without the client noticing
        redis_server.start()
        assert await cache.get_embedding(MODEL, "img-1") is None  # no persistence: the data is gone
        await cache.put_embedding(MODEL, "img-1", embedding)
        found = await cache.get_embedding(MODEL, "img-1")
        await cache.close()
        return found

    assert run(scenario()) is not None


def test_redis_full_of_entries_evicts_old_ones_instead_of_failing_writes(
    redis_server: LocalRedis, redis_url: str, rng: np.random.Generator
) -> None:
    with redis_server.client() as client:
        client.config_set("maxmemory", "8mb")  # reset to the default by the next `redis_url`
    cache = RedisEmbeddingCache(redis_url, ttl_s=60, timeout_s=TIMEOUT_S)
    embedding = random_embedding(rng)
    writes = 12  # ~24 MiB of embeddings into 8 MiB

    async def scenario() -> ImageEmbedding | None:
        for i in range(writes):
            await cache.put_embedding(MODEL, f"img-{i}", embedding)
        latest = await cache.get_embedding(MODEL, f"img-{writes - 1}")
        await cache.close()
        return latest

    assert run(scenario()) is not None
    with redis_server.client() as client:
        assert 0 < client.dbsize() < writes


def test_redis_keeps_an_embedding_in_chunks_that_fit_its_allocator(
    redis_server: LocalRedis, redis_url: str, rng: np.random.Generator
) -> None:
    """A 2 MiB + 80 B string takes jemalloc's 2.5 MiB class (2,621,488 B of MEMORY USAGE); a hash of 512 KiB
    chunks (header field first) takes little more than its payload. The value reads back whole, and a chunk
    gone makes it a miss."""
    cache = RedisEmbeddingCache(redis_url, ttl_s=60, timeout_s=TIMEOUT_S)
    embedding = random_embedding(rng)
    key = cache_key(MODEL, "img-1", "emb")

    async def scenario() -> tuple[ImageEmbedding | None, bool, ImageEmbedding | None]:
        await cache.put_embedding(MODEL, "img-1", embedding)
        found = await cache.get_embedding(MODEL, "img-1")
        header_only = await cache.has_embedding(MODEL, "img-1")
        with redis_server.client() as client:
            assert client.type(key) == b"hash"
            usage = int(client.memory_usage(key, samples=0) or 0)  # every field (it samples 5 by default)
            print(f"\nMEMORY USAGE of an embedding: {usage:,} B for {EMBEDDING_PAYLOAD_BYTES:,} B of payload")
            assert EMBEDDING_PAYLOAD_BYTES < usage < 1.03 * EMBEDDING_PAYLOAD_BYTES
            client.hdel(key, "2")
        broken = await cache.get_embedding(MODEL, "img-1")
        await cache.close()
        return found, header_only, broken

    found, header_only, broken = run(scenario())
    assert found is not None
    assert_fp16_close(found.embedding, embedding.embedding)
    assert header_only
    assert broken is None


# ---- Redis with a password (as k8s/redis.yaml runs it) -------------------------------------------------------


def test_a_redis_with_a_password_serves_the_url_that_carries_it_and_refuses_others(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A real redis-server with `--requirepass`: the URL with the password caches; without it, or with a wrong
    one, every operation is a CacheUnavailable (the 503 "resend the image" path), never a crash; the settings
    keep the URL secret."""
    password = secrets.token_urlsafe(24)
    server = LocalRedis(port=free_port(), workdir=tmp_path, password=password)
    server.start()
    try:
        assert password in server.url
        settings = Settings(redis_url=server.url)
        assert password not in repr(settings)
        assert password not in str(settings.model_dump())
        good = RedisEmbeddingCache(settings.redis_url_value() or "", ttl_s=60, timeout_s=0.5)
        wrong = RedisEmbeddingCache(server.url.replace(password, "not-it"), ttl_s=60, timeout_s=0.5)
        none = RedisEmbeddingCache(f"redis://127.0.0.1:{server.port}/0", ttl_s=60, timeout_s=0.5)
        embedding = random_embedding(rng)

        async def scenario() -> list[str]:
            await good.put_embedding(MODEL, "img-pw", embedding)
            assert await good.get_embedding(MODEL, "img-pw") is not None
            refusals = []
            for cache in (wrong, none):
                with pytest.raises(CacheUnavailable) as refused:
                    await cache.get_embedding(MODEL, "img-pw")
                refusals.append(str(refused.value))
                with pytest.raises(CacheUnavailable):
                    await cache.put_embedding(MODEL, "img-pw", embedding)
                await cache.close()
            assert await good.get_embedding(MODEL, "img-pw") is not None  # nothing overwritten
            await good.close()
            return refusals

        refusals = run(scenario())
        assert all(password not in reason for reason in refusals)
    finally:
        server.stop()
