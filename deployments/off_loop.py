"""Work the ingress keeps off its event loop: two bounded thread pools (bodies, images) and a FastAPI route class
that parses large JSON bodies in one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

T = TypeVar("T")

PARSE_WORKERS = 2
"""Threads for parsing and writing large bodies: JSON over `INLINE_JSON_BYTES`, .npy and JSON-list embeddings,
mask inputs, the json embedding answer (12.5 MB of text)."""

IMAGE_WORKERS = 1
"""Threads for client images: base64, hashing, URL fetches, pixel decoding and the resize to the encoder's
input frame (a 20 MP JPEG is ~0.2 s of CPU). One thread, scheduled as idle work (SCHED_IDLE): a burst of
uploads queues here instead of taking the cores that follow-up clicks on cached images need, and never
holds the event loop."""

INLINE_JSON_BYTES = 256 * 1024
"""Bodies up to this size (every click) are parsed on the loop: well under a millisecond, and no wait for a
worker busy with someone's upload."""

_pools: dict[str, ThreadPoolExecutor] = {}


def _lower_thread_priority() -> None:
    """Run this thread under SCHED_IDLE: it gets a core only when the process's other threads (and the
    decoder replicas beside it) leave one free. Linux schedules threads one by one; elsewhere a no-op."""
    with contextlib.suppress(AttributeError, OSError):  # no SCHED_IDLE here: plain priority then
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


def _pool(name: str) -> ThreadPoolExecutor:
    if name not in _pools:
        if name == "image":
            _pools[name] = ThreadPoolExecutor(IMAGE_WORKERS, "sam-ingress-image", initializer=_lower_thread_priority)
        else:
            _pools[name] = ThreadPoolExecutor(PARSE_WORKERS, "sam-ingress-parse")
    return _pools[name]


async def off_loop(function: Callable[..., T], *args: Any, pool: str = "parse", **kwargs: Any) -> T:
    """Run `function(*args, **kwargs)` in one of the ingress's bounded pools ("parse" or "image")."""
    call = functools.partial(function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool(pool), call)


class _OffLoopJSONRequest(Request):
    """A request whose JSON body is parsed (by orjson) in the worker pool rather than on the event loop.

    a Roboflow client's JSON-list embedding is a 21 MB body; parsed on the loop it would stall every other
    request of the replica for a quarter of a second.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = _parse_json(body) if len(body) <= INLINE_JSON_BYTES else await off_loop(_parse_json, body)
        return self._json


def _parse_json(body: bytes) -> Any:
    """orjson, which is strict JSON; what it refuses goes to the standard library, which also reads the NaN and
    Infinity that Python's `json.dumps` writes, so the request model can refuse those naming their field."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


class OffLoopJSONRoute(APIRoute):
    """FastAPI's documented hook for a custom Request class: every API route parses its body off the loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parse_off_loop(request: Request) -> Response:
            return await handler(_OffLoopJSONRequest(request.scope, request.receive))

        return parse_off_loop
