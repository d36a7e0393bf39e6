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
