"""The request/answer core that `SamClient` and `AsyncSamClient` share: each API call built as a `Call` (its
route, JSON body naming the client's model, and how its answer is read), so a client only sends it, over
httpx.Client or httpx.AsyncClient. Bodies and answers are `sam_core.wire.calls`'s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Literal, TypedDict, TypeVar

import httpx
import numpy as np

from sam_core.wire.answers import (
    SegmentArrays,
    json_object,
    parse_embed_response,
    parse_everything_response,
    parse_models,
    parse_prompts_response,
    parse_readiness,
    parse_segment_response,
)
from sam_core.wire.calls import (
    DEFAULT_TIMEOUT_S,
    ImageLike,
    client_headers,
    embed_request_body,
    everything_request_body,
    prompts_request_body,
    segment_request_body,
    with_model,
)
from sam_core.wire.generator_schemas import EVERYTHING_ROUTE, SegmentEverythingResponse
from sam_core.wire.schemas import (
    EMBED_ROUTE,
    MODELS_ROUTE,
    SEGMENT_ROUTE,
    EmbedImageResponse,
    SegmentImageResponse,
    SegmentPromptsResponse,
)

AnswerT = TypeVar("AnswerT")
PoolT = TypeVar("PoolT", httpx.Client, httpx.AsyncClient)


@dataclass(frozen=True)
class Call(Generic[AnswerT]):
    """One request to the service and the reader of its answer (SamClientError for a non-2xx status)."""

    method: Literal["GET", "POST"]
    route: str
    read: Callable[[httpx.Response], AnswerT]
    body: dict[str, Any] | None = None
    """The JSON body (POST), None for a GET."""


MODELS_CALL = Call("GET", MODELS_ROUTE, parse_models)
HEALTHZ_CALL = Call("GET", "/healthz", json_object)
READYZ_CALL = Call("GET", "/readyz", parse_readiness)


class SegmentImageFields(TypedDict, total=False):
    """The keyword arguments of `segment_image` other than `format` (see `SamClient.segment_image`)."""

    image: ImageLike | None
    image_id: str | None
    point_coords: Any
    point_labels: Any
    box: Any
    multimask_output: bool
    mask_input: Any
    use_mask_input_cache: bool
    has_mask_input: bool | None
    embeddings: np.ndarray | None
    orig_im_size: Any


class ClientCore(ABC, Generic[PoolT]):
    """A client's settings and its calls; a subclass opens the connection pool and sends the calls over it.

    `model` is read when a call is built, so setting it on a client redirects its later calls.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        api_key: str | None = None,
        model: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._http: PoolT = self._connection_pool(self.base_url, timeout, client_headers(api_key))

    @staticmethod
    @abstractmethod
    def _connection_pool(base_url: str, timeout: float | None, headers: dict[str, str]) -> PoolT:
        """The keep-alive pool every call of this client goes through."""

    def _post(self, route: str, body: dict[str, Any], read: Callable[[httpx.Response], AnswerT]) -> Call[AnswerT]:
        return Call("POST", route, read, with_model(body, self.model))

    def _embed_call(
        self, image: ImageLike | None, *, image_id: str | None, format: str
    ) -> Call[EmbedImageResponse | np.ndarray]:
        body = embed_request_body(image, image_id=image_id, format=format)
        return self._post(EMBED_ROUTE, body, partial(parse_embed_response, format=format))

    def _segment_call(
        self,
        *,
        image: ImageLike | None = None,
        image_id: str | None = None,
        point_coords: Any = None,
        point_labels: Any = None,
        box: Any = None,
        multimask_output: bool = False,
        mask_input: Any = None,
        use_mask_input_cache: bool = True,
        has_mask_input: bool | None = None,
        embeddings: np.ndarray | None = None,
        orig_im_size: Any = None,
        format: str = "json",
    ) -> Call[SegmentImageResponse | SegmentArrays]:
        body = segment_request_body(
            image=image,
            image_id=image_id,
            point_coords=point_coords,
            point_labels=point_labels,
            box=box,
            multimask_output=multimask_output,
            mask_input=mask_input,
            use_mask_input_cache=use_mask_input_cache,
            has_mask_input=has_mask_input,
            embeddings=embeddings,
            orig_im_size=orig_im_size,
            format=format,
        )
        return self._post(SEGMENT_ROUTE, body, partial(parse_segment_response, format=format))

    def _prompts_call(
        self, prompts: Sequence[Mapping[str, Any]], *, format: str, **image: Any
    ) -> Call[SegmentPromptsResponse | SegmentArrays]:
        body = prompts_request_body(prompts, format=format, **image)
        return self._post(SEGMENT_ROUTE, body, partial(parse_prompts_response, format=format))

    def _everything_call(
        self, image: ImageLike | None, *, image_id: str | None, format: str, **options: Any
    ) -> Call[SegmentEverythingResponse]:
        body = everything_request_body(image, image_id=image_id, format=format, **options)
        return self._post(EVERYTHING_ROUTE, body, parse_everything_response)
