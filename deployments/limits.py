"""ASGI guards in front of the API: a request-body size limit (413), optional bearer-token auth (401; with
tokens set, websocket and other non-HTTP connections are refused) that names each request's tenant, and a
per-tenant bound on requests in flight (429).

The size limit counts what arrives (chunked bodies included), not only the Content-Length header, so a client
cannot stream an unbounded body into the ingress's memory. Both answer with the API's JSON error body.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any, ClassVar

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments import metrics
from sam_core.settings import DEFAULT_MAX_BODY_BYTES, Settings
from sam_core.tenants import backend_credential, require_tokens, tenant_tokens
from sam_core.wire.image_ids import DEFAULT_TENANT


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


LABELSTUDIO_TENANT = "labelstudio"
"""The tenant Label Studio's own credential authenticates as (metrics, the in-flight bound)."""


class BearerAuth:
    """Requires `Authorization: Bearer <token>` on every route but the probes and docs, when tokens are set, and
    tells the routes whose token it was: the tenant, in `scope["state"]["tenant"]`.

    Protecting by default means a route added later is never open by mistake. Every token is compared, in
    constant time, whichever matches. Like BodySizeLimit, the tokens are class-wide and set by the ingress from
    its settings when its replica starts (`sam_core.tenants.tenant_tokens`).
    """

    tokens: ClassVar[dict[bytes, str]] = {}
    """Token -> tenant; empty: auth is off (every request is the default tenant's)."""
    open_paths = frozenset({"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
    open_prefixes = ("/static-offline-docs/", "/ui/")
    """The docs pages' own assets (Swagger UI and ReDoc, served from the installed package), and the labelling
    page's (it asks for the token and sends it with its API calls)."""

    basic_prefixes = ("/labelstudio/",)
    """Routes that also take the token as an HTTP Basic password (Label Studio's ML backend calls)."""
    labelstudio_password: ClassVar[bytes | None] = None
    """Label Studio's own credential (`labelstudio_backend_password`): when set, the only one `basic_prefixes`
    take (as Basic password or bearer), whatever the tenant tokens; its requests are tenant `labelstudio`'s."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tokens = self.tokens
        path = _path(scope)
        if (tokens or self.labelstudio_password) and scope["type"] not in ("http", "lifespan"):
            # No route takes a websocket (or any other scope): with auth on, none may pass unchecked.
            await _refuse_connection(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        backend = self.labelstudio_password
        if backend is not None and scope["type"] == "http" and path.startswith(self.basic_prefixes):
            password = _basic_password(given.strip()) if scheme.lower() == b"basic" else given.strip()
            if scheme.lower() not in (b"basic", b"bearer") or not hmac.compare_digest(password, backend):
                reason = "missing or wrong Label Studio credential (labelstudio_backend_password)"
                await send_error(send, 401, "Unauthorized", reason, field="Authorization")
                return
            scope.setdefault("state", {})["tenant"] = LABELSTUDIO_TENANT
            await self.app(scope, receive, send)
            return
        if not tokens or scope["type"] != "http" or path in self.open_paths or path.startswith(self.open_prefixes):
            await self.app(scope, receive, send)
            return
        if scheme.lower() == b"basic" and path.startswith(self.basic_prefixes):
            # Label Studio authenticates to its ML backends with HTTP Basic only: any user, the token as password.
            scheme, given = b"bearer", _basic_password(given.strip())
        tenant = _tenant_of(tokens, given.strip()) if scheme.lower() == b"bearer" else None
        if tenant is None:
            await send_error(send, 401, "Unauthorized", "missing or wrong bearer token", field="Authorization")
            return
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)


def tenant_of(request: HTTPConnection) -> str:
    """The tenant `BearerAuth` found for the request's token; the default tenant when auth is off."""
    tenant: str = request.scope.get("state", {}).get("tenant", DEFAULT_TENANT)
    return tenant


def _tenant_of(tokens: dict[bytes, str], given: bytes) -> str | None:
    """The tenant whose token `given` is: every token compared in constant time, so the time says nothing."""
    found = None
    for token, tenant in tokens.items():
        if hmac.compare_digest(given, token):
            found = tenant
    return found


class TenantLimit:
    """A bound on each tenant's requests in flight on this ingress replica: over `max_in_flight`, 429 with
    Retry-After, so one tenant's burst queues only its own requests, never the others'. Counts every tenant's
    answers by status (`sam_tenant_requests_total`). Only with auth on (without it there is one tenant, and
    Serve's own queue bounds it); class-wide, set by the ingress like BearerAuth."""

    max_in_flight: int | None = None
    retry_after_s = 1

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant = scope.get("state", {}).get("tenant") if scope["type"] == "http" else None
        if tenant is None or self.max_in_flight is None:
            await self.app(scope, receive, send)
            return
        if self.in_flight.get(tenant, 0) >= self.max_in_flight:
            metrics.tenant_request(tenant, 429)
            await send_error(
                send,
                429,
                "Overloaded",
                f"this tenant has {self.max_in_flight} requests in flight here: retry shortly",
                retry_after_s=self.retry_after_s,
            )
            return
        self.in_flight[tenant] = self.in_flight.get(tenant, 0) + 1
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.in_flight[tenant] -= 1
            metrics.tenant_request(tenant, status)


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


async def send_error(
    send: Send, status: int, error: str, reason: str, *, field: str | None = None, retry_after_s: int | None = None
) -> None:
    """Answer with the API's JSON error body straight from ASGI (before FastAPI has the request)."""
    body: dict[str, Any] = {"error": error, "field": field, "reason": reason}
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def configure_guards(settings: Settings) -> None:
    """Set the class-wide limits and credentials of the middlewares above from a replica's settings (raises
    ValueError naming the setting for tokens that cannot work)."""
    BodySizeLimit.max_bytes = settings.max_body_bytes
    tokens = tenant_tokens(settings)
    require_tokens(settings, tokens)
    BearerAuth.tokens = tokens
    BearerAuth.labelstudio_password = backend_credential(settings, tokens)
    TenantLimit.max_in_flight = settings.tenant_max_in_flight if tokens else None
