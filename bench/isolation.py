"""Black-box acceptance checks of a running sam-serve app: tenants, image-id namespaces, hanging URLs, bounds.

Written from the README's HTTP API and Hardening sections only: HTTP (httpx), numpy and Pillow, none of the
project's packages. The service must run with two tenants and URL images on, private addresses allowed (the
checks start their own trickling HTTP server on 127.0.0.1) and a 5 s URL deadline:

    SAM_AUTH_TOKENS='{"alice": "<A>", "bob": "<B>"}' SAM_IMAGE_ALLOW_URL=true SAM_IMAGE_ALLOW_PRIVATE_URLS=true \\
        SAM_IMAGE_URL_TIMEOUT_S=5 .venv/bin/sam-serve run --model-type vit_tiny --random-weights --port 8123

then, once it prints "ready at":

    .venv/bin/python bench/isolation.py --url http://127.0.0.1:8123 --token-a <A> --token-b <B>

It prints one line per check (PASS/FAIL with statuses and timings) and exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
from PIL import Image

SEGMENT, EMBED, EVERYTHING = "/sam/segment_image", "/sam/embed_image", "/sam/segment_everything"
Answer = tuple[int, Any, float]  # status, body (json, else text), elapsed ms
RESULTS: list[bool] = []


def report(name: str, ok: bool, detail: str) -> None:
    RESULTS.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


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

    def clicks(self, image_id: str, n: int = 20) -> tuple[list[float], int]:
        """n cached clicks at different points: their times (ms) and how many were not a 200."""
        times, errors = [], 0
        for i in range(n):
            status, _, ms = self.post(SEGMENT, {"image_id": image_id, **click(40 + 12 * i, 60 + 7 * i)})
            times.append(ms)
            errors += status != 200
        return times, errors


class Trickle(BaseHTTPRequestHandler):
    """/trickle-headers: the status line and headers a byte a second; /trickle-body: a 200 kB body at 1 kB/s."""

    def do_GET(self) -> None:
        try:
            if self.path == "/trickle-headers":
                for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n":
                    self.wfile.write(bytes([byte]))
                    time.sleep(1.0)
            else:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 200000\r\n\r\n")
                self.wfile.write(b"\x89PNG\r\n\x1a\n" + bytes(992))
                for _ in range(199):
                    time.sleep(1.0)
                    self.wfile.write(bytes(1000))
        except OSError:
            pass  # the service hung up: what it should do
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def check_auth(url: str) -> None:
    body = {"image_id": "none", **click()}
    missing, wrong = Sam(url, None).post(SEGMENT, body), Sam(url, "not-a-token").post(SEGMENT, body)
    ok = missing[0] == 401 and wrong[0] == 401
    report("1 auth", ok, f"no token -> {brief(missing)}; wrong token -> {brief(wrong)}")


def check_poison(a: Sam, x: bytes, y: bytes, fresh_y: Any) -> None:
    poison = a.post(
        EMBED, {"image": b64(x), "image_id": f"sha256:{hashlib.sha256(y).hexdigest()}", "format": "metadata"}
    )
    refused = 400 <= poison[0] < 500 and isinstance(poison[1], dict) and poison[1].get("field") == "image_id"
    after = a.post(SEGMENT, {"image": b64(y), **click()})
    equal = same_masks(after[1], fresh_y)
    ok = refused and equal
    detail = f"X under sha256(Y) -> {brief(poison)}; Y without id -> {after[0]}, equals fresh Y: {equal}"
    report("2 poisoning id", ok, detail)


def check_reserved(a: Sam, x: bytes) -> None:
    answers = {
        i: a.post(EMBED, {"image": b64(x), "image_id": i, "format": "metadata"})
        for i in ("labelstudio:x", "tenant:bob:x")
    }
    ok = all(400 <= s < 500 for s, _, _ in answers.values())
    report("3 reserved ids", ok, "; ".join(f"{i!r} -> {brief(r)}" for i, r in answers.items()))


def check_other_bytes(a: Sam, x: bytes, y: bytes, fresh_y: Any) -> None:
    embed = a.post(EMBED, {"image": b64(x), "image_id": "mine", "format": "metadata"})
    x_answer = a.post(SEGMENT, {"image_id": "mine", **click()})
    mixed = a.post(SEGMENT, {"image": b64(y), "image_id": "mine", **click()})
    equal_y = same_masks(mixed[1], fresh_y)
    ok = embed[0] == 200 and (mixed[0] == 409 or equal_y)
    detail = (
        f"embed X as 'mine' -> {embed[0]}; Y + 'mine' -> {brief(mixed)}, masks equal fresh Y: {equal_y}, "
        f"equal X: {same_masks(mixed[1], x_answer[1])} (X and Y differ: {not same_masks(x_answer[1], fresh_y)})"
    )
    report("4 id holding other bytes", ok, detail)


def check_tenants(a: Sam, b: Sam, x: bytes, y: bytes, fresh_y: Any) -> None:
    embed_a = a.post(EMBED, {"image": b64(x), "image_id": "shared-name", "format": "metadata"})
    before = a.post(SEGMENT, {"image_id": "shared-name", **click()})
    bob_miss = b.post(SEGMENT, {"image_id": "shared-name", **click()})
    embed_b = b.post(EMBED, {"image": b64(y), "image_id": "shared-name", "format": "metadata"})
    after = a.post(SEGMENT, {"image_id": "shared-name", **click()})
    bob_y = b.post(SEGMENT, {"image_id": "shared-name", **click()})
    ok = embed_a[0] == 200 and before[0] == 200 and bob_miss[0] == 404 and embed_b[0] == 200
    ok = ok and after[0] == 200 and same_masks(after[1], before[1])
    detail = (
        f"alice embeds X -> {embed_a[0]}; bob id-only -> {brief(bob_miss)}; bob embeds Y -> {embed_b[0]}; "
        f"alice after -> {after[0]}, still X: {same_masks(after[1], before[1])}; "
        f"bob gets Y: {same_masks(bob_y[1], fresh_y)}"
    )
    report("5 tenants", ok, detail)


def check_hanging_urls(a: Sam, b: Sam) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    a.clicks("shared-name", 2)  # warm both images' decoder copies
    b.clicks("shared-name", 2)
    idle, idle_errors = a.clicks("shared-name")
    outcomes: list[tuple[str, Answer]] = []

    def hang(path: str) -> None:
        sam, start = a.clone(), time.perf_counter()
        try:
            outcomes.append(
                (
                    path,
                    sam.post(
                        SEGMENT, {"image": {"type": "url", "value": f"http://127.0.0.1:{port}{path}"}, **click()}, 30
                    ),
                )
            )
        except httpx.HTTPError as exc:
            outcomes.append((path, (-1, repr(exc), (time.perf_counter() - start) * 1000)))

    threads = [threading.Thread(target=hang, args=(p,)) for p in ("/trickle-headers", "/trickle-body") * 2]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    beside, beside_errors = b.clicks("shared-name")
    in_flight = sum(t.is_alive() for t in threads)
    for thread in threads:
        thread.join(40)
    server.shutdown()
    urls_ok = len(outcomes) == 4 and all(400 <= s < 500 and ms <= 10_000 for _, (s, _, ms) in outcomes)
    for path, answer in sorted(outcomes):
        print(f"     {path} -> {brief(answer)}")
    med_idle, med_beside = statistics.median(idle), statistics.median(beside)
    p90 = [statistics.quantiles(t, n=10)[-1] for t in (idle, beside)]
    ratio = med_beside / med_idle
    report("6a hanging URLs refused in time", urls_ok, f"{len(outcomes)}/4 answered, all 4xx within 10 s: {urls_ok}")
    ok = ratio <= 1.5 and idle_errors == beside_errors == 0
    detail = (
        f"idle median {med_idle:.1f} ms p90 {p90[0]:.1f} ms; beside 4 hanging URLs ({in_flight} still in flight at "
        f"the end) median {med_beside:.1f} ms p90 {p90[1]:.1f} ms; ratio {ratio:.2f} (<= 1.5); "
        f"errors {idle_errors}/{beside_errors}"
    )
    report("6b clicks beside hanging URLs", ok, detail)


def check_everything_bound(a: Sam, x: bytes) -> None:
    lines, ok = [], True
    for side, layers in ((1024, 2), (128, 2)):
        try:
            answer = a.post(EVERYTHING, {"image": b64(x), "points_per_side": side, "crop_n_layers": layers}, 5.0)
        except httpx.TimeoutException:
            answer = (-1, "no answer within 5 s", 5000.0)
        ok = ok and 400 <= answer[0] < 500 and answer[2] <= 5000
        lines.append(f"points_per_side {side} crop_n_layers {layers} -> {brief(answer)}")
    report("7 unbounded segment everything", ok, "; ".join(lines))


def check_client_leaves(a: Sam) -> None:
    leaver = a.clone()
    try:
        early = leaver.post(EVERYTHING, {"image_id": "shared-name", "points_per_side": 64, "format": "rle"}, 0.5)
        left = f"answered {brief(early)} before the client left (not heavy enough)"
    except httpx.TimeoutException:
        left = "client left after 0.5 s"
    leaver.http.close()
    try:
        after = a.post(SEGMENT, {"image_id": "shared-name", **click()}, 2.0)
    except httpx.TimeoutException:
        after = (-1, "no answer within 2 s", 2000.0)
    ready = httpx.get(f"{a.url}/readyz", timeout=5.0, trust_env=False).status_code
    ok = after[0] == 200 and after[2] <= 2000 and ready == 200
    report("8 client leaves mid-job", ok, f"{left}; click after -> {brief(after)}; /readyz -> {ready}")
    time.sleep(2.0)
    try:
        small = a.post(EVERYTHING, {"image_id": "shared-name", "points_per_side": 4, "format": "rle"}, 120.0)
        print(f"INFO 8 a 16-point run 2 s later (fast if the abandoned run was cancelled) -> {brief(small)}")
    except httpx.TimeoutException:
        print("INFO 8 a 16-point run 2 s later: no answer within 120 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token-a", required=True, help="tenant alice's bearer token")
    parser.add_argument("--token-b", required=True, help="tenant bob's bearer token")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    a, b = Sam(url, args.token_a), Sam(url, args.token_b)
    x, y = png(1), png(2)
    check_auth(url)
    fresh_y = a.post(SEGMENT, {"image": b64(y), "image_id": "fresh-y", **click()})
    if fresh_y[0] != 200:
        report("setup: Y under a fresh id", False, brief(fresh_y))
        return 1
    check_poison(a, x, y, fresh_y[1])
    check_reserved(a, x)
    check_other_bytes(a, x, y, fresh_y[1])
    check_tenants(a, b, x, y, fresh_y[1])
    check_hanging_urls(a, b)
    check_everything_bound(a, x)
    check_client_leaves(a)
    print(f"{sum(RESULTS)}/{len(RESULTS)} checks passed")
    return 0 if all(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
