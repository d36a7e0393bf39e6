"""Redis faults: an outage costs only the requests that have nothing but an image_id (a fast 503 saying to resend
the image); the app recovers by itself when Redis returns; a full Redis evicts instead of failing writes."""

from __future__ import annotations

import base64
import io
import shutil
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from sam_cli.local_redis import LocalRedis, free_port
from tests.conftest import ServeApp, second_app

pytestmark = pytest.mark.slow

APP = "sam-faults"
TIMEOUT_S = 0.5


def png_base64() -> str:
    pixels = np.random.default_rng().integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not on PATH")
    server = LocalRedis(executable, port=free_port(), workdir=tmp_path_factory.mktemp("faults-redis"), maxmemory="64mb")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def faults_app(serve_app: ServeApp, own_redis: LocalRedis) -> Iterator[httpx.Client]:
    """A second application on its own redis-server, which the tests stop, start and fill."""
    settings = serve_app.settings.model_copy(
        update={"redis_url": SecretStr(own_redis.url), "cache_timeout_s": TIMEOUT_S}
    )
    with second_app(APP, settings), httpx.Client(base_url=f"{serve_app.url}/{APP}", timeout=120) as client:
        yield client


def click(http: httpx.Client, image_id: str, image: str | None = None) -> httpx.Response:
    body: dict[str, object] = {"image_id": image_id, "point_coords": [[20, 30]], "point_labels": [1]}
    if image is not None:
        body["image"] = {"type": "base64", "value": image}
    return http.post("/sam/segment_image", json=body)


def test_redis_outage_fails_only_id_only_requests_fast_and_recovers(
    faults_app: httpx.Client, own_redis: LocalRedis
) -> None:
    image, image_id = png_base64(), f"outage-{uuid.uuid4()}"
    assert click(faults_app, image_id, image).status_code == 200
    assert click(faults_app, image_id).status_code == 200

    own_redis.stop()
    started = time.monotonic()
    response = click(faults_app, image_id)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.json()["field"] == "image_id"
    assert "resend" in response.json()["reason"]
    assert elapsed < 4 * TIMEOUT_S + 2.0, f"503 took {elapsed:.1f} s"
    # A request that carries the image is still answered: the encoder embeds it again, the write just fails.
    assert click(faults_app, image_id, image).status_code == 200

    own_redis.start()  # empty: Redis keeps nothing on disk
    deadline = time.monotonic() + 30
    while click(faults_app, image_id, image).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    response = click(faults_app, image_id)
    assert response.status_code == 200, "caching did not resume after Redis came back: " + response.text


def test_full_redis_evicts_old_embeddings_instead_of_failing(faults_app: httpx.Client, own_redis: LocalRedis) -> None:
    with own_redis.client() as client:
        client.config_set("maxmemory", "8mb")  # room for about three 2 MB embeddings
    ids = [f"lru-{i}-{uuid.uuid4()}" for i in range(8)]
    for image_id in ids:
        if image_id == ids[-1]:
            # Redis's LRU clock ticks once a second: keys written within one second tie, and the eviction that
            # makes room for the last image could take its own half-written entry. A tick apart, it is the newest.
            time.sleep(1.1)
        response = click(faults_app, image_id, png_base64())
        assert response.status_code == 200, response.text

    assert click(faults_app, ids[-1]).status_code == 200
    first = click(faults_app, ids[0])
    assert first.status_code == 404
    assert first.json()["field"] == "image_id"
    with own_redis.client() as client:
        assert int(client.info("stats")["evicted_keys"]) > 0


def replica_actors(app: str, deployment: str) -> list[tuple[str, str]]:
    import ray

    return [
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith("SERVE_REPLICA") and f"{app}#{deployment}#" in actor["name"]
    ]


def test_killed_encoder_and_decoder_are_replaced_and_no_embedding_is_lost(faults_app: httpx.Client) -> None:
    import concurrent.futures

    import ray

    cached_id = f"kept-{uuid.uuid4()}"
    assert click(faults_app, cached_id, png_base64()).status_code == 200
    encoder, decoder = replica_actors(APP, "SamEncoder"), replica_actors(APP, "SamDecoder")
    assert len(encoder) == 1
    assert len(decoder) == 1

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(click, faults_app, f"new-{uuid.uuid4()}", png_base64()) for _ in range(4)]
        time.sleep(0.2)
        killed_at = time.monotonic()
        for name, namespace in encoder + decoder:
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
        statuses = [future.result().status_code for future in in_flight]
    # At most the in-flight requests fail, and then with a 503 that says to retry (never a 500, never a hang).
    assert all(status in (200, 503) for status in statuses), statuses

    deadline = killed_at + 120
    while time.monotonic() < deadline:
        if click(faults_app, f"after-{uuid.uuid4()}", png_base64()).status_code == 200:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the app did not answer a new image within 120 s of losing its encoder and decoder")
    recovery_s = time.monotonic() - killed_at
    print(f"\nrecovered {recovery_s:.1f} s after the encoder and decoder replicas were killed; in flight: {statuses}")
    # The embedding cached before the kill is still served without the image.
    assert click(faults_app, cached_id).status_code == 200


def test_without_redis_follow_ups_work_on_any_decoder_replica(serve_app: ServeApp) -> None:
    # The in-memory cache is per process: the ingress keeps the embeddings and sends them inline.
    settings = serve_app.settings.model_copy(update={"redis_url": None})
    name = "sam-no-redis"
    with (
        second_app(name, settings, decoder_options={"num_replicas": 2}),
        httpx.Client(base_url=f"{serve_app.url}/{name}", timeout=120) as http,
    ):
        image_id = f"memory-{uuid.uuid4()}"
        embedded = http.post(
            "/sam/embed_image", json={"image": {"type": "base64", "value": png_base64()}, "image_id": image_id}
        )
        assert embedded.status_code == 200
        assert not embedded.json()["cached"]
        again = http.post("/sam/embed_image", json={"image_id": image_id})
        assert again.status_code == 200
        assert again.json()["cached"]
        replicas = set()
        for _ in range(8):
            response = click(http, image_id)
            assert response.status_code == 200, response.text
            replicas.add(response.headers["X-Decoder-Replica"])
        assert len(replicas) == 2
