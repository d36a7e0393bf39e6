"""ASGI guards in front of the API: a request-body size limit (413) and optional bearer-token auth (401; with a
token set, websocket and other non-HTTP connections are refused).

The size limit counts what arrives (chunked bodies included), not only the Content-Length header, so a client
cannot stream an unbounded body into the ingress's memory. Both answer with the API's JSON error body.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sam_core.settings import DEFAULT_MAX_BODY_BYTES


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Wraps an ASGI app. Starlette builds middleware itself, so the limit is class-wide: the ingress sets
    `BodySizeLimit.max_bytes` from its settings when its replica starts (one app per replica process)."""

    max_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        response_started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not response_started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        await send_error(send, 413, "BodyTooLarge", f"request body exceeds {self.max_bytes} bytes")


class BearerAuth:
    """Requires `Authorization: Bearer <token>` on every route but the probes and docs, when a token is set.

    Protecting by default means a route added later is never open by mistake. The comparison is
    constant-time. Like BodySizeLimit, the token is class-wide and set by the ingress from its settings when
    its replica starts.
    """

    token: bytes | None = None
    open_paths = frozenset({"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
    open_prefixes = ("/static-offline-docs/", "/ui/")
    """The docs pages' own assets (Swagger UI and ReDoc, served from the installed package), and the labelling
    page's (it asks for the token and sends it with its API calls)."""

    basic_prefixes = ("/labelstudio/",)
    """Routes that also take the token as an HTTP Basic password (Label Studio's ML backend calls)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.token
        path = self._path(scope)
        if token is not None and scope["type"] not in ("http", "lifespan"):
            # No route takes a websocket (or any other scope): with auth on, none may pass unchecked.
            await _refuse_connection(scope, receive, send)
            return
        if token is None or scope["type"] != "http" or path in self.open_paths or path.startswith(self.open_prefixes):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() == b"basic" and path.startswith(self.basic_prefixes):
            # Label Studio authenticates to its ML backends with HTTP Basic only: any user, the token as password.
            scheme, given = b"bearer", _basic_password(given.strip())
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), token):
            await send_error(send, 401, "Unauthorized", "missing or wrong bearer token", field="Authorization")
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _path(scope: Scope) -> str:
        """The path within the application (Serve mounts an app under its route prefix, the root path)."""
        path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
        return path[len(root) :] if root and path.startswith(root) else path


async def _refuse_connection(scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a non-HTTP connection: a websocket handshake is closed with 1008 (policy violation) before accept."""
    if scope["type"] == "websocket":
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008, "reason": "sam-serve takes no websocket"})


def _basic_password(credentials: bytes) -> bytes:
    try:
        return base64.b64decode(credentials, validate=True).partition(b":")[2]
    except (binascii.Error, ValueError):
        return b""


async def send_error(send: Send, status: int, error: str, reason: str, *, field: str | None = None) -> None:
    """Answer with the API's JSON error body straight from ASGI (before FastAPI has the request)."""
    body: dict[str, Any] = {"error": error, "field": field, "reason": reason}
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
