"""The service's answers as a client reads them: models or arrays from a 2xx, a `SamClientError` naming the
field at fault from anything else. httpx, pydantic and numpy only, for the light client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel

from sam_core.errors import InvalidInput
from sam_core.wire.generator_schemas import SegmentEverythingResponse
from sam_core.wire.npy import npy_to_embedding, npz_to_prompts, npz_to_segment
from sam_core.wire.schemas import (
    EmbedImageResponse,
    SegmentImageResponse,
    SegmentPromptsResponse,
    ServedModelInfo,
    ServedModelsResponse,
)

ModelT = TypeVar("ModelT", bound=BaseModel)
BinaryT = TypeVar("BinaryT")


class SamClientError(Exception):
    """The server answered with a non-2xx status (or an unreadable body).

    Attributes:
        status: the HTTP status code.
        error: the server's error name (e.g. "InvalidInput", "CacheMiss"), or the HTTP reason phrase without
            spaces (e.g. "NotFound") when the body is not one of sam-serve's error bodies.
        field: the request field at fault (e.g. "image_id", "point_coords"), when the server names one.
        reason: why, in words.
    """

    def __init__(self, status: int, error: str, field: str | None, reason: str) -> None:
        where = f" [{field}]" if field else ""
        super().__init__(f"HTTP {status} {error}{where}: {reason}")
        self.status = status
        self.error = error
        self.field = field
        self.reason = reason


@dataclass
class SegmentArrays:
    """A binary `segment_image` answer, decoded.

    Attributes:
        masks: bool (M, H, W) masks at original-image pixels (M = 1, or 3 with multimask_output).
        low_res_masks: float32 (M, 256, 256) logits in SAM's low-res frame; `low_res_masks[i]` is a valid
            `mask_input` for the next click.
    """

    masks: np.ndarray
    low_res_masks: np.ndarray
    scores: np.ndarray | None = None
    """(P, M) predicted IoU of an answer to several prompts (then masks are (P, M, H, W)); None for one."""


def parse_models(response: httpx.Response) -> list[ServedModelInfo]:
    """GET /sam/models's answer: every served model (id, architecture, sha256, replicas holding it)."""
    answer = _parse_answer(response, "json", ServedModelsResponse, bytes)
    assert isinstance(answer, ServedModelsResponse), "a json answer"
    return answer.models


def _reason_phrase(status: int) -> str:
    return httpx.codes.get_reason_phrase(status).replace(" ", "") or "HTTPError"


def raise_for_error(response: httpx.Response) -> None:
    """SamClientError for a non-2xx answer, from sam-serve's `{"error", "field", "reason"}` body when it is one."""
    if response.is_success:
        return
    error, field, reason = _reason_phrase(response.status_code), None, response.text[:1000] or "(empty body)"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            error = body["error"]
            field = body.get("field") if isinstance(body.get("field"), str) else None
            reason = str(body.get("reason", reason))
        elif "detail" in body:  # FastAPI's own errors (unknown route, wrong method)
            reason = str(body["detail"])
    raise SamClientError(response.status_code, error, field, reason)


def _invalid_response(response: httpx.Response, exc: Exception) -> SamClientError:
    return SamClientError(response.status_code, "InvalidResponse", None, f"unreadable answer from the server: {exc}")


def parse_embed_response(response: httpx.Response, format: str) -> EmbedImageResponse | np.ndarray:
    """An embed answer: the response model (json, metadata) or the float32 (1, 256, 64, 64) embedding (binary)."""
    return _parse_answer(response, format, EmbedImageResponse, lambda data: npy_to_embedding(data, field="response"))


def parse_segment_response(response: httpx.Response, format: str) -> SegmentImageResponse | SegmentArrays:
    """A segment answer: the json/rle/png model, or the decoded arrays (binary)."""
    return _parse_answer(
        response, format, SegmentImageResponse, lambda data: SegmentArrays(*npz_to_segment(data, field="response"))
    )


def parse_prompts_response(response: httpx.Response, format: str) -> SegmentPromptsResponse | SegmentArrays:
    """A several-prompts answer: `results` in order (json/rle/png), or (P, M, ...) arrays with scores (binary)."""
    return _parse_answer(
        response, format, SegmentPromptsResponse, lambda data: SegmentArrays(*npz_to_prompts(data, field="response"))
    )


def parse_everything_response(response: httpx.Response) -> SegmentEverythingResponse:
    """A segment-everything answer: its mask records."""
    answer = _parse_answer(response, "json", SegmentEverythingResponse, bytes)
    assert isinstance(answer, SegmentEverythingResponse), "a json answer"
    return answer


def _parse_answer(
    response: httpx.Response, format: str, model: type[ModelT], read_binary: Callable[[bytes], BinaryT]
) -> ModelT | BinaryT:
    """A 2xx answer read as `model` (JSON) or by `read_binary` (binary); anything unreadable a SamClientError."""
    raise_for_error(response)
    try:
        if format == "binary":
            return read_binary(response.content)
        return model.model_validate(response.json())
    except (InvalidInput, ValueError) as exc:
        raise _invalid_response(response, exc) from exc


def parse_readiness(response: httpx.Response) -> dict[str, Any]:
    """GET /readyz: its body, also when it is a 503 "not ready" (readiness is an answer, not an error)."""
    if response.status_code == 503:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "ready" in body:
            return body
    return json_object(response)


def json_object(response: httpx.Response) -> dict[str, Any]:
    raise_for_error(response)
    try:
        body = response.json()
    except ValueError as exc:
        raise _invalid_response(response, exc) from exc
    if not isinstance(body, dict):
        raise _invalid_response(response, TypeError(f"expected a JSON object, got {type(body).__name__}"))
    return body
