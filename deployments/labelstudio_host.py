"""The Label Studio host a backend fetches task images from (`labelstudio_url`): its data paths only, with its
token (a legacy token, a personal access token exchanged for access tokens, or the one `/setup` sends when the
operator allows it), under the one deadline of every image URL; other URLs go to the ingress's URL fetch."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from sam_core.errors import InvalidInput, URLFetchError, URLInputRefused, describe
from sam_core.settings import Settings
from sam_core.wire.image_checks import check_byte_count

CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://")
DATA_PATHS = re.compile(
    r"^/(data/upload/|data/local-files/|storage-data/uploaded/|(tasks|projects)/\d+/(resolve|presign)/)"
)
"""The Label Studio paths that serve task data (uploads, local files, storage proxies): the only ones fetched
with its token, so a task cannot make the backend read Label Studio's API with it."""


class LabelStudioHost:
    """One ingress replica's access to the Label Studio host: which URLs are its, and their images fetched."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = settings.labelstudio_url
        self.token = settings.labelstudio_token.get_secret_value() if settings.labelstudio_token else None
        self.setup_token: str | None = None
        self._access: tuple[str, float] | None = None
        self._refresh_lock = asyncio.Lock()

    def remember_setup(self, hostname: str | None, access_token: str | None) -> None:
        """The token `/setup` sends is used only when the operator allowed it, and only for the configured host
        (a request can never add one)."""
        if not self.settings.labelstudio_accept_setup_token:
            return
        if access_token and hostname and self.host and _origin(hostname) == _origin(self.host):
            self.setup_token = access_token

    def resolve(self, url: str) -> str:
        """The task's image URL made absolute on the host; a URL on the host must name one of its data paths."""
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

    async def image(self, url: str) -> dict[str, str]:
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
