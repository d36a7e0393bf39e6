"""The API's errors: every failure answered with one body (`error`, `field`, `reason`) and counted, statuses
documented for OpenAPI. `sam_core.errors` says which status each typed error is; this module only reads it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import metrics
from sam_core.errors import SamServeError
from sam_core.wire.generator_schemas import SegmentEverythingRequest
from sam_core.wire.schemas import EmbedImageRequest, ErrorResponse, ImagePayload, SegmentImageRequest, SegmentPrompt

# The error statuses the API routes answer, documented in OpenAPI with the one error body they all use.
_ERROR_STATUSES = {
    400: "malformed JSON, base64 or image",
    401: "missing or wrong bearer token (when auth is on)",
    403: "image source refused (file paths; URLs when disabled or not public)",
    404: "image_id not cached (send the image), or an unknown model or sam_version_id",
    413: "body, image bytes or pixels over the limits",
    415: "image format not accepted",
    422: "a field has the wrong type or value",
    500: "internal error (logged on the server)",
    503: "cache unavailable for an id-only request, a replica failed, a model could not be loaded, or at capacity",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in _ERROR_STATUSES.items()
}

_FIELD_NAMES = frozenset(
    name
    for model in (EmbedImageRequest, SegmentImageRequest, SegmentPrompt, ImagePayload, SegmentEverythingRequest)
    for name in model.model_fields
) | {"multimask"}  # the query parameter of GET /sam/decoder.onnx


def _route(request: Request) -> str:
    """The matched route's template (a fixed set, fit for a metric tag), or "unmatched"."""
    return str(getattr(request.scope.get("route"), "path", "unmatched"))


def _error_response(
    request: Request, status: int, error: str, field: str | None, reason: str, retry_after_s: int | None = None
) -> JSONResponse:
    metrics.error_response(error, _route(request))
    headers = None if retry_after_s is None else {"Retry-After": str(retry_after_s)}
    return JSONResponse(status_code=status, content={"error": error, "field": field, "reason": reason}, headers=headers)


async def _sam_error(request: Request, exc: SamServeError) -> JSONResponse:
    # Ray re-raises a replica's exception as a subclass of it; report the original class name.
    name = next((c.__name__ for c in type(exc).__mro__ if c.__module__ == "sam_core.errors"), "SamServeError")
    return _error_response(request, exc.http_status, name, exc.field, exc.reason, exc.retry_after_s)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return _error_response(request, 400, "InvalidJSON", None, f"request body is not valid JSON: {first.get('msg')}")
    # pydantic appends union-member tags ("int", "float", ...) to a location; a field path has only names
    # and list indices.
    reason = str(first.get("msg", "invalid value"))
    if location[:1] == ["query"]:  # a query parameter: its name is the field
        field = ".".join(location[1:]) or None
    elif first.get("type") == "extra_forbidden":
        field = ".".join(location) or None
        reason = "unknown field (check its spelling)"
    else:
        field = ".".join(part for part in location if part.isdigit() or part in _FIELD_NAMES) or None
    return _error_response(request, 422, "InvalidInput", field, reason)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error_response(request, exc.status_code, "HTTPError", None, str(exc.detail))


async def _replica_died(request: Request, exc: Exception) -> JSONResponse:
    reason = "a model replica failed during the request: retry"
    return _error_response(request, 503, "ReplicaUnavailable", None, reason, retry_after_s=1)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Counted and answered with the API's error body, never a traceback; Starlette still re-raises, so Ray
    # Serve logs the traceback and counts the 500.
    return _error_response(request, 500, "InternalError", None, "internal error (logged on the server)")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of `app` with the API's one error body (and count it)."""
    app.exception_handler(SamServeError)(_sam_error)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(RayActorError)(_replica_died)
    app.exception_handler(Exception)(_internal_error)
    # Serve's own words for a replica failure (a replica gone before or while it was chosen; a deployment with
    # none).
    app.add_exception_handler(ReplicaUnavailableError, _replica_died)
    app.add_exception_handler(DeploymentUnavailableError, _replica_died)
