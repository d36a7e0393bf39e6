"""Single flight over real HTTP: an application with two ingress replicas on the test's Redis, its real
encoder counting its runs. Concurrent cold requests for one image embed it once; a lock left by a holder
that died frees within its TTL; two images sent under one image_id each get their own answer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from ray import serve

from sam_core.cache.keys import flight_key
from sam_core.settings import ImageLimits
from sam_core.wire.images import read_image
from tests.conftest import ServeApp, second_app
from tests.deployments.test_api import image_payload

pytestmark = pytest.mark.slow

NAME = "sam-single-flight"
CLICK = {"point_coords": [[100.0, 120.0]], "point_labels": [1], "format": "rle"}


@pytest.fixture(scope="module")
def two_ingresses(serve_app: ServeApp) -> Iterator[str]:
    """The app under /sam-single-flight with two ingress replicas (one encoder, one decoder); its base URL."""
    with second_app(NAME, serve_app.settings, ingress_options={"num_replicas": 2}):
        yield f"{serve_app.url}/{NAME}"


def encoder_runs() -> int:
    stats: dict[str, int] = serve.get_deployment_handle("SamEncoder", app_name=NAME).stats.remote().result()
    return stats["images_embedded"]


def new_pixels(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)


def post_all(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Every body at once, each on its own connection (as separate clients would)."""

    def post(body: dict[str, Any]) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=120) as client:
            return client.post("/sam/segment_image", json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(post, bodies))
    for response in responses:
        assert response.status_code == 200, response.text
    return responses


def masks(response: httpx.Response) -> Any:
    """The answer without its per-request fields (time, image_id)."""
    return {k: v for k, v in response.json().items() if k not in ("time", "image_id")}


def test_eight_concurrent_cold_requests_through_two_ingress_replicas_embed_once(two_ingresses: str) -> None:
    rng = np.random.default_rng()
    body = {"image": image_payload(new_pixels(rng)), **CLICK}
    ingresses: set[str] = set()
    # The proxy picks an ingress per request; three new images make sure both replicas took part.
    for _ in range(3):
        body = {"image": image_payload(new_pixels(rng)), **CLICK}
        before = encoder_runs()
        responses = post_all(two_ingresses, [body] * 8)
        assert encoder_runs() - before == 1, "the encoder ran more than once for one image"
        first = masks(responses[0])
        assert all(masks(r) == first for r in responses[1:])
        assert len({r.json()["image_id"] for r in responses}) == 1
        ingresses |= {r.headers["X-Ingress-Replica"] for r in responses}
        if len(ingresses) == 2:
            break
    assert len(ingresses) == 2, "the requests never reached both ingress replicas"


def test_a_dead_holders_lock_frees_within_its_ttl(two_ingresses: str, serve_app: ServeApp) -> None:
    """A lock as a replica killed mid-embed leaves it (never renewed, never released): the requests wait for
    it, take the run over when it expires, and the encoder runs once for all of them."""
    rng = np.random.default_rng()
    image = image_payload(new_pixels(rng))
    image_id = f"dead-holder-{uuid.uuid4()}"
    with httpx.Client(base_url=two_ingresses, timeout=60) as http:
        model_id = http.get("/readyz").json()["model_id"]
    content_id = read_image("base64", image["value"], ImageLimits()).content_id
    ttl_s = 3.0
    url = serve_app.settings.redis_url_value()
    assert url is not None
    client = redis.Redis.from_url(url)
    # The value a holder sets: a token and the image's content id; a dead holder's token renews nothing.
    client.set(flight_key(model_id, image_id), f"dead {content_id}", px=int(ttl_s * 1000))
    before = encoder_runs()
    started = time.perf_counter()
    responses = post_all(two_ingresses, [{"image": image, "image_id": image_id, **CLICK}] * 4)
    seconds = time.perf_counter() - started
    print(f"\n4 requests behind a dead holder's {ttl_s:.0f} s lock answered in {seconds:.2f} s")
    assert encoder_runs() - before == 1
    assert seconds >= ttl_s * 0.8, "the requests did not wait for the lock"
    assert seconds < ttl_s + 15, "the requests did not take over within the TTL plus one embed"
    assert all(masks(r) == masks(responses[0]) for r in responses)


def test_two_images_under_one_image_id_each_get_their_own_answer(two_ingresses: str, serve_app: ServeApp) -> None:
    """Requests for the first image wait on its run's lock under a shared image_id; a request with a second
    image under that id meanwhile embeds its own at once (it does not wait for the run nor take its result),
    and the second image's entry that lands under the id is not what the first image's waiters are given."""
    rng = np.random.default_rng()
    first, second = image_payload(new_pixels(rng)), image_payload(new_pixels(rng))
    # Each image's answer under its own key (its content hash) is the reference.
    reference_first, reference_second = (
        masks(r) for r in post_all(two_ingresses, [{"image": first, **CLICK}, {"image": second, **CLICK}])
    )
    assert reference_first != reference_second, "the two images must answer differently for this test to mean anything"
    with httpx.Client(base_url=two_ingresses, timeout=60) as http:
        model_id = http.get("/readyz").json()["model_id"]
    shared_id = f"one-id-{uuid.uuid4()}"
    first_content = read_image("base64", first["value"], ImageLimits()).content_id
    url = serve_app.settings.redis_url_value()
    assert url is not None
    client = redis.Redis.from_url(url)
    ttl_s = 4.0
    # The first image's run holds the id (a holder that never lands: its lock frees after the TTL).
    client.set(flight_key(model_id, shared_id), f"holder {first_content}", px=int(ttl_s * 1000))
    before = encoder_runs()
    with ThreadPoolExecutor(1) as pool:
        started = time.perf_counter()
        waiting = pool.submit(post_all, two_ingresses, [{"image": first, "image_id": shared_id, **CLICK}] * 3)
        time.sleep(0.5)
        (second_answer,) = post_all(two_ingresses, [{"image": second, "image_id": shared_id, **CLICK}])
        second_s = time.perf_counter() - started - 0.5
        first_answers = waiting.result()
        first_s = time.perf_counter() - started
    print(f"\nsecond image answered in {second_s:.2f} s; the first's waiters in {first_s:.2f} s")
    assert second_s < ttl_s / 2, "the second image waited for the first image's run"
    assert masks(second_answer) == reference_second
    assert first_s >= ttl_s * 0.8, "the first image's requests did not wait for its run's lock"
    assert all(masks(r) == reference_first for r in first_answers)
    assert encoder_runs() - before == 2, "one run per image"
