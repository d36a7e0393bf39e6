"""Label Studio's ML backend protocol under `/labelstudio` (the URL a project's Model settings take): interactive
SAM on the task's image, answered from the shared cache like any other click.

Label Studio calls `GET /health`, `POST /setup` when a backend is connected, `POST /predict` with the annotator's
keypoints and rectangles (`params.context`), and `POST /webhook` with every project event. The task's image is
fetched from the Label Studio host the operator configured (`labelstudio_url`), with its token; any other URL
goes through the URL-fetch rules of every image. Its embedding is cached under the image's URL, so every click
after the first on an image costs one decoder call, whichever replica and whichever annotator.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import unquote, urljoin, urlsplit

import httpx
import numpy as np
import pycocotools.mask as coco_mask
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from deployments.http_errors import ERROR_RESPONSES
from deployments.off_loop import OffLoopJSONRoute
from sam_core.errors import CacheMiss, InvalidInput, URLFetchError, URLInputRefused, describe
from sam_core.settings import Settings
from sam_core.wire.image_checks import check_byte_count
from sam_core.wire.labelstudio import InteractivePrompt, LabelConfig, context_prompt, parse_label_config, region
from sam_core.wire.schemas import SegmentImageRequest, SegmentResult

SegmentCall = Callable[[SegmentImageRequest], Awaitable[SegmentResult]]
"""How the backend has a prompt answered: the ingress's `segment` (cache, encoder on a miss, decoder)."""


class ModelNames(Protocol):
    """What the backend needs to know of the served models (the ingress's `ModelRouting`)."""

    def named(self, model: str | None) -> str: ...

    async def model_id(self, model: str) -> str: ...


PREFIX = "/labelstudio"
MODEL_CLASS = "SamServe"
CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://")
DATA_PATHS = re.compile(
    r"^/(data/upload/|data/local-files/|storage-data/uploaded/|(tasks|projects)/\d+/(resolve|presign)/)"
)
"""The Label Studio paths that serve task data (uploads, local files, storage proxies): the only ones fetched
with its token, so a task cannot make the backend read Label Studio's API with it."""

router = APIRouter(
    prefix=PREFIX, tags=["Label Studio ML backend"], responses=ERROR_RESPONSES, route_class=OffLoopJSONRoute
)


class SetupRequest(BaseModel):
    """What Label Studio sends when a backend is connected (and before predictions)."""

    model_config = ConfigDict(extra="allow")

    project: str | int | None = None
    label_config: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    access_token: str | None = None


class PredictRequest(BaseModel):
    """Label Studio's prediction request: the task(s), the project's config and, when interactive, the context."""

    model_config = ConfigDict(extra="allow")

    tasks: list[dict[str, Any]] = Field(default_factory=list)
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class LabelStudioBackend:
    """One ingress replica's side of the protocol: the model version, the image fetches and the tokens."""

    def __init__(self, segment: SegmentCall, models: ModelNames, settings: Settings) -> None:
        self.segment_call = segment
        self.models = models
        self.settings = settings
        self.host = settings.labelstudio_url
        self.token = settings.labelstudio_token.get_secret_value() if settings.labelstudio_token else None
        self.setup_token: str | None = None
        self._access: tuple[str, float] | None = None
        self._refresh_lock = asyncio.Lock()

    async def model_version(self, model: str) -> str:
        return f"sam-serve-{await self.models.model_id(model)}"

    def remember_setup(self, setup: SetupRequest) -> None:
        """The token `/setup` sends is used only when the operator allowed it, and only for the configured host
        (a request can never add one)."""
        if not self.settings.labelstudio_accept_setup_token:
            return
        if setup.access_token and setup.hostname and self.host and _origin(setup.hostname) == _origin(self.host):
            self.setup_token = setup.access_token

    async def predict(self, body: PredictRequest, model: str) -> dict[str, Any]:
        params = body.params or {}
        prompt = context_prompt(params.get("context"))
        if prompt is None:
            return {"results": []}  # plain pre-annotation: SAM needs a click or a box
        config = parse_label_config(body.label_config)
        if not body.tasks:
            raise InvalidInput("one task is needed", field="tasks")
        url = _image_url(body.tasks[0], config)
        answer = await self._segment(prompt, url, model)
        score = float(answer["scores"][0])
        # Decoding the mask and packing it as brush RLE or a polygon is O(pixels): off the event loop.
        result = await asyncio.to_thread(_region, answer["masks"][0], score, config, prompt.label)
        version = await self.model_version(model)
        return {"results": [{"result": [result], "score": score, "model_version": version}]}

    async def _segment(self, prompt: InteractivePrompt, url: str, model: str) -> dict[str, Any]:
        """The prompt's mask (rle) from the cached embedding of the image at `url`, fetching it only on a miss."""
        resolved = self._resolve(url)
        fields: dict[str, Any] = {
            "image_id": "labelstudio:" + hashlib.sha256(resolved.encode()).hexdigest(),
            "point_coords": prompt.point_coords,
            "point_labels": prompt.point_labels,
            "box": prompt.box,
            "format": "rle",
            "model": model,
        }
        try:
            result = await self.segment_call(SegmentImageRequest(**fields))
        except CacheMiss:
            result = await self.segment_call(SegmentImageRequest(**fields, image=await self._image(resolved)))
        assert isinstance(result.body, dict), "rle answers are json"
        return result.body

    def _resolve(self, url: str) -> str:
        if url.startswith(CLOUD_SCHEMES):
            raise InvalidInput(
                f"a cloud storage URI ({url.split('://')[0]}://): turn on presigned URLs in the project's storage, "
                "so tasks hold http(s) URLs",
                field="tasks.0.data",
            )
        if url.startswith("/") and not url.startswith("//"):
            if not self.host:
                raise InvalidInput(
                    "a Label Studio file path: set labelstudio_url (SAM_LABELSTUDIO_URL) to the Label Studio server",
                    field="tasks.0.data",
                )
            url = urljoin(self.host + "/", url)
        elif not url.startswith(("http://", "https://")):
            raise InvalidInput(
                f"an http(s) image URL or a Label Studio path is needed, got {url[:80]!r}", field="tasks.0.data"
            )
        if self.host and _origin(url) == _origin(self.host):
            _check_data_path(url)
        return url

    async def _image(self, url: str) -> dict[str, str]:
        """The image payload for `url`: fetched here from the Label Studio host (with its token), else left to the
        ingress's URL fetch and its safety rules."""
        if not (self.host and _origin(url) == _origin(self.host)):
            return {"type": "url", "value": url}
        timeout_s = self.settings.images.url_timeout_s
        try:
            # One deadline over the token exchange and the whole download, as for any image URL.
            return await asyncio.wait_for(self._fetch_from_host(url), timeout_s)
        except asyncio.TimeoutError:
            reason = f"Label Studio at {self.host} did not send the image within {timeout_s} s"
            raise URLFetchError(reason, field="tasks.0.data") from None

    async def _fetch_from_host(self, url: str) -> dict[str, str]:
        headers = await self._auth_headers()
        try:
            async with (
                httpx.AsyncClient(timeout=self.settings.images.url_timeout_s, trust_env=False) as client,
                client.stream("GET", url, headers=headers) as response,
            ):
                location = response.headers.get("location")
                if response.is_redirect and location:
                    # A storage proxy's presigned URL: fetched elsewhere, without the token, by the URL rules.
                    target = urljoin(url, location)
                    if _origin(target) != _origin(url):
                        return {"type": "url", "value": target}
                if response.status_code in (401, 403):
                    raise URLInputRefused(
                        f"Label Studio refused the token ({response.status_code}): set labelstudio_token"
                        + ("" if headers else " (or labelstudio_accept_setup_token, to use the one /setup sends)"),
                        field="tasks.0.data",
                    )
                if response.status_code != 200:
                    raise URLFetchError(f"Label Studio answered {response.status_code} for {url}", field="tasks.0.data")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    check_byte_count(len(data), self.settings.images, "tasks.0.data")  # 413, as for any image
        except httpx.HTTPError as exc:
            reason = f"Label Studio at {self.host} did not answer: {describe(exc)}"
            raise URLFetchError(reason, field="tasks.0.data") from None
        return {"type": "base64", "value": base64.b64encode(bytes(data)).decode("ascii")}

    async def _auth_headers(self) -> dict[str, str]:
        token = self.token or self.setup_token
        if not token:
            return {}
        if not _is_jwt(token):
            return {"Authorization": f"Token {token}"}
        # A personal access token is a refresh token: Label Studio takes only the access tokens it gives for it.
        async with self._refresh_lock:
            if self._access is None or self._access[1] < time.time() + 30:
                try:
                    async with httpx.AsyncClient(timeout=self.settings.images.url_timeout_s, trust_env=False) as client:
                        response = await client.post(f"{self.host}/api/token/refresh/", json={"refresh": token})
                except httpx.HTTPError as exc:
                    raise URLFetchError(f"Label Studio did not answer: {describe(exc)}", field="tasks.0.data") from None
                if response.status_code != 200:
                    raise URLInputRefused(
                        f"Label Studio refused the personal access token ({response.status_code})", field="tasks.0.data"
                    )
                access = str(response.json()["access"])
                self._access = (access, _jwt_expiry(access))
            return {"Authorization": f"Bearer {self._access[0]}"}


def _check_data_path(url: str) -> None:
    """A URL on the Label Studio host must name one of its data paths, with no dot segments or encoded slashes
    that a server could resolve to another path."""
    raw = urlsplit(url).path
    path = unquote(raw)
    segments = path.split("/")
    if "\\" in path or ".." in segments or "." in segments or "%2f" in raw.lower() or not DATA_PATHS.match(path):
        raise InvalidInput(
            f"{path[:80]!r} is not under Label Studio's data paths (/data/upload/, /data/local-files/, "
            "/storage-data/uploaded/, /tasks/<id>/resolve/): only those are fetched with its token",
            field="tasks.0.data",
        )


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _image_url(task: dict[str, Any], config: LabelConfig) -> str:
    data = task.get("data")
    url = data.get(config.image_value) if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        raise InvalidInput(
            f"the task has no image URL under data.{config.image_value}", field=f"tasks.0.data.{config.image_value}"
        )
    return url


def _region(rle: dict[str, Any], score: float, config: LabelConfig, label: str | None) -> dict[str, Any]:
    mask = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    return region(np.asarray(mask, dtype=bool), score, config, label)


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def _jwt_expiry(token: str) -> float:
    """A JWT's `exp` (its signature is Label Studio's business; we only need to know when to refresh)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, ValueError, TypeError, binascii.Error):
        return time.time() + 60


def _backend(request: Request) -> LabelStudioBackend:
    backend: LabelStudioBackend = request.app.state.labelstudio
    return backend


def _model(request: Request) -> str:
    """The served model the backend URL names (`/labelstudio/models/{model}`), else the default; 404 if unknown."""
    return _backend(request).models.named(request.path_params.get("model"))


@router.get("/", include_in_schema=False)
@router.get("/health")
async def health() -> dict[str, str]:
    """Label Studio's health check (it allows one second: nothing is loaded here)."""
    return {"status": "UP", "model_class": MODEL_CLASS}


@router.post("/setup")
async def setup(request: Request, body: SetupRequest) -> dict[str, str]:
    backend = _backend(request)
    model = _model(request)
    backend.remember_setup(body)
    return {"model_version": await backend.model_version(model)}


@router.post("/predict")
async def predict(request: Request, body: PredictRequest) -> dict[str, Any]:
    """Interactive SAM: the context's keypoints (positive by `is_positive`) and rectangle on the task's image, answered
    as the config's BrushLabels (Label Studio's RLE) or PolygonLabels; no context: no prediction."""
    return await _backend(request).predict(body, _model(request))


@router.post("/webhook")
async def webhook() -> dict[str, str]:
    """Every project event: sam-serve serves fixed checkpoints and does not train, so each is acknowledged."""
    return {"status": "Unknown event"}


@router.post("/train")
async def train() -> dict[str, Any]:
    """The older protocol's training call: nothing to train."""
    return {"status": "ok", "job": None, "detail": "sam-serve does not train: it serves fixed SAM checkpoints"}


@router.get("/is_training")
async def is_training() -> dict[str, bool]:
    return {"is_training": False}


@router.get("/versions")
async def versions(request: Request) -> dict[str, Any]:
    version = await _backend(request).model_version(_model(request))
    return {"versions": [version], "model_version": version}


@router.get("/metrics")
async def metrics() -> dict[str, Any]:
    return {}


MODEL_PREFIX = PREFIX + "/models/{model}"
"""Every route again under `/labelstudio/models/<id>`: the backend URL of a project that annotates with that served
model (`/labelstudio` itself serves the default)."""

model_router = APIRouter(prefix=MODEL_PREFIX, responses=ERROR_RESPONSES, route_class=OffLoopJSONRoute)
for _route in list(router.routes):
    model_router.add_api_route(
        _route.path.removeprefix(PREFIX) or "/",  # type: ignore[attr-defined]
        _route.endpoint,  # type: ignore[attr-defined]
        methods=list(_route.methods),  # type: ignore[attr-defined]
        include_in_schema=False,
    )
