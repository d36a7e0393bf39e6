"""The app against its own OpenAPI document: schemathesis-generated requests to every operation never get a
5xx, and every response matches what the document declares for it."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.errors import InvalidSchema
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.conftest import ServeApp

pytestmark = pytest.mark.slow

FUZZ_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]

# schemathesis.pytest.from_fixture (4.32) reads `Function._nodeid`, which pytest 9 no longer has, so each
# operation is its own test here, and the document is held to this list so none goes untested.
OPERATIONS = [
    "GET /healthz",
    "GET /labelstudio/health",
    "GET /labelstudio/is_training",
    "GET /labelstudio/metrics",
    "GET /labelstudio/versions",
    "GET /readyz",
    "GET /sam/decoder.onnx",
    "GET /sam/models",
    "POST /labelstudio/predict",
    "POST /labelstudio/setup",
    "POST /labelstudio/train",
    "POST /labelstudio/webhook",
    "POST /sam/embed_image",
    "POST /sam/segment_everything",
    "POST /sam/segment_image",
]


@pytest.fixture(scope="module")
def app_schema(serve_app: ServeApp) -> schemathesis.BaseSchema:
    """The running app's own /openapi.json; generated requests go to the app."""
    return schemathesis.openapi.from_url(f"{serve_app.url}/openapi.json", wait_for_schema=30.0)


def parsed(result: Ok[schemathesis.APIOperation] | Err[InvalidSchema]) -> schemathesis.APIOperation:
    """The operation, or the reason schemathesis could not read it from the document, raised."""
    if isinstance(result, Err):
        raise result.err()
    return result.ok()


def test_fuzzed_operations_are_all_the_documented_ones(app_schema: schemathesis.BaseSchema) -> None:
    documented = sorted(parsed(result).label for result in app_schema.get_all_operations())
    assert documented == OPERATIONS


@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_answers_without_5xx_and_as_documented(app_schema: schemathesis.BaseSchema, label: str) -> None:
    method, path = label.split(" ", 1)
    operation = app_schema[path][method]
    # Valid requests and requests that break the schema on purpose (the latter must be a 4xx, never a 5xx).
    # The ignores: schemathesis needs Python 3.11, and under mypy's python_version 3.10 its GenerationMode's
    # base (enum.StrEnum) is missing, so the members read as plain str.
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),  # type: ignore[arg-type]
        operation.as_strategy(GenerationMode.NEGATIVE),  # type: ignore[arg-type]
    )

    @FUZZ_SETTINGS
    @given(case=cases)
    def answers_as_documented(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=30.0)

    answers_as_documented()


# Error statuses the fuzzer rarely reaches, each checked against the document.
ERROR_STATUS_REQUESTS = [
    pytest.param("POST /sam/embed_image", {"body": b"\x00"}, 400, id="embed_image-body-not-json-400"),
    pytest.param("POST /sam/segment_image", {"body": b"\x00"}, 400, id="segment_image-body-not-json-400"),
    pytest.param(
        "POST /sam/segment_image",
        {"body": {"image_id": "never-embedded", "point_coords": [[1, 1]], "point_labels": [1]}},
        404,
        id="segment_image-unknown-image_id-404",
    ),
]


@pytest.mark.parametrize(("label", "request_parts", "status"), ERROR_STATUS_REQUESTS)
def test_error_statuses_are_documented(
    app_schema: schemathesis.BaseSchema, label: str, request_parts: dict[str, Any], status: int
) -> None:
    method, path = label.split(" ", 1)
    case = app_schema[path][method].Case(media_type="application/json", **request_parts)
    response = case.call(timeout=30.0)
    assert response.status_code == status, response.text
    case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])


# A JSON integer beyond float range (legal JSON, parsed to a Python int) once reached float() unchecked: 500.
HUGE_INT = "1" + "0" * 400
OVERFLOWING_REQUESTS = [
    pytest.param(
        f'{{"image_id": "x", "point_coords": [[{HUGE_INT}, 1]], "point_labels": [1]}}'.encode(), id="point_coords"
    ),
    pytest.param(
        f'{{"image_id": "x", "point_coords": [[1, 1]], "point_labels": [1], "box": [0, 0, {HUGE_INT}, 5]}}'.encode(),
        id="box",
    ),
]


@pytest.mark.parametrize("body", OVERFLOWING_REQUESTS)
def test_integer_coordinates_too_big_for_a_float_are_a_4xx(app_schema: schemathesis.BaseSchema, body: bytes) -> None:
    case = app_schema["/sam/segment_image"]["POST"].Case(media_type="application/json", body=body)
    response = case.call(timeout=30.0)
    assert 400 <= response.status_code < 500, response.text
    case.validate_response(response, checks=CHECKS)
