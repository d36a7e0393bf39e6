"""Tenants without Ray: whose token is whose, where each tenant's ids and logits live in the cache, and the
per-tenant bound on requests in flight (the real ASGI middleware, over real HTTP in process). The same rules
over the real Serve app: tests/deployments/test_security.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import SecretStr
from starlette.types import Receive, Scope, Send

from deployments.limits import BearerAuth, TenantLimit
from sam_core.cache import EmbeddingCache, LocallyCopiedCache, MemoryEmbeddingCache, RedisEmbeddingCache
from sam_core.embedding import ImageEmbedding
from sam_core.errors import InvalidInput
from sam_core.settings import Settings
from sam_core.tenants import tenant_tokens
from sam_core.wire.image_ids import DEFAULT_TENANT, check_client_image_id, image_keys
from tests.core.test_cache import MODEL, random_embedding, random_logits, run

# ---- tokens -----------------------------------------------------------------------------------------------


def test_every_configured_token_names_its_tenant(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps({"carol": "carol-token"}))
    settings = Settings(
        auth_token=SecretStr("one-token"),
        auth_tokens={"alice": SecretStr("alice-token"), "bob": SecretStr("bob-token")},
        auth_tokens_file=tokens_file,
    )
    assert tenant_tokens(settings) == {
        b"one-token": DEFAULT_TENANT,
        b"alice-token": "alice",
        b"bob-token": "bob",
        b"carol-token": "carol",
    }
    assert tenant_tokens(Settings()) == {}


def test_the_tokens_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAM_AUTH_TOKENS", json.dumps({"alice": "alice-token"}))
    settings = Settings.with_env_overrides({})
    assert tenant_tokens(settings) == {b"alice-token": "alice"}
    assert "alice-token" not in repr(settings)


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ({"alice": "same", "bob": "same"}, "share a token"),
        ({"alice": " "}, "empty token"),
        ({"al:ice": "token"}, "tenant name"),
        ({"": "token"}, "tenant name"),
    ],
)
def test_ambiguous_or_malformed_tokens_are_refused_at_start(tokens: dict[str, str], message: str) -> None:
    settings = Settings(auth_tokens={name: SecretStr(token) for name, token in tokens.items()})
    with pytest.raises(ValueError, match=message):
        tenant_tokens(settings)


@pytest.mark.parametrize("content", ["not json", '["a list"]', '{"alice": 3}'])
def test_a_bad_tokens_file_is_refused_naming_the_setting(tmp_path: Path, content: str) -> None:
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(content)
    with pytest.raises(ValueError, match="auth_tokens_file"):
        tenant_tokens(Settings(auth_tokens_file=tokens_file))


# ---- keys ---------------------------------------------------------------------------------------------------


def test_a_clients_id_is_its_tenants_own_and_a_content_id_is_shared_but_not_its_logits() -> None:
    alice, bob = image_keys("alice", "photo-1"), image_keys("bob", "photo-1")
    assert alice.cache_key != bob.cache_key
    assert alice.reply_id == bob.reply_id == "photo-1"
    assert alice.logits_key == alice.cache_key
    content = "sha256:" + "ab" * 32
    shared_a, shared_b = image_keys("alice", None, content), image_keys("bob", content)
    assert shared_a.cache_key == shared_b.cache_key == content
    assert shared_a.reply_id == content
    assert shared_a.logits_key != shared_b.logits_key
    # A client id that looks like another tenant's key is still its own tenant's (and refused over HTTP).
    assert image_keys("bob", "tenant:alice:photo-1").cache_key != alice.cache_key
    assert image_keys(DEFAULT_TENANT, "tenant:alice:photo-1").cache_key == alice.cache_key
    with pytest.raises(InvalidInput) as reserved:
        check_client_image_id("tenant:alice:photo-1")
    assert reserved.value.field == "image_id"
    # The default tenant keeps its ids as keys, as before tenants.
    assert image_keys(DEFAULT_TENANT, "photo-1").cache_key == "photo-1"
    assert image_keys(DEFAULT_TENANT, content).logits_key == content
    with pytest.raises(InvalidInput) as refused:
        image_keys("alice", None)
    assert refused.value.field == "image"


@pytest.fixture(params=["memory", "redis", "redis+local-copies"])
def cache(request: pytest.FixtureRequest) -> EmbeddingCache:
    if request.param == "memory":
        return MemoryEmbeddingCache(max_bytes=64 * 1024 * 1024, ttl_s=60)
    shared = RedisEmbeddingCache(request.getfixturevalue("redis_url"), ttl_s=60, timeout_s=0.5)
    return LocallyCopiedCache(shared, 64 * 1024 * 1024) if "local" in request.param else shared


def test_logits_are_read_under_their_own_id_beside_the_embedding(cache: EmbeddingCache) -> None:
    rng = np.random.default_rng(5)
    embedding, logits = random_embedding(rng), random_logits(rng)
    content = "sha256:" + "cd" * 32
    mine, theirs = image_keys("alice", content).logits_key, image_keys("bob", content).logits_key

    async def scenario() -> list[tuple[ImageEmbedding | None, np.ndarray | None]]:
        await cache.put_embedding(MODEL, content, embedding)
        await cache.put_low_res_logits(MODEL, mine, logits)
        # The second read of mine is a local copy's, where the cache keeps them.
        found = [await cache.get_all(MODEL, content, logits_id=logits_id) for logits_id in (mine, mine, theirs)]
        await cache.close()
        return found

    *mine_found, theirs_found = run(scenario())
    for found_embedding, found_logits in mine_found:
        assert found_embedding is not None
        assert found_logits is not None
        np.testing.assert_allclose(found_logits, logits, rtol=1e-3, atol=1e-3)
    assert theirs_found[0] is not None
    assert theirs_found[1] is None


def test_embedding_an_id_again_drops_the_logits_of_the_image_it_held(cache: EmbeddingCache) -> None:
    rng = np.random.default_rng(6)

    async def scenario() -> object:
        await cache.put_embedding(MODEL, "tenant:alice:photo", random_embedding(rng))
        await cache.put_low_res_logits(MODEL, "tenant:alice:photo", random_logits(rng))
        await cache.put_embedding(MODEL, "tenant:alice:photo", random_embedding(rng))
        logits = await cache.get_low_res_logits(MODEL, "tenant:alice:photo")
        await cache.close()
        return logits

    assert run(scenario()) is None


# ---- the bound on each tenant's requests in flight ---------------------------------------------------------


def test_a_tenant_over_its_bound_gets_429_and_the_others_are_served() -> None:
    """Alice holds her one slot with a request that waits; her next is a 429 with Retry-After, while bob's is
    served; once hers ends she is served again."""
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            await release.wait()
        body = scope["state"]["tenant"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    guarded = BearerAuth(TenantLimit(app))
    previous = BearerAuth.tokens, TenantLimit.max_in_flight
    BearerAuth.tokens, TenantLimit.max_in_flight = {b"a-token": "alice", b"b-token": "bob"}, 1
    alice, bob = {"Authorization": "Bearer a-token"}, {"Authorization": "Bearer b-token"}

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=guarded)
        async with httpx.AsyncClient(transport=transport, base_url="http://sam") as client:
            slow = asyncio.create_task(client.get("/slow", headers=alice))
            await asyncio.sleep(0.05)
            over, other, anonymous = (
                await client.get("/fast", headers=alice),
                await client.get("/fast", headers=bob),
                await client.get("/fast"),
            )
            release.set()
            return [over, other, anonymous, await slow, await client.get("/fast", headers=alice)]

    try:
        over, other, anonymous, slow, later = asyncio.run(scenario())
    finally:
        BearerAuth.tokens, TenantLimit.max_in_flight = previous
    assert over.status_code == 429
    assert over.headers["retry-after"] == "1"
    assert over.json()["error"] == "Overloaded"
    assert (other.status_code, other.text) == (200, "bob")
    assert anonymous.status_code == 401
    assert (slow.status_code, slow.text) == (200, "alice")
    assert (later.status_code, later.text) == (200, "alice")
