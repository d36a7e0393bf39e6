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
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np
import pycocotools.mask as coco_mask
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from deployments.http_errors import ERROR_RESPONSES
from deployments.labelstudio_host import LabelStudioHost
from deployments.off_loop import OffLoopJSONRoute
from sam_core.errors import CacheMiss, InvalidInput
from sam_core.settings import Settings
from sam_core.wire.labelstudio import InteractivePrompt, LabelConfig, context_prompt, parse_label_config, region
from sam_core.wire.messages import SegmentResult
from sam_core.wire.schemas import SegmentImageRequest

SegmentCall = Callable[[SegmentImageRequest], Awaitable[SegmentResult]]
"""How the backend has a prompt answered: the ingress's `segment` (cache, encoder on a miss, decoder)."""


class ModelNames(Protocol):
    """What the backend needs to know of the served models (the ingress's `ModelRouting`)."""

    def named(self, model: str | None) -> str: ...

    async def model_id(self, model: str) -> str: ...


PREFIX = "/labelstudio"
MODEL_CLASS = "SamServe"
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
    """One ingress replica's side of the protocol: the model version and the prompts answered (the host's images
    fetched by `LabelStudioHost`)."""

    def __init__(self, segment: SegmentCall, models: ModelNames, settings: Settings) -> None:
        self.segment_call = segment
        self.models = models
        self.settings = settings
        self.host = LabelStudioHost(settings)

    async def model_version(self, model: str) -> str:
        return f"sam-serve-{await self.models.model_id(model)}"

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
        resolved = self.host.resolve(url)
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
            result = await self.segment_call(SegmentImageRequest(**fields, image=await self.host.image(resolved)))
        assert isinstance(result.body, dict), "rle answers are json"
        return result.body


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
    backend.host.remember_setup(body.hostname, body.access_token)
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
