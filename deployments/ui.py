"""The labelling page (`/ui/`) and the onnxruntime-web files it runs on, served by the ingress from `ui_dir`.

The page is plain ES modules in `web/ui/`; onnxruntime-web comes from npm (`web/package-lock.json`, installed by
`npm ci` in the bootstrap) and is served from its installed package, so the page works offline. Every answer is
cross-origin isolated (COOP + COEP): that is what lets onnxruntime-web run its WASM threads. Files are read once
per replica and revalidated by their sha256 (`ETag`, `Cache-Control: no-cache`), so an upgrade is never stale.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from deployments.decoder_file import entity_tags
from deployments.off_loop import off_loop
from sam_core.errors import NotFound
from sam_core.wire.schemas import EmbedImageResponse

UI_PREFIX = "/ui/"
VENDOR_PREFIX = f"{UI_PREFIX}vendor/onnxruntime-web/"
ORT_PACKAGE = Path("node_modules/onnxruntime-web/dist")
ORT_FILES = frozenset({"ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"})
"""onnxruntime-web's WASM build: the module the page imports, and the threaded runtime it loads itself."""

_PAGE_FILE = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(html|js|css|png|svg)$")
"""A page file's name: no folders, no dots but the suffix (nothing can climb out of ui/)."""

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(frozen=True)
class UiFile:
    data: bytes
    media_type: str
    etag: str


class UiFiles:
    """The page's files and onnxruntime-web's, each read from disk once (the WASM runtime is 15 MB)."""

    def __init__(self, ui_dir: Path) -> None:
        self.ui_dir = ui_dir
        self._files: dict[Path, UiFile] = {}
        self._lock = asyncio.Lock()

    def page_path(self, name: str) -> Path:
        if not _PAGE_FILE.match(name):
            raise NotFound(f"no page file {name!r}", field="path")
        return self.ui_dir / "ui" / name

    def vendor_path(self, name: str) -> Path:
        if name not in ORT_FILES:
            raise NotFound(f"no onnxruntime-web file {name!r} is served", field="path")
        return self.ui_dir / ORT_PACKAGE / name

    async def response(self, request: Request, path: Path) -> Response:
        file = await self._read(path)
        headers = {"ETag": file.etag, "Cache-Control": "no-cache", **ISOLATION_HEADERS}
        if file.etag in entity_tags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(content=file.data, media_type=file.media_type, headers=headers)

    async def _read(self, path: Path) -> UiFile:
        async with self._lock:
            if path not in self._files:
                self._files[path] = await off_loop(self._load, path)
            return self._files[path]

    def _load(self, path: Path) -> UiFile:
        if not path.is_file():
            if path.parent == self.ui_dir / ORT_PACKAGE:
                raise NotFound(
                    f"onnxruntime-web is not installed under {self.ui_dir}: run `npm ci --prefix web` (the bootstrap "
                    "does); the page decodes on the server meanwhile",
                    field="ui_dir",
                )
            if not (self.ui_dir / "ui").is_dir():
                raise NotFound(
                    f"the labelling page is not installed: no ui/ folder in ui_dir {self.ui_dir}", field="ui_dir"
                )
            raise NotFound(f"no page file {path.name!r}", field="path")
        data = path.read_bytes()
        return UiFile(data=data, media_type=MEDIA_TYPES[path.suffix], etag=f'"{hashlib.sha256(data).hexdigest()}"')


def redirect_to_page(request: Request) -> RedirectResponse:
    """`/` -> the page, under whatever prefix the application is mounted at."""
    return RedirectResponse(f"{request.scope.get('root_path', '')}{UI_PREFIX}", status_code=307)


def embedding_headers(response: EmbedImageResponse) -> dict[str, str]:
    """A binary embedding's json fields, as headers for clients that take the array (the page decodes clicks on
    it); the id percent-encoded, since a client's id may be any printable text and a header is latin-1."""
    return {
        "X-Image-Id": quote(response.image_id, safe=""),
        "X-Original-Size": ",".join(str(side) for side in response.original_size),
        "X-Cached": "true" if response.cached else "false",
    }
