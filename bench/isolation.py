"""Black-box acceptance checks of a running sam-serve app: tenants, image-id namespaces, hanging URLs, bounds.

Written from the README's HTTP API and Hardening sections only: HTTP (httpx), numpy and Pillow, none of the
project's packages (isolation_client.py, the tenant's client, keeps the same rule). The service must run with
two tenants and URL images on, private addresses allowed (the checks start their own trickling HTTP server on
127.0.0.1) and a 5 s URL deadline:

    SAM_AUTH_TOKENS='{"alice": "<A>", "bob": "<B>"}' SAM_IMAGE_ALLOW_URL=true SAM_IMAGE_ALLOW_PRIVATE_URLS=true \\
        SAM_IMAGE_URL_TIMEOUT_S=5 .venv/bin/sam-serve run --model-type vit_tiny --random-weights --port 8123

then, once it prints "ready at":

    .venv/bin/python bench/isolation.py --url http://127.0.0.1:8123 --token-a <A> --token-b <B>

It prints one line per check (PASS/FAIL with statuses and timings) and exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from isolation_client import EMBED, EVERYTHING, SEGMENT, Answer, Sam, b64, brief, click, png, same_masks

RESULTS: list[bool] = []


def report(name: str, ok: bool, *facts: str) -> None:
    """One check's verdict, with what it saw (facts joined by "; ")."""
    RESULTS.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {name}: {'; '.join(facts)}", flush=True)


def spread(times: list[float]) -> str:
    return f"median {statistics.median(times):.1f} ms p90 {statistics.quantiles(times, n=10)[-1]:.1f} ms"


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
    report("1 auth", ok, f"no token -> {brief(missing)}", f"wrong token -> {brief(wrong)}")


def check_poison(a: Sam, x: bytes, y: bytes, fresh_y: Any) -> None:
    poison = a.post(
        EMBED, {"image": b64(x), "image_id": f"sha256:{hashlib.sha256(y).hexdigest()}", "format": "metadata"}
    )
    refused = 400 <= poison[0] < 500 and isinstance(poison[1], dict) and poison[1].get("field") == "image_id"
    after = a.post(SEGMENT, {"image": b64(y), **click()})
    equal = same_masks(after[1], fresh_y)
    ok = refused and equal
    report(
        "2 poisoning id",
        ok,
        f"X under sha256(Y) -> {brief(poison)}",
        f"Y without id -> {after[0]}, equals fresh Y: {equal}",
    )


def check_reserved(a: Sam, x: bytes) -> None:
    answers = {
        i: a.post(EMBED, {"image": b64(x), "image_id": i, "format": "metadata"})
        for i in ("labelstudio:x", "tenant:bob:x")
    }
    ok = all(400 <= s < 500 for s, _, _ in answers.values())
    report("3 reserved ids", ok, *(f"{i!r} -> {brief(r)}" for i, r in answers.items()))


def check_other_bytes(a: Sam, x: bytes, y: bytes, fresh_y: Any) -> None:
    embed = a.post(EMBED, {"image": b64(x), "image_id": "mine", "format": "metadata"})
    x_answer = a.post(SEGMENT, {"image_id": "mine", **click()})
    mixed = a.post(SEGMENT, {"image": b64(y), "image_id": "mine", **click()})
    equal_y = same_masks(mixed[1], fresh_y)
    ok = embed[0] == 200 and (mixed[0] == 409 or equal_y)
    x_and_y_differ = not same_masks(x_answer[1], fresh_y)
    mixed_fact = f"Y + 'mine' -> {brief(mixed)}, masks equal fresh Y: {equal_y}, equal X: "
    mixed_fact += f"{same_masks(mixed[1], x_answer[1])} (X and Y differ: {x_and_y_differ})"
    report("4 id holding other bytes", ok, f"embed X as 'mine' -> {embed[0]}", mixed_fact)


def check_tenants(a: Sam, b: Sam, x: bytes, y: bytes, fresh_y: Any) -> None:
    embed_a = a.post(EMBED, {"image": b64(x), "image_id": "shared-name", "format": "metadata"})
    before = a.post(SEGMENT, {"image_id": "shared-name", **click()})
    bob_miss = b.post(SEGMENT, {"image_id": "shared-name", **click()})
    embed_b = b.post(EMBED, {"image": b64(y), "image_id": "shared-name", "format": "metadata"})
    after = a.post(SEGMENT, {"image_id": "shared-name", **click()})
    bob_y = b.post(SEGMENT, {"image_id": "shared-name", **click()})
    still_x = same_masks(after[1], before[1])
    ok = embed_a[0] == 200 and before[0] == 200 and bob_miss[0] == 404 and embed_b[0] == 200
    ok = ok and after[0] == 200 and still_x
    report(
        "5 tenants",
        ok,
        f"alice embeds X -> {embed_a[0]}",
        f"bob id-only -> {brief(bob_miss)}",
        f"bob embeds Y -> {embed_b[0]}",
        f"alice after -> {after[0]}, still X: {still_x}",
        f"bob gets Y: {same_masks(bob_y[1], fresh_y)}",
    )


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
        body = {"image": {"type": "url", "value": f"http://127.0.0.1:{port}{path}"}, **click()}
        try:
            outcomes.append((path, sam.post(SEGMENT, body, 30)))
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
    report("6a hanging URLs refused in time", urls_ok, f"{len(outcomes)}/4 answered, all 4xx within 10 s: {urls_ok}")
    ratio = statistics.median(beside) / statistics.median(idle)
    ok = ratio <= 1.5 and idle_errors == beside_errors == 0
    beside_fact = f"beside 4 hanging URLs ({in_flight} still in flight at the end) {spread(beside)}"
    errors = f"errors {idle_errors}/{beside_errors}"
    report(
        "6b clicks beside hanging URLs", ok, f"idle {spread(idle)}", beside_fact, f"ratio {ratio:.2f} (<= 1.5)", errors
    )


def check_everything_bound(a: Sam, x: bytes) -> None:
    lines, ok = [], True
    for side, layers in ((1024, 2), (128, 2)):
        answer = a.answer_within(EVERYTHING, {"image": b64(x), "points_per_side": side, "crop_n_layers": layers}, 5.0)
        ok = ok and 400 <= answer[0] < 500 and answer[2] <= 5000
        lines.append(f"points_per_side {side} crop_n_layers {layers} -> {brief(answer)}")
    report("7 unbounded segment everything", ok, *lines)


def check_client_leaves(a: Sam) -> None:
    leaver = a.clone()
    try:
        early = leaver.post(EVERYTHING, {"image_id": "shared-name", "points_per_side": 64, "format": "rle"}, 0.5)
        left = f"answered {brief(early)} before the client left (not heavy enough)"
    except httpx.TimeoutException:
        left = "client left after 0.5 s"
    leaver.http.close()
    after = a.answer_within(SEGMENT, {"image_id": "shared-name", **click()}, 2.0)
    ready = httpx.get(f"{a.url}/readyz", timeout=5.0, trust_env=False).status_code
    ok = after[0] == 200 and after[2] <= 2000 and ready == 200
    report("8 client leaves mid-job", ok, left, f"click after -> {brief(after)}", f"/readyz -> {ready}")
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
