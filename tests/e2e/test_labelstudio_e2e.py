"""End to end with a real Label Studio (1.23, in .venv-labelstudio): a project whose config has BrushLabels and
KeyPointLabels, an uploaded image, sam-serve connected through Label Studio's own API as an interactive ML backend,
and interactive predictions asked through Label Studio's API. Label Studio calls /health and /setup, sends the
creator's token with /setup, and our backend fetches the upload from Label Studio with it."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from tests.conftest import ServeApp, free_port, photo_jpeg, rle_to_mask, second_app
from tests.labelstudio_support import BRUSH_CONFIG, LS_VENV, keypoint, rectangle, sdk_decode_brush

pytestmark = pytest.mark.slow

APP = "sam-labelstudio-e2e"
TOKEN = "fedcba9876543210fedcba9876543210fedcba98"
BACKEND_PASSWORD = "label studio reaches sam-serve with this"
SIZE = (480, 360)
PHOTO = photo_jpeg(np.random.default_rng(23), (SIZE[1], SIZE[0]))
START_TIMEOUT_S = 240


@dataclass
class LabelStudio:
    url: str
    api: httpx.Client


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    """A fresh Label Studio server on a free port, with a user whose legacy API token we know."""
    assert (LS_VENV / "bin" / "label-studio").exists(), "run scripts/bootstrap.sh: it makes .venv-labelstudio"
    port = free_port()
    url = f"http://localhost:{port}"
    data = tmp_path_factory.mktemp("label-studio")
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": "annotator@example.com",
        "LABEL_STUDIO_PASSWORD": "sam-serve-e2e",
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_HOST": url,  # the hostname Label Studio sends with /setup
    }
    log = (data / "label-studio.log").open("wb")
    command = [str(LS_VENV / "bin" / "label-studio"), "start", "--no-browser", "--port", str(port)]
    process = subprocess.Popen([*command, "--enable-legacy-api-token"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Token {TOKEN}"}) as api:
            while True:
                assert process.poll() is None, Path(log.name).read_text()[-3000:]
                try:
                    if api.get("/health/").status_code == 200 and api.get("/api/projects").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"Label Studio did not start in {START_TIMEOUT_S} s"
                time.sleep(1)
            yield LabelStudio(url=url, api=api)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@dataclass
class Project:
    id: int
    task: dict[str, object]
    ml_backend: int


@pytest.fixture(scope="module")
def project(serve_app: ServeApp, label_studio: LabelStudio) -> Iterator[Project]:
    """A project with one uploaded image and sam-serve as its interactive backend, connected as a user would."""
    # No labelstudio_token: the token comes from Label Studio's /setup (allowed here), for the configured host
    # only. Label Studio reaches the backend with a credential of its own (HTTP Basic, its ML settings).
    settings = serve_app.settings.model_copy(
        update={
            "labelstudio_url": label_studio.url,
            "labelstudio_accept_setup_token": True,
            "labelstudio_backend_password": SecretStr(BACKEND_PASSWORD),
        }
    )
    with second_app(APP, settings):
        api = label_studio.api
        created = api.post("/api/projects", json={"title": "sam-serve e2e", "label_config": BRUSH_CONFIG})
        assert created.status_code == 201, created.text
        project_id = created.json()["id"]
        imported = api.post(f"/api/projects/{project_id}/import", files={"file": ("photo.jpg", PHOTO, "image/jpeg")})
        assert imported.status_code == 201, imported.text
        [task] = api.get("/api/tasks", params={"project": project_id}).json()["tasks"]
        backend = {
            "url": f"{serve_app.url}/{APP}/labelstudio",
            "project": project_id,
            "is_interactive": True,
            "title": "sam-serve",
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "label-studio",
            "basic_auth_pass": BACKEND_PASSWORD,
        }
        connected = api.post("/api/ml", json=backend)
        assert connected.status_code == 201, connected.text
        yield Project(id=project_id, task=task, ml_backend=connected.json()["id"])


def ask(label_studio: LabelStudio, project: Project, context: list[dict[str, object]]) -> dict[str, object]:
    """Label Studio's own interactive-annotating call, as its editor makes it on a smart keypoint or rectangle."""
    response = label_studio.api.post(
        f"/api/ml/{project.ml_backend}/interactive-annotating",
        json={"task": project.task["id"], "context": {"result": context}},
    )
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer


def our_mask(serve_app: ServeApp, prompt: dict[str, object]) -> np.ndarray:
    body = {"image": {"type": "base64", "value": base64.b64encode(PHOTO).decode()}, "format": "rle", **prompt}
    response = httpx.post(f"{serve_app.url}/sam/segment_image", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return rle_to_mask(response.json()["masks"][0])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


def test_label_studio_connects_and_names_the_model_version(
    serve_app: ServeApp, label_studio: LabelStudio, project: Project
) -> None:
    backend = label_studio.api.get(f"/api/ml/{project.ml_backend}").json()
    assert backend["state"] == "CO", backend  # connected: /health and /setup answered, with its own credential
    # Without that credential the backend's routes are closed.
    assert httpx.post(f"{serve_app.url}/{APP}/labelstudio/setup", json={}, timeout=30).status_code == 401
    assert str(backend["model_version"]).startswith("sam-serve-")
    assert str(project.task["data"]["image"]).startswith("/data/upload/")  # type: ignore[index]


def test_an_interactive_click_through_label_studio_is_our_mask(
    serve_app: ServeApp, label_studio: LabelStudio, project: Project
) -> None:
    answer = ask(label_studio, project, [keypoint(45, 50, SIZE)])
    assert "errors" not in answer, answer
    data = answer["data"]
    assert isinstance(data, dict)
    [region] = data["result"]
    assert region["type"] == "brushlabels"
    assert region["value"]["brushlabels"] == ["Object"]
    drawn = sdk_decode_brush(region["value"]["rle"], (SIZE[1], SIZE[0]))
    assert drawn.any()
    assert iou(drawn, our_mask(serve_app, {"point_coords": [[216.0, 180.0]], "point_labels": [1]})) >= 0.99


def test_a_box_and_a_negative_click_through_label_studio(
    serve_app: ServeApp, label_studio: LabelStudio, project: Project
) -> None:
    context = [rectangle(20, 20, 50, 50, SIZE), keypoint(25, 25, SIZE, label="Negative", positive=False)]
    answer = ask(label_studio, project, context)
    assert "errors" not in answer, answer
    [region] = answer["data"]["result"]  # type: ignore[index]
    drawn = sdk_decode_brush(region["value"]["rle"], (SIZE[1], SIZE[0]))
    prompt = {"box": [96.0, 72.0, 336.0, 252.0], "point_coords": [[120.0, 90.0]], "point_labels": [0]}
    assert iou(drawn, our_mask(serve_app, prompt)) >= 0.99


def test_a_bad_context_is_shown_as_an_error_not_a_crash(label_studio: LabelStudio, project: Project) -> None:
    answer = ask(label_studio, project, [{**keypoint(10, 10, SIZE), "type": "ellipselabels"}])
    # Label Studio passes on only the status of a backend's 4xx; the editor shows it.
    assert answer.get("errors"), answer
    assert "422" in str(answer["errors"][0])  # type: ignore[index]
