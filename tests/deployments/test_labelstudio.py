"""Label Studio's ML backend protocol under /labelstudio, over HTTP on a real app (tiny model, real Redis), with
requests shaped as Label Studio sends them and task images on a host that checks tokens as Label Studio's does.
Masks are read back with label-studio-sdk's own brush decoder and held to /sam/segment_image's for the same
prompt."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from deployments.labelstudio_host import LabelStudioHost
from sam_core.errors import URLFetchError, URLInputRefused
from sam_core.model.build import make_random_checkpoint
from sam_core.settings import ModelSpec
from tests.conftest import ServeApp, photo_jpeg, rle_to_mask, second_app
from tests.labelstudio_support import (
    BRUSH_CONFIG,
    POLYGON_CONFIG,
    FileHost,
    keypoint,
    predict_body,
    rectangle,
    sdk_decode_brush,
)

pytestmark = pytest.mark.slow

APP = "sam-labelstudio"
API_TOKEN = "sam-serve api token"
LS_PASSWORD = "label studio's own credential"
LEGACY = "0123456789abcdef0123456789abcdef01234567"
PERSONAL = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.cGF0"
SIZE = (400, 300)  # width, height, as Label Studio names them
PHOTO = photo_jpeg(np.random.default_rng(17), (SIZE[1], SIZE[0]))
PATH = "/data/upload/3/5f2c-photo.jpg"


def basic(password: str, user: str = "labelstudio") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def host() -> Iterator[FileHost]:
    files = FileHost(LEGACY, PERSONAL)
    files.files[PATH] = PHOTO
    files.files["/data/upload/3/other.jpg"] = photo_jpeg(np.random.default_rng(18), (240, 320))
    with files.running():
        yield files


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = make_random_checkpoint("vit_tiny", tmp_path_factory.mktemp("other") / "tiny_seed7.pth", seed=7)
    return path


@pytest.fixture(scope="module")
def client(serve_app: ServeApp, host: FileHost, other_checkpoint: Path) -> Iterator[httpx.Client]:
    """The app with a Label Studio host and its legacy token configured, an API token, and Label Studio's own
    credential: Label Studio authenticates with HTTP Basic (that credential as the password). It serves a
    second model, `other`, for projects whose backend URL names it (/labelstudio/models/other)."""
    models = (
        ModelSpec(id="vit_tiny", model_type="vit_tiny", checkpoint=str(serve_app.checkpoint)),
        ModelSpec(id="other", model_type="vit_tiny", checkpoint=str(other_checkpoint)),
    )
    settings = serve_app.settings.model_copy(
        update={
            "labelstudio_url": host.url,
            "labelstudio_token": SecretStr(LEGACY),
            "auth_token": SecretStr(API_TOKEN),
            "labelstudio_backend_password": SecretStr(LS_PASSWORD),
            "models": models,
        }
    )
    with (
        second_app(APP, settings),
        httpx.Client(base_url=f"{serve_app.url}/{APP}", timeout=120, headers=basic(LS_PASSWORD)) as http,
    ):
        yield http


def segment_mask(client: httpx.Client, prompt: dict[str, Any], model: str | None = None) -> np.ndarray:
    """The same prompt through our own API (on the image's bytes), as a mask."""
    body = {"image": {"type": "base64", "value": base64.b64encode(PHOTO).decode()}, "format": "rle", **prompt}
    if model:
        body["model"] = model
    response = client.post("/sam/segment_image", json=body, headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert response.status_code == 200, response.text
    return rle_to_mask(response.json()["masks"][0])


def predict(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return client.post("/labelstudio/predict", json=body)


def only_region(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 1
    assert results[0]["model_version"].startswith("sam-serve-")
    [region] = results[0]["result"]
    assert region["score"] == pytest.approx(results[0]["score"])
    return region


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.mark.parametrize("path", ["/labelstudio/health", "/labelstudio/"])
def test_health_answers_as_label_studios_backends_do(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {"status": "UP", "model_class": "SamServe"}


def test_setup_names_the_model_version(client: httpx.Client) -> None:
    body = {"project": "3.1764755364", "schema": BRUSH_CONFIG, "hostname": "http://localhost:8080"}
    response = client.post("/labelstudio/setup", json={**body, "access_token": "x", "extra_params": None})
    assert response.status_code == 200
    version = response.json()["model_version"]
    assert version.startswith("sam-serve-")
    assert client.get("/labelstudio/versions").json()["versions"] == [version]


def test_a_backend_that_does_not_train_says_so(client: httpx.Client) -> None:
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 3}, "annotation": {"id": 1}}
    assert client.post("/labelstudio/webhook", json=event).json() == {"status": "Unknown event"}
    assert client.post("/labelstudio/train", json={"annotations": []}).json()["job"] is None
    assert client.get("/labelstudio/is_training").json() == {"is_training": False}
    assert client.get("/labelstudio/metrics").json() == {}


def test_without_a_context_there_is_no_prediction(client: httpx.Client, host: FileHost) -> None:
    before = host.requests[PATH]
    response = predict(client, predict_body(PATH, None))
    assert response.status_code == 200
    assert response.json() == {"results": []}
    assert host.requests[PATH] == before  # nothing fetched, nothing embedded


def test_a_click_is_a_brush_region_equal_to_our_own_mask(client: httpx.Client, host: FileHost) -> None:
    region = only_region(predict(client, predict_body(PATH, [keypoint(40, 55, SIZE)])))
    assert region["type"] == "brushlabels"
    assert (region["from_name"], region["to_name"]) == ("tag", "image")
    assert region["value"]["brushlabels"] == ["Object"]
    assert (region["original_width"], region["original_height"]) == SIZE
    assert region["value"]["format"] == "rle"
    drawn = sdk_decode_brush(region["value"]["rle"], (SIZE[1], SIZE[0]))
    ours = segment_mask(client, {"point_coords": [[160.0, 165.0]], "point_labels": [1]})
    assert drawn.any()
    assert iou(drawn, ours) >= 0.99
    assert f"Token {LEGACY}" in host.auth_seen


def test_every_click_after_the_first_is_one_decoder_call(client: httpx.Client, host: FileHost) -> None:
    path = "/data/upload/3/other.jpg"
    size = (320, 240)
    clicks = [keypoint(30 + 5 * i, 40, size) for i in range(4)]
    for count in range(1, len(clicks) + 1):
        # Several clicks on one object refine it: the context holds them all.
        only_region(predict(client, predict_body(path, clicks[:count])))
    assert host.requests[path] == 1


def test_negative_clicks_and_a_box_refine_one_prompt(client: httpx.Client) -> None:
    context = [
        rectangle(10, 20, 50, 40, SIZE),
        keypoint(35, 40, SIZE),
        keypoint(12, 22, SIZE, label="Negative", positive=None),
    ]
    region = only_region(predict(client, predict_body(PATH, context)))
    drawn = sdk_decode_brush(region["value"]["rle"], (SIZE[1], SIZE[0]))
    prompt = {"box": [40.0, 60.0, 240.0, 180.0], "point_coords": [[140.0, 120.0], [48.0, 66.0]], "point_labels": [1, 0]}
    ours = segment_mask(client, prompt)
    assert iou(drawn, ours) >= 0.99


@pytest.mark.parametrize(
    ("x", "y", "pixels"),
    [(0, 0, [0.0, 0.0]), (100, 100, [400.0, 300.0]), (100, 0, [400.0, 0.0])],
    ids=["top-left", "bottom-right", "top-right"],
)
def test_percent_at_the_image_edges(client: httpx.Client, x: float, y: float, pixels: list[float]) -> None:
    region = only_region(predict(client, predict_body(PATH, [keypoint(x, y, SIZE)])))
    drawn = sdk_decode_brush(region["value"]["rle"], (SIZE[1], SIZE[0]))
    assert iou(drawn, segment_mask(client, {"point_coords": [pixels], "point_labels": [1]})) >= 0.99


def test_a_box_over_the_whole_image(client: httpx.Client) -> None:
    region = only_region(predict(client, predict_body(PATH, [rectangle(0, 0, 100, 100, SIZE)])))
    drawn = sdk_decode_brush(region["value"]["rle"], (SIZE[1], SIZE[0]))
    assert iou(drawn, segment_mask(client, {"box": [0.0, 0.0, 400.0, 300.0]})) >= 0.99


def test_a_polygon_config_gets_a_polygon(client: httpx.Client) -> None:
    context = [{**keypoint(50, 50, SIZE, label="Cell"), "to_name": "picture"}]
    region = only_region(predict(client, predict_body(PATH, context, POLYGON_CONFIG, key="img")))
    assert region["type"] == "polygonlabels"
    assert (region["from_name"], region["to_name"]) == ("outline", "picture")
    assert region["value"]["polygonlabels"] == ["Cell"]
    points = np.asarray(region["value"]["points"])
    assert points.shape[1:] == (2,)
    assert len(points) >= 3
    assert ((points >= 0) & (points <= 100)).all()


def test_a_full_url_on_the_label_studio_host_is_fetched_with_the_token(client: httpx.Client, host: FileHost) -> None:
    region = only_region(predict(client, predict_body(host.url + PATH, [keypoint(60, 30, SIZE)])))
    assert region["value"]["rle"]


BAD_CONTEXTS = [
    ([{**keypoint(10, 10, SIZE), "type": "ellipselabels"}], "params.context.result.0.type"),
    ([{**keypoint(10, 10, SIZE), "value": {"x": 140, "y": 10}}], "params.context.result.0.value.x"),
    ([{"value": {"x": 1, "y": 1}, "type": "keypointlabels"}], "params.context.result.0.original_width"),
    ([keypoint(10, 10, SIZE), keypoint(10, 10, (10, 10))], "params.context.result.1"),
]


@pytest.mark.parametrize(("context", "field"), BAD_CONTEXTS, ids=["unknown-tag", "over-100", "no-size", "two-images"])
def test_a_bad_context_is_a_422_naming_the_item(client: httpx.Client, context: list[Any], field: str) -> None:
    response = predict(client, predict_body(PATH, context))
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


@pytest.mark.parametrize(
    ("url", "status", "field"),
    [
        ("", 422, "tasks.0.data.image"),
        ("/data/upload/3/missing.jpg", 400, "tasks.0.data"),
        ("s3://bucket/photo.jpg", 422, "tasks.0.data"),
        ("ftp://example.com/photo.jpg", 422, "tasks.0.data"),
        ("http://10.1.2.3/photo.jpg", 403, "image"),
        ("http://169.254.169.254/latest/meta-data/", 403, "image"),
    ],
    ids=["no-image", "not-on-host", "cloud-uri", "other-scheme", "private-address", "metadata-address"],
)
def test_an_image_that_cannot_be_had_is_a_4xx(client: httpx.Client, url: str, status: int, field: str) -> None:
    response = predict(client, predict_body(url, [keypoint(10, 10, SIZE)]))
    assert response.status_code == status, response.text
    assert response.json()["field"].startswith(field)


def test_a_config_without_brush_or_polygon_is_a_422(client: httpx.Client) -> None:
    config = '<View><Image name="image" value="$image"/><Choices name="c" toName="image"/></View>'
    response = predict(client, predict_body(PATH, [keypoint(10, 10, SIZE)], config))
    assert response.status_code == 422
    assert response.json()["field"] == "label_config"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("wrong"),
        {"Authorization": "Basic !!notbase64"},
        basic(API_TOKEN),
        {"Authorization": f"Bearer {API_TOKEN}"},
    ],
    ids=["none", "wrong-password", "garbled", "a-tenant-token-as-basic", "a-tenant-token-as-bearer"],
)
def test_label_studio_needs_its_own_credential_as_its_basic_password(
    client: httpx.Client, headers: dict[str, str]
) -> None:
    """With labelstudio_backend_password set, /labelstudio takes only it: a tenant's token opens nothing there
    (a tenant cannot make the backend fetch Label Studio's images with Label Studio's token)."""
    request = client.build_request("POST", "/labelstudio/predict", json=predict_body(PATH, None))
    del request.headers["Authorization"]  # the client's own Basic header
    request.headers.update(headers)
    response = client.send(request)
    assert response.status_code == 401
    assert response.json()["field"] == "Authorization"


def test_label_studios_credential_opens_only_the_label_studio_routes(client: httpx.Client) -> None:
    body = {"image_id": "x", "point_coords": [[1, 1]], "point_labels": [1]}
    assert client.post("/sam/segment_image", json=body).status_code == 401  # the client sends Basic
    bearer = {"Authorization": f"Bearer {LS_PASSWORD}"}
    assert client.post("/sam/segment_image", json=body, headers=bearer).status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/api/current-user/whoami",
        "/data/../api/projects",
        "/data/upload/%2e%2e/%2e%2e/api/projects",
        "/data/upload/..%2f..%2fapi%2fprojects",
        "/data/upload\\..\\api",
        "FULL/api/projects/",
    ],
    ids=["api", "dot-segments", "encoded-dots", "encoded-slashes", "backslashes", "full-url"],
)
def test_a_path_outside_label_studios_data_is_refused_without_sending_the_token(
    client: httpx.Client, host: FileHost, path: str
) -> None:
    """The backend fetches with Label Studio's token only under its data paths (uploads, local files, storage
    proxies): a task naming any other path of the Label Studio host is a 422, and no request reaches it."""
    url = path.replace("FULL", host.url)
    seen = len(host.auth_seen)
    response = predict(client, predict_body(url, [keypoint(10, 10, SIZE)]))
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "tasks.0.data"
    assert "data paths" in response.json()["reason"]
    assert len(host.auth_seen) == seen


# ---- The token logic, without a server ------------------------------------------------------------------------


def backend(host: FileHost, token: str | None = None, *, accept_setup_token: bool = False) -> LabelStudioHost:
    from sam_core.settings import Settings

    settings = Settings(
        labelstudio_url=host.url + "/",
        labelstudio_token=SecretStr(token) if token else None,
        labelstudio_accept_setup_token=accept_setup_token,
        redis_url=None,
    )
    return LabelStudioHost(settings)


def test_setup_installs_no_token_unless_the_operator_allows_it(host: FileHost) -> None:
    ls = backend(host)
    ls.remember_setup(host.url + "/", LEGACY)
    assert ls.setup_token is None
    with pytest.raises(URLInputRefused, match="labelstudio_accept_setup_token"):
        asyncio.run(ls.image(host.url + PATH))


def test_setup_token_counts_only_for_the_configured_host(host: FileHost) -> None:
    ls = backend(host, accept_setup_token=True)
    assert ls.host == host.url  # the trailing slash goes
    ls.remember_setup("http://evil.example:8080", "stolen")
    assert ls.setup_token is None
    ls.remember_setup(host.url + "/", LEGACY)
    assert ls.setup_token == LEGACY
    image = asyncio.run(ls.image(host.url + PATH))
    assert base64.b64decode(image["value"]) == PHOTO


def test_a_personal_access_token_is_exchanged_once_for_an_access_token(host: FileHost) -> None:
    ls = backend(host, PERSONAL)
    before = host.requests["/api/token/refresh/"]

    async def twice() -> list[dict[str, str]]:
        return [await ls.image(host.url + PATH), await ls.image(host.url + PATH)]

    images = asyncio.run(twice())
    assert all(base64.b64decode(image["value"]) == PHOTO for image in images)
    assert host.requests["/api/token/refresh/"] == before + 1
    assert host.auth_seen[-1].startswith("Bearer eyJ")


def test_a_refused_token_says_so(host: FileHost) -> None:
    with pytest.raises(URLInputRefused, match="refused the token"):
        asyncio.run(backend(host, "not-the-token").image(host.url + PATH))
    with pytest.raises(URLInputRefused, match="personal access token"):
        asyncio.run(backend(host, PERSONAL.replace("cGF0", "YmFk")).image(host.url + PATH))


def test_urls_elsewhere_are_left_to_the_url_fetch_rules(host: FileHost) -> None:
    image = asyncio.run(backend(host, LEGACY).image("http://127.0.0.1:9/photo.jpg"))
    assert image == {"type": "url", "value": "http://127.0.0.1:9/photo.jpg"}


def test_a_backend_url_naming_a_served_model_annotates_with_it(client: httpx.Client) -> None:
    """A project connected at /labelstudio/models/other gets that model's masks and model version; /labelstudio
    stays the default's; an unknown model in the URL is a 404 naming `model`."""
    setup = {"project": "4.1", "schema": BRUSH_CONFIG, "hostname": "http://localhost:8080"}
    default_version = client.post("/labelstudio/setup", json=setup).json()["model_version"]
    other = client.post("/labelstudio/models/other/setup", json=setup)
    assert other.status_code == 200, other.text
    assert other.json()["model_version"].startswith("sam-serve-vit_tiny-")
    assert other.json()["model_version"] != default_version
    assert client.get("/labelstudio/models/other/health").json()["status"] == "UP"
    response = client.post("/labelstudio/models/other/predict", json=predict_body(PATH, [keypoint(40, 55, SIZE)]))
    region = only_region(response)
    assert response.json()["results"][0]["model_version"] == other.json()["model_version"]
    drawn = sdk_decode_brush(region["value"]["rle"], (SIZE[1], SIZE[0]))
    click = {"point_coords": [[160.0, 165.0]], "point_labels": [1]}
    assert iou(drawn, segment_mask(client, click, model="other")) >= 0.99
    for path in ("/labelstudio/models/nope/predict", "/labelstudio/models/nope/setup"):
        answer = client.post(path, json=predict_body(PATH, [keypoint(40, 55, SIZE)]) if "predict" in path else setup)
        assert answer.status_code == 404, answer.text
        assert answer.json()["field"] == "model"


def test_label_studios_credential_guards_its_routes_even_with_no_tenant_tokens() -> None:
    """With only labelstudio_backend_password set (an open API), /labelstudio still takes only that credential,
    as Basic password or bearer, and the open routes stay open."""
    from starlette.types import Receive, Scope, Send

    from deployments.limits import BearerAuth

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope.get("state", {}).get("tenant", "-").encode()})

    previous = BearerAuth.tokens, BearerAuth.labelstudio_password
    BearerAuth.tokens, BearerAuth.labelstudio_password = {}, LS_PASSWORD.encode()

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=BearerAuth(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://sam") as http:
            return [
                await http.post("/labelstudio/predict"),
                await http.post("/labelstudio/predict", headers=basic("wrong")),
                await http.post("/labelstudio/predict", headers=basic(LS_PASSWORD)),
                await http.post("/labelstudio/predict", headers={"Authorization": f"Bearer {LS_PASSWORD}"}),
                await http.post("/sam/segment_image"),
            ]

    try:
        missing, wrong, as_basic, as_bearer, open_api = asyncio.run(scenario())
    finally:
        BearerAuth.tokens, BearerAuth.labelstudio_password = previous
    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert "labelstudio_backend_password" in wrong.json()["reason"]
    assert (as_basic.status_code, as_basic.text) == (200, "labelstudio")
    assert (as_bearer.status_code, as_bearer.text) == (200, "labelstudio")
    assert open_api.status_code == 200


def test_a_label_studio_host_that_trickles_is_cut_off_at_the_one_deadline() -> None:
    """The backend's own fetch from the Label Studio host has the one deadline of every image URL: a host that
    sends its headers a byte a second is a URLFetchError after url_timeout_s, not a request held for minutes."""
    from sam_core.settings import Settings
    from tests.slow_http import slow_http_server

    with slow_http_server() as slow:
        settings = Settings(labelstudio_url=slow, images={"url_timeout_s": 1.0}, redis_url=None)
        ls = LabelStudioHost(settings)
        started = time.monotonic()
        with pytest.raises(URLFetchError, match=r"did not send the image within 1\.0 s"):
            asyncio.run(ls.image(slow + "/trickle-headers"))
        assert time.monotonic() - started < 2.5
