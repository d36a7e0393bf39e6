"""Optional bearer-token auth on the API routes; probes and docs stay open."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

from tests.conftest import ServeApp, second_app

pytestmark = pytest.mark.slow

APP = "sam-auth"
TOKEN = "correct horse battery staple"


@pytest.fixture(scope="module")
def auth_app(serve_app: ServeApp) -> Iterator[httpx.Client]:
    settings = serve_app.settings.model_copy(update={"auth_token": SecretStr(TOKEN)})
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
    import base64
    import hashlib
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    return {"type": "base64", "value": base64.b64encode(data).decode()}, "sha256:" + hashlib.sha256(data).hexdigest()


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
    import numpy as np

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
    import asyncio

    from deployments.limits import BearerAuth

    reached: list[str] = []

    async def app(scope: object, receive: object, send: object) -> None:
        reached.append("app")

    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    guard = BearerAuth(app)
    previous, BearerAuth.token = BearerAuth.token, TOKEN.encode()
    try:
        asyncio.run(guard({"type": "websocket", "path": "/sam/segment_image"}, receive, send))  # type: ignore[arg-type]
    finally:
        BearerAuth.token = previous
    assert reached == []
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "sam-serve takes no websocket"}]
