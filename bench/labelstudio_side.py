"""Label Studio's side of the wire, for the benchmarks and the tests: requests shaped as its editor sends them
to an ML backend, and a file host that serves task images and checks tokens as Label Studio's does."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BRUSH_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/><Label value="Other"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Object" smart="true"/><Label value="Negative" smart="true"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="Object" smart="true"/></RectangleLabels>
</View>"""


def keypoint(
    x: float, y: float, size: tuple[int, int], *, label: str = "Object", positive: bool | None = True
) -> dict[str, Any]:
    """A smart keypoint as Label Studio's editor sends it in `params.context.result` (percent of the image)."""
    item: dict[str, Any] = {
        "original_width": size[0],
        "original_height": size[1],
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]},
        "id": "kp1",
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }
    if positive is not None:
        item["is_positive"] = positive
    return item


def rectangle(x: float, y: float, w: float, h: float, size: tuple[int, int]) -> dict[str, Any]:
    return {
        "original_width": size[0],
        "original_height": size[1],
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["Object"]},
        "id": "rect1",
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
    }


def predict_body(
    image_url: str, context: list[dict[str, Any]] | None, config: str = BRUSH_CONFIG, key: str = "image"
) -> dict[str, Any]:
    """Label Studio's `/predict` body (label_studio/ml/api_connector.py: _prep_prediction_req)."""
    return {
        "tasks": [{"id": 7, "data": {key: image_url}, "meta": {}, "annotations": [], "predictions": []}],
        "project": "3.1764755364",
        "label_config": config,
        "params": {"login": None, "password": None, "context": None if context is None else {"result": context}},
    }


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT-shaped token (the file host below checks it by value, as a stand-in for a signature)."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class FileHost:
    """Serves task images under /data/upload/ the way Label Studio does: only with `Authorization: Token <legacy>`
    or `Bearer <access>`, where an access token comes from POST /api/token/refresh/ with the personal access
    token. Counts requests by path, so tests can see an image fetched once."""

    def __init__(self, legacy_token: str, personal_token: str) -> None:
        self.files: dict[str, bytes] = {}
        self.legacy_token = legacy_token
        self.personal_token = personal_token
        self.access_tokens: set[str] = set()
        self.requests: Counter[str] = Counter()
        self.auth_seen: list[str] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                host.requests[self.path] += 1
                auth = self.headers.get("Authorization", "")
                host.auth_seen.append(auth)
                allowed = {f"Token {host.legacy_token}", *(f"Bearer {t}" for t in host.access_tokens)}
                if auth not in allowed:
                    self._answer(401, b'{"detail": "Authentication credentials were not provided."}')
                elif self.path not in host.files:
                    self._answer(404, b'{"detail": "Not found."}')
                else:
                    self._answer(200, host.files[self.path], "image/jpeg")

            def do_POST(self) -> None:
                host.requests[self.path] += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/api/token/refresh/" or body.get("refresh") != host.personal_token:
                    self._answer(401, b'{"detail": "Token is invalid or expired"}')
                    return
                access = jwt({"token_type": "access", "exp": int(time.time()) + 300, "n": len(host.access_tokens)})
                host.access_tokens.add(access)
                self._answer(200, json.dumps({"access": access}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[FileHost]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
