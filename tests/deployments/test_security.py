"""Optional bearer-token auth on the API routes; probes and docs stay open."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from deployments.limits import BearerAuth
from tests.conftest import ServeApp, second_app
from tests.deployments.test_api import image_payload, png_bytes
from tests.slow_http import slow_http_server

pytestmark = pytest.mark.slow

APP = "sam-auth"
TOKEN = "correct horse battery staple"
TENANT_TOKENS = {"alice": "alice's long random token", "bob": "bob's long random token"}


@pytest.fixture(scope="module")
def auth_app(serve_app: ServeApp) -> Iterator[httpx.Client]:
    tenants = {name: SecretStr(token) for name, token in TENANT_TOKENS.items()}
    settings = serve_app.settings.model_copy(update={"auth_token": SecretStr(TOKEN), "auth_tokens": tenants})
    with second_app(APP, settings), httpx.Client(base_url=f"{serve_app.url}/{APP}", timeout=60) as client:
        yield client


BODY = {"image_id": "whatever", "point_coords": [[1, 1]], "point_labels": [1]}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}],
    ids=["none", "wrong-token", "wrong-scheme", "empty"],
)
def test_api_without_the_right_bearer_token_is_401(auth_app: httpx.Client, headers: dict[str, str]) -> None:
    response = auth_app.post("/sam/segment_image", json=BODY, headers=headers)
    assert response.status_code == 401
    assert response.json()["field"] == "Authorization"
    assert response.headers["www-authenticate"] == "Bearer"


def test_api_with_the_bearer_token_is_served(auth_app: httpx.Client) -> None:
    response = auth_app.post("/sam/segment_image", json=BODY, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 404  # authorised; the image id is simply unknown
    assert response.json()["field"] == "image_id"


def test_health_probes_need_no_token(auth_app: httpx.Client) -> None:
    assert auth_app.get("/healthz").status_code == 200


# ---- id namespaces: no client writes under the service's own keys ---------------------------------------


def _png_payload(seed: int) -> tuple[dict[str, str], str]:
    """A random 64x48 PNG as an image payload, and its content id."""
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return image_payload(pixels), "sha256:" + hashlib.sha256(png_bytes(pixels)).hexdigest()


@pytest.fixture(scope="module")
def open_app(serve_app: ServeApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_app.url, timeout=120) as client:
        yield client


def test_an_image_sent_under_another_images_content_id_is_refused(open_app: httpx.Client) -> None:
    """The poisoning case: image X under sha256:<Y> would answer every later request for Y with X's masks."""
    image_x, _ = _png_payload(101)
    _, id_of_y = _png_payload(102)
    for route in ("/sam/embed_image", "/sam/segment_image"):
        response = open_app.post(route, json={"image": image_x, "image_id": id_of_y})
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "image_id"


def test_an_image_sent_under_its_own_content_id_is_served_under_it(open_app: httpx.Client) -> None:
    image, content_id = _png_payload(103)
    response = open_app.post("/sam/embed_image", json={"image": image, "image_id": content_id, "format": "metadata"})
    assert response.status_code == 200, response.text
    assert response.json()["image_id"] == content_id


def test_a_reserved_namespace_id_is_refused_on_every_route(open_app: httpx.Client) -> None:
    image, _ = _png_payload(104)
    for route in ("/sam/embed_image", "/sam/segment_image", "/sam/segment_everything"):
        response = open_app.post(route, json={"image": image, "image_id": "labelstudio:" + "0" * 64})
        assert response.status_code == 422, (route, response.text)
        assert response.json()["field"] == "image_id"


def test_a_client_embedding_under_a_content_id_is_refused(open_app: httpx.Client) -> None:
    body = {
        "image_id": "sha256:" + "ab" * 32,
        "embeddings": np.zeros((1, 256, 64, 64), dtype=np.float32).tolist(),
        "orig_im_size": [48, 64],
        "point_coords": [[3, 3]],
        "point_labels": [1],
    }
    response = open_app.post("/sam/segment_image", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "image_id"


# ---- auth on every scope ---------------------------------------------------------------------------------


def test_with_a_token_set_a_websocket_handshake_is_closed_before_accept() -> None:
    reached: list[str] = []

    async def app(scope: object, receive: object, send: object) -> None:
        reached.append("app")

    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    guard = BearerAuth(app)
    previous, BearerAuth.tokens = BearerAuth.tokens, {TOKEN.encode(): "default"}
    try:
        asyncio.run(guard({"type": "websocket", "path": "/sam/segment_image"}, receive, send))  # type: ignore[arg-type]
    finally:
        BearerAuth.tokens = previous
    assert reached == []
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "sam-serve takes no websocket"}]


# ---- the bytes sent win over the id -------------------------------------------------------------------------

CLICK = {"point_coords": [[20, 15]], "point_labels": [1], "format": "rle"}


def _masks(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["masks"]


def test_the_bytes_sent_win_over_an_id_that_holds_another_image(open_app: httpx.Client) -> None:
    """Finding 2: an id that holds image X, sent with image Y, answers from Y and is re-pointed to Y."""
    image_x, _ = _png_payload(111)
    image_y, _ = _png_payload(112)
    image_id = f"mine-{uuid.uuid4()}"
    expected_y = _masks(open_app.post("/sam/segment_image", json={"image": image_y, **CLICK}))
    assert _masks(open_app.post("/sam/segment_image", json={"image": image_x, **CLICK})) != expected_y
    embedded = open_app.post("/sam/embed_image", json={"image": image_x, "image_id": image_id, "format": "metadata"})
    assert embedded.status_code == 200, embedded.text

    answer = open_app.post("/sam/segment_image", json={"image": image_y, "image_id": image_id, **CLICK})
    assert _masks(answer) == expected_y
    assert answer.json()["image_id"] == image_id
    # Re-pointed: the id alone now answers from Y, and embedding Y under it again finds it cached.
    assert _masks(open_app.post("/sam/segment_image", json={"image_id": image_id, **CLICK})) == expected_y
    again = open_app.post("/sam/embed_image", json={"image": image_y, "image_id": image_id, "format": "metadata"})
    assert again.json()["cached"] is True
    # And the embed route re-points too: X sent under the id is embedded again, not answered from Y.
    back = open_app.post("/sam/embed_image", json={"image": image_x, "image_id": image_id, "format": "metadata"})
    assert back.json()["cached"] is False


# ---- tenants --------------------------------------------------------------------------------------------------


def _as(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TENANT_TOKENS[tenant]}"}


def test_each_tenants_image_ids_live_apart(auth_app: httpx.Client) -> None:
    """The same image_id in two tenants is two entries: another tenant's id is a 404, never its masks, and
    writing it never overwrites the first tenant's."""
    image_x, _ = _png_payload(121)
    image_y, _ = _png_payload(122)
    image_id = f"photo-{uuid.uuid4()}"
    alice = auth_app.post(
        "/sam/embed_image", json={"image": image_x, "image_id": image_id, "format": "metadata"}, headers=_as("alice")
    )
    assert alice.status_code == 200, alice.text

    unknown = auth_app.post("/sam/segment_image", json={"image_id": image_id, **CLICK}, headers=_as("bob"))
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["field"] == "image_id"
    # The one-token form is the default tenant: a third namespace.
    as_default = {"Authorization": f"Bearer {TOKEN}"}
    assert (
        auth_app.post("/sam/segment_image", json={"image_id": image_id, **CLICK}, headers=as_default).status_code == 404
    )

    bob = auth_app.post(
        "/sam/embed_image", json={"image": image_y, "image_id": image_id, "format": "metadata"}, headers=_as("bob")
    )
    assert bob.status_code == 200, bob.text
    assert bob.json()["cached"] is False

    expected_x = _masks(auth_app.post("/sam/segment_image", json={"image": image_x, **CLICK}, headers=_as("alice")))
    expected_y = _masks(auth_app.post("/sam/segment_image", json={"image": image_y, **CLICK}, headers=_as("bob")))
    assert expected_x != expected_y
    by_alice = auth_app.post("/sam/segment_image", json={"image_id": image_id, **CLICK}, headers=_as("alice"))
    by_bob = auth_app.post("/sam/segment_image", json={"image_id": image_id, **CLICK}, headers=_as("bob"))
    assert _masks(by_alice) == expected_x
    assert _masks(by_bob) == expected_y
    assert by_alice.json()["image_id"] == by_bob.json()["image_id"] == image_id


def test_low_res_logits_are_each_tenants_own_on_a_shared_content_entry(auth_app: httpx.Client) -> None:
    """Content-keyed embeddings are shared (same bytes, same embedding); the logits a follow-up click feeds
    back are not: bob's click with the cached mask finds none of alice's."""
    image, content_id = _png_payload(123)
    first = auth_app.post("/sam/segment_image", json={"image": image, **CLICK}, headers=_as("alice"))
    assert first.status_code == 200, first.text
    assert first.json()["image_id"] == content_id
    follow_up = {"image_id": content_id, **CLICK, "has_mask_input": True}

    by_bob = auth_app.post("/sam/segment_image", json=follow_up, headers=_as("bob"))
    assert by_bob.status_code == 422, by_bob.text
    assert by_bob.json()["field"] == "mask_input"
    by_alice = auth_app.post("/sam/segment_image", json=follow_up, headers=_as("alice"))
    assert by_alice.status_code == 200, by_alice.text
    # The embedding itself is shared: bob clicks on alice's content entry without sending the image.
    plain = auth_app.post("/sam/segment_image", json={"image_id": content_id, **CLICK}, headers=_as("bob"))
    assert _masks(plain) == _masks(first)


# ---- bounded work: slow image servers stall nobody else ----------------------------------------------------

URL_APP = "sam-urls"


@pytest.fixture(scope="module")
def url_app(serve_app: ServeApp) -> Iterator[tuple[httpx.Client, str]]:
    images = serve_app.settings.images.model_copy(
        update={"allow_url": True, "allow_private_urls": True, "url_timeout_s": 2.0}
    )
    settings = serve_app.settings.model_copy(update={"images": images})
    with (
        slow_http_server() as slow,
        second_app(URL_APP, settings),
        httpx.Client(base_url=f"{serve_app.url}/{URL_APP}", timeout=60) as client,
    ):
        yield client, slow


def test_trickling_urls_end_at_their_deadline_and_clicks_go_on_meanwhile(url_app: tuple[httpx.Client, str]) -> None:
    """Finding 4: four image URLs whose servers trickle headers or body each end in a 4xx at the one deadline
    (2 s here), side by side; a base64 click sent while they hang is answered at once."""
    client, slow = url_app
    image, _ = _png_payload(131)
    warm = client.post("/sam/segment_image", json={"image": image, **CLICK})
    assert warm.status_code == 200, warm.text

    def fetch(path: str) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = client.post("/sam/segment_image", json={"image": {"type": "url", "value": slow + path}, **CLICK})
        return response, time.monotonic() - started

    paths = ["/trickle-headers", "/trickle-body"] * 2
    with ThreadPoolExecutor(len(paths)) as pool:
        slow_requests = [pool.submit(fetch, path) for path in paths]
        time.sleep(0.5)
        started = time.monotonic()
        click = client.post("/sam/segment_image", json={"image": image, **CLICK})
        click_s = time.monotonic() - started
        outcomes = [future.result() for future in slow_requests]
    assert click.status_code == 200, click.text
    assert click_s < 1.0
    for response, elapsed in outcomes:
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["field"] == "image.value"
        assert "did not send the image within 2.0 s" in response.json()["reason"]
        assert elapsed < 4.0
