"""The HTTP side of isolation.py's black-box checks: a tenant's client, the images and clicks it sends, and one-line
summaries of the answers. Like isolation.py it uses httpx, numpy and Pillow only, none of the project's packages."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import numpy as np
from PIL import Image

SEGMENT, EMBED, EVERYTHING = "/sam/segment_image", "/sam/embed_image", "/sam/segment_everything"
Answer = tuple[int, Any, float]  # status, body (json, else text), elapsed ms


def png(seed: int, width: int = 320, height: int = 240) -> bytes:
    """Noise with a few flat rectangles: two seeds give two images whose masks differ."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        w, h = int(rng.integers(20, 160)), int(rng.integers(20, 120))
        pixels[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> dict[str, str]:
    return {"type": "base64", "value": base64.b64encode(data).decode()}


def click(x: int = 160, y: int = 120) -> dict[str, Any]:
    return {"point_coords": [[x, y]], "point_labels": [1], "format": "json"}


def brief(answer: Answer) -> str:
    status, body, ms = answer
    text = f"{status} in {ms:.0f} ms"
    if isinstance(body, dict) and "error" in body:
        text += f" field={body.get('field')!r} reason={str(body.get('reason'))[:140]!r}"
    elif not isinstance(body, dict):
        text += f" body={str(body)[:140]!r}"
    return text


def same_masks(a: Any, b: Any) -> bool:
    if not (isinstance(a, dict) and isinstance(b, dict) and "masks" in a and "masks" in b):
        return False
    if a["masks"] != b["masks"] or a.get("low_res_masks") != b.get("low_res_masks"):
        return False
    sa, sb = a.get("scores") or [], b.get("scores") or []
    return len(sa) == len(sb) and bool(np.allclose(sa, sb, atol=1e-3))


class Sam:
    """One tenant's HTTP client (token None: no Authorization header)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url, token
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=60.0, trust_env=False)

    def clone(self) -> Sam:
        return Sam(self.url, self.token)

    def post(self, route: str, body: dict[str, Any], timeout: float = 60.0) -> Answer:
        start = time.perf_counter()
        response = self.http.post(route, json=body, timeout=timeout)
        ms = (time.perf_counter() - start) * 1000
        try:
            return response.status_code, response.json(), ms
        except ValueError:
            return response.status_code, response.text, ms

    def answer_within(self, route: str, body: dict[str, Any], timeout: float) -> Answer:
        """`post`, with no answer in time reported as status -1 after `timeout` seconds instead of raised."""
        try:
            return self.post(route, body, timeout)
        except httpx.TimeoutException:
            return -1, f"no answer within {timeout:g} s", timeout * 1000

    def clicks(self, image_id: str, n: int = 20) -> tuple[list[float], int]:
        """n cached clicks at different points: their times (ms) and how many were not a 200."""
        times, errors = [], 0
        for i in range(n):
            status, _, ms = self.post(SEGMENT, {"image_id": image_id, **click(40 + 12 * i, 60 + 7 * i)})
            times.append(ms)
            errors += status != 200
        return times, errors
