#!/usr/bin/env python3
"""Independent black-box acceptance check of `scripts/local-cluster.sh` and the service it runs.

Written from the documented interface only (README "Running on a cluster", "HTTP API", "Security";
deployments/METRICS.md; the script's own usage text), without reading the project's Python code.
Standard library only. Run as root from anywhere:

    .venv/bin/python checks/independent_cluster_check.py

It runs its own cluster under SAM_CLUSTER_PREFIX=indc, SAM_CLUSTER_SUBNET=10.88.0 and
SAM_CLUSTER_DIR=/tmp/indc-cluster (so it never touches a cluster with the defaults), and always runs
`down` at the end. Exit status 0 only when every check passes.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "indc"
SUBNET = "10.88.0"
STATE_DIR = "/tmp/indc-cluster"
ENV = dict(os.environ, SAM_CLUSTER_PREFIX=PREFIX, SAM_CLUSTER_SUBNET=SUBNET, SAM_CLUSTER_DIR=STATE_DIR)
HTTP_TIMEOUT = 30.0
T0 = time.monotonic()

RESULTS: list[tuple[str, bool, str]] = []


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def record(name: str, ok: bool, detail: str) -> None:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


# ---------------------------------------------------------------------------------------------- cluster CLI


def cluster(*args: str, timeout: float = 240.0) -> tuple[int, str, str, float]:
    t = time.monotonic()
    p = subprocess.run(
        ["bash", "scripts/local-cluster.sh", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t


def last_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError("no stdout")
    return json.loads(lines[-1])


def status() -> dict:
    rc, out, err, _ = cluster("status", timeout=90)
    if rc != 0:
        raise RuntimeError(f"status rc={rc}: {err[-500:]}")
    return last_json(out)


def replicas_by_deployment(st: dict) -> dict[str, list[str]]:
    """deployment -> list of node names, one entry per running replica."""
    out: dict[str, list[str]] = {}
    for n in st["nodes"]:
        ids = n.get("replica_ids") or {}
        for dep in n.get("replicas") or []:
            count = len(ids.get(dep, [])) or 1
            out.setdefault(dep, []).extend([n["name"]] * count)
    return out


# ---------------------------------------------------------------------------------------------- HTTP


def http(method: str, url: str, body: dict | None = None, timeout: float = HTTP_TIMEOUT):
    """Returns (status, headers, body bytes); status is None on a transport error (body: the error)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
    except Exception as e:  # noqa: BLE001 - a transport error is a result here
        return None, {}, repr(e).encode()


def post(url: str, body: dict, timeout: float = HTTP_TIMEOUT):
    return http("POST", url, body, timeout)


# ---------------------------------------------------------------------------------------------- images


def make_png(w: int, h: int, seed: int) -> bytes:
    """An RGB PNG with a background gradient, a disc, a rectangle and a stripe, varying with seed."""
    cx, cy, rad = 160 + (seed * 37) % 200, 180 + (seed * 17) % 120, 60 + seed % 40
    x0, y0 = 330 + (seed * 13) % 120, 90 + (seed * 7) % 150
    rows = []
    for y in range(h):
        row = bytearray(b"\x00")
        for x in range(w):
            if (x - cx) ** 2 + (y - cy) ** 2 < rad * rad:
                px = (230, 40 + seed % 50, 30)
            elif x0 < x < x0 + 200 and y0 < y < y0 + 160:
                px = (30, 190, 60 + (seed * 3) % 100)
            elif abs((x + 2 * y) % 97 - 48) < 4:
                px = (250, 250, 250)
            else:
                px = ((x + seed * 11) % 256, (y * 2 + seed) % 256, (x ^ y) % 256)
            row += bytes(px)
        rows.append(bytes(row))

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
        + chunk(b"IEND", b"")
    )


def b64_image(seed: int) -> str:
    return base64.b64encode(make_png(640, 480, seed)).decode()


# ---------------------------------------------------------------------------------------------- answers


def answer_key(body: bytes):
    """What must agree between two answers to the same click: masks, low-res masks, scores (not `time`)."""
    d = json.loads(body)
    return d.get("masks"), d.get("low_res_masks"), d.get("scores")


def same_answer(a, b, tol: float = 1e-4) -> tuple[bool, float]:
    if a[0] != b[0] or a[1] != b[1]:
        return False, float("inf")
    sa, sb = a[2] or [], b[2] or []
    if len(sa) != len(sb):
        return False, float("inf")
    diff = max((abs(x - y) for x, y in zip(sa, sb, strict=False)), default=0.0)
    return diff <= tol, diff


def click_body(image_id: str, point: list[int]) -> dict:
    return {"image_id": image_id, "point_coords": [point], "point_labels": [1], "format": "rle"}


# ---------------------------------------------------------------------------------------------- metrics


METRIC_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+([-+0-9.eEinfNa]+)\s*$")


def metric_sum(url: str, name: str, label_filter: dict | None = None) -> float | None:
    status_, _, body = http("GET", url, timeout=15)
    if status_ != 200:
        return None
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        m = METRIC_LINE.match(line)
        if not m or m.group(1) != name:
            continue
        labels = m.group(2) or ""
        if label_filter and not all(f'{k}="{v}"' in labels for k, v in label_filter.items()):
            continue
        total += float(m.group(3))
    return total


def metric_by_label(url: str, name: str, label: str) -> dict[str, float]:
    status_, _, body = http("GET", url, timeout=15)
    out: dict[str, float] = {}
    if status_ != 200:
        return out
    for line in body.decode(errors="replace").splitlines():
        m = METRIC_LINE.match(line)
        if not m or m.group(1) != name:
            continue
        lm = re.search(label + r'="([^"]*)"', m.group(2) or "")
        key = lm.group(1) if lm else ""
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def settled_metric(url: str, name: str, above: float | None = None, quiet_s: float = 12.0, max_s: float = 60.0):
    """Polls until the value (above `above`, if given) has not changed for quiet_s. Returns (value, seconds)."""
    t = time.monotonic()
    last, last_change = None, time.monotonic()
    while time.monotonic() - t < max_s:
        v = metric_sum(url, name)
        if v is not None and v != last:
            last, last_change = v, time.monotonic()
        ready = last is not None and (above is None or last > above)
        if ready and time.monotonic() - last_change >= quiet_s:
            break
        time.sleep(2)
    return last, time.monotonic() - t


# ---------------------------------------------------------------------------------------------- processes


def ns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.strip()]


def links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines() if ":" in ln]


def proc_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def proc_cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def snapshot_cluster_pids(known: dict[int, tuple[str, str]]) -> None:
    """Adds every process in one of our namespaces to known: pid -> (start time, cmdline)."""
    for ns in ns_list():
        if not ns.startswith(PREFIX):
            continue
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        for tok in out.split():
            pid = int(tok)
            st = proc_start(pid)
            if st is not None and pid not in known:
                known[pid] = (st, proc_cmd(pid))


# ---------------------------------------------------------------------------------------------- checks


def check_up(info: dict, up_s: float) -> None:
    nodes = info.get("nodes", [])
    ray_nodes = [n for n in nodes if n.get("role") != "redis"]
    redis_nodes = [n for n in nodes if n.get("role") == "redis"]
    ips = [n["ip"] for n in ray_nodes]
    url = info["url"]
    hs, _, _ = http("GET", url + "/healthz", timeout=15)
    rs, _, rb = http("GET", url + "/readyz", timeout=15)
    ready = rs == 200 and json.loads(rb).get("ready") is True
    # Ray's own view of the nodes (dashboard state API).
    ds, _, db = http("GET", info["dashboard"].rstrip("/") + "/api/v0/nodes", timeout=15)
    alive = []
    if ds == 200:
        try:
            alive = [n["node_ip"] for n in json.loads(db)["data"]["result"]["result"] if n.get("state") == "ALIVE"]
        except (KeyError, ValueError, TypeError):
            alive = []
    # Redis answers PING on its own host.
    m = re.match(r"redis://([^:/]+):(\d+)", info.get("redis", ""))
    pong = b""
    if m:
        try:
            with socket.create_connection((m.group(1), int(m.group(2))), timeout=5) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                pong = s.recv(64)
        except OSError as e:
            pong = repr(e).encode()
    redis_ip = m.group(1) if m else None
    ok = (
        len(ray_nodes) >= 4
        and len(set(ips)) == len(ips)
        and len(redis_nodes) == 1
        and redis_ip not in ips
        and pong.startswith(b"+PONG")
        and hs == 200
        and ready
        and len(set(alive) & set(ips)) >= 4
    )
    record(
        "1 up",
        ok,
        f"up took {up_s:.1f} s; {len(ray_nodes)} Ray nodes {ips} (distinct: {len(set(ips)) == len(ips)}), "
        f"Ray reports {len(alive)} ALIVE {sorted(alive)}; Redis host {redis_ip} PING -> {pong[:20]!r}; "
        f"{url}/healthz {hs}, /readyz {rs} ready={ready}",
    )


def check_placement(st: dict) -> dict[str, list[str]]:
    roles = {n["name"]: n.get("role") for n in st["nodes"]}
    reps = replicas_by_deployment(st)
    enc = reps.get("SamEncoder", [])
    dec = reps.get("SamDecoder", [])
    ing = reps.get("SamIngress", [])
    ok = (
        bool(enc)
        and len(dec) >= 2
        and not (set(enc) & set(dec))
        and all(roles[n] == "decoder" for n in dec)
        and all(roles[n] == "encoder" for n in enc)
        and all(roles[n] == "head" for n in ing)
        and len(set(dec)) >= 2
    )
    record(
        "2 placement",
        ok,
        f"SamEncoder on {enc}, SamDecoder on {dec}, SamIngress on {ing} (roles {roles})",
    )
    return reps


def check_clicks_every_proxy(info: dict, image_id: str, b64: str, point: list[int]):
    url = info["url"]
    t = time.monotonic()
    es, _, eb = post(
        url + "/sam/embed_image",
        {"image": {"type": "base64", "value": b64}, "image_id": image_id, "format": "metadata"},
    )
    embed_s = time.monotonic() - t
    emb = json.loads(eb) if es == 200 else {"error": eb[:300].decode(errors="replace")}
    answers = {}
    times = {}
    for n in info["nodes"]:
        if n.get("role") == "redis":
            continue
        port = url.rsplit(":", 1)[1]
        t = time.monotonic()
        s, h, b = post(f"http://{n['ip']}:{port}/sam/segment_image", click_body(image_id, point))
        times[n["name"]] = time.monotonic() - t
        answers[n["name"]] = (s, answer_key(b) if s == 200 else b[:300], h.get("x-decoder-replica"))
    statuses = {k: v[0] for k, v in answers.items()}
    keys = [v[1] for v in answers.values() if v[0] == 200]
    agree = len(keys) == len(answers) and all(same_answer(keys[0], k)[0] for k in keys)
    nonempty = bool(keys) and bool(keys[0][0])
    ok = es == 200 and emb.get("original_size") == [480, 640] and agree and nonempty
    record(
        "3 embed + click on every proxy",
        ok,
        f"embed {es} in {embed_s:.2f} s (cached={emb.get('cached')}, original_size={emb.get('original_size')}); "
        f"click statuses {statuses}; times "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items())
        + f"; all answers agree: {agree}; decoder replicas {sorted({v[2] for v in answers.values() if v[2]})}",
    )
    return keys[0] if keys else None


def check_single_flight(info: dict, enc_metrics: str, head_metrics: str, seed: int) -> tuple[str, list[int], object]:
    url = info["url"]
    port = url.rsplit(":", 1)[1]
    ips = [n["ip"] for n in info["nodes"] if n.get("role") != "redis"]
    image_id = f"indc-flight-{seed}"
    b64 = b64_image(seed)
    point = [300, 240]
    base, base_s = settled_metric(enc_metrics, "ray_sam_encoder_images_total", quiet_s=12, max_s=45)
    flights_before = metric_by_label(head_metrics, "ray_sam_embed_flights_total", "role")
    log(f"encoder images_total before: {base} (settled in {base_s:.0f} s); flights before {flights_before}")
    body = {"image": {"type": "base64", "value": b64}, "image_id": image_id, **click_body(image_id, point)}
    n_req = 8
    barrier = threading.Barrier(n_req)

    def one(i: int):
        target = f"http://{ips[i % len(ips)]}:{port}/sam/segment_image"
        barrier.wait()
        t = time.monotonic()
        s, h, b = post(target, body)
        return i, target, s, time.monotonic() - t, b, h.get("server-timing", "")

    with concurrent.futures.ThreadPoolExecutor(n_req) as ex:
        res = list(ex.map(one, range(n_req)))
    after, after_s = settled_metric(enc_metrics, "ray_sam_encoder_images_total", above=base, quiet_s=12, max_s=60)
    flights_after = metric_by_label(head_metrics, "ray_sam_embed_flights_total", "role")
    flights_delta = {k: flights_after.get(k, 0) - flights_before.get(k, 0) for k in flights_after}
    flights_delta = {k: v for k, v in flights_delta.items() if v}
    statuses = [r[2] for r in res]
    keys = [answer_key(r[4]) for r in res if r[2] == 200]
    agree = len(keys) == n_req and all(same_answer(keys[0], k)[0] for k in keys)
    delta = (after - base) if (after is not None and base is not None) else None
    waited = sum(1 for r in res if "wait" in r[5])
    with_encoder = sum(1 for r in res if re.search(r"(^|,\s*)encoder;", r[5]))
    ok = delta == 1 and agree
    record(
        "4 single flight across nodes",
        ok,
        f"{n_req} concurrent requests of one new image via {sorted({r[1].split('/')[2] for r in res})}: "
        f"statuses {statuses}, times {min(r[3] for r in res):.2f}-{max(r[3] for r in res):.2f} s; "
        f"encoder images_total {base} -> {after} (delta {delta}, settled {after_s:.0f} s after); "
        f"answers agree: {agree}; ingress flights by role (delta) {flights_delta}; "
        f"Server-Timing with 'encoder' {with_encoder}, with 'wait' {waited}",
    )
    return image_id, point, keys[0] if keys else None


def check_decoder_kill(  # noqa: C901 (a black-box check, read top to bottom)
    info: dict, clicks: list[tuple[str, list[int]]], refs: dict, baseline_decoders: int, victim: str
):
    url = info["url"]
    port = url.rsplit(":", 1)[1]
    node_ip = {n["name"]: n["ip"] for n in info["nodes"]}
    # clients go through the proxies of the nodes that stay up (head, encoder)
    proxies = [f"http://{node_ip['head']}:{port}", f"http://{node_ip['encoder']}:{port}"]
    stop = threading.Event()
    events: list[tuple[float, int | None, bool | None, str, str]] = []  # (t, status, correct, error body, replica)
    lock = threading.Lock()
    kill_at = [None]

    def client(k: int):
        i = k
        while not stop.is_set():
            image_id, point = clicks[i % len(clicks)]
            proxy = proxies[i % len(proxies)]
            i += 4
            s, h, b = post(proxy + "/sam/segment_image", click_body(image_id, point))
            t = time.monotonic()
            if s == 200:
                ok, _ = same_answer(refs[(image_id, tuple(point))], answer_key(b))
                ev = (t, s, ok, "", h.get("x-decoder-replica", ""))
            else:
                ev = (t, s, None, b[:300].decode(errors="replace"), "")
            with lock:
                events.append(ev)

    status_log: list[tuple[float, dict[str, list[str]]]] = []

    def poll_status(until: float):
        while time.monotonic() < until:
            try:
                st = status()
                status_log.append((time.monotonic(), replicas_by_deployment(st)))
            except Exception as e:  # noqa: BLE001
                log(f"status failed during load: {e}")
            time.sleep(2)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    load_start = time.monotonic()
    for th in threads:
        th.start()
    time.sleep(3)
    try:
        at_kill = replicas_by_deployment(status()).get("SamDecoder", [])
    except Exception as e:  # noqa: BLE001
        at_kill = [f"status failed: {e}"]
    kill_at[0] = time.monotonic()
    rc, _out, err, kill_s = cluster("kill", victim, timeout=60)
    log(f"kill {victim}: rc={rc} in {kill_s:.1f} s {err.strip()[-200:]}")
    poller = threading.Thread(target=poll_status, args=(kill_at[0] + 30,), daemon=True)
    poller.start()
    time.sleep(max(0.0, kill_at[0] + 25 - time.monotonic()))
    stop.set()
    for th in threads:
        th.join(timeout=HTTP_TIMEOUT + 5)
    load_end = time.monotonic()
    poller.join(timeout=120)
    ka = kill_at[0]

    # capacity: the first status after the kill with the decoders back at the baseline count, none on the victim
    restored_at = None
    for t, reps in status_log:
        dec = reps.get("SamDecoder", [])
        if len(dec) >= baseline_decoders and victim not in dec:
            restored_at = t
            break
    dec_counts = [
        (round(t - ka, 1), len(r.get("SamDecoder", [])), sorted(set(r.get("SamDecoder", [])))) for t, r in status_log
    ]

    total = len(events)
    ok200 = [e for e in events if e[1] == 200]
    wrong = [e for e in ok200 if not e[2]]
    fails = [e for e in events if e[1] != 200]
    fail_503 = [e for e in fails if e[1] == 503]
    other = [e for e in fails if e[1] != 503]
    window = (min(e[0] for e in fails) - ka, max(e[0] for e in fails) - ka) if fails else None
    bodies: dict[str, int] = {}
    for e in fails:
        bodies[f"{e[1]} {e[3]}"] = bodies.get(f"{e[1]} {e[3]}", 0) + 1
    by_status: dict[str, int] = {}
    for e in events:
        by_status[str(e[1])] = by_status.get(str(e[1]), 0) + 1
    before = [e for e in events if e[0] < ka]
    after = [e for e in events if e[0] >= ka]
    reps_before = sorted({e[4] for e in before if e[4]})
    reps_after = sorted({e[4] for e in after if e[4] and e[0] > ka + 10})
    window_ok = window is None or (window[0] >= -1.0 and window[1] - window[0] <= 15.0 and window[1] <= 20.0)
    capacity_ok = restored_at is not None and restored_at - ka <= 30.0
    ok = total > 0 and not wrong and not other and window_ok and capacity_ok and len(before) > 0 and len(ok200) > 0
    record(
        "5 decoder node killed under load",
        ok,
        f"{total} responses in {load_end - load_start:.1f} s ({len(before)} before the kill, {len(after)} after); "
        f"by status {by_status}; wrong answers {len(wrong)}; failures {len(fails)} "
        f"({len(fail_503)} x 503, {len(other)} other) "
        + (f"from +{window[0]:.1f} s to +{window[1]:.1f} s after the kill; bodies {bodies}; " if window else "; ")
        + f"decoder replicas answering before {reps_before}, from +10 s {reps_after}; "
        f"SamDecoder replicas per status: {baseline_decoders} before the load, {len(at_kill)} at the kill {at_kill}; "
        f"back to {baseline_decoders} (the count before the load), none on {victim}: "
        + (f"+{restored_at - ka:.1f} s after the kill" if restored_at else "NOT within 30 s")
        + f"; status timeline (s after kill, count, nodes) {dec_counts}",
    )
    # a second-by-second view of what came back, for the report
    bins: dict[int, dict[str, int]] = {}
    for e in events:
        b = int((e[0] - ka) // 2) * 2
        bins.setdefault(b, {})
        key = str(e[1]) if e[1] != 200 or e[2] else "200-WRONG"
        bins[b][key] = bins[b].get(key, 0) + 1
    log("responses per 2 s (t since kill): " + "; ".join(f"{k:+d}s {v}" for k, v in sorted(bins.items())))


def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def check_down(info: dict, known_pids: dict[int, tuple[str, str]], down_rc: int, down_s: float, down_err: str) -> None:
    t_down = time.monotonic()

    def alive() -> list[int]:
        return [pid for pid, (st, _) in known_pids.items() if proc_start(pid) == st]

    at_return = alive()
    zombies_at_return = [p for p in at_return if proc_state(p) == "Z"]
    # the processes may take a moment to exit after `down` returns: wait up to 15 s and say how long
    while alive() and time.monotonic() - t_down < 15:
        time.sleep(0.5)
    gone_after = time.monotonic() - t_down
    survivors = [(pid, proc_state(pid), known_pids[pid][1][:100]) for pid in alive()]
    ns_left = [n for n in ns_list() if n.startswith(PREFIX)]
    links_left = [n for n in links() if n.startswith(PREFIX)]
    # Ray temp / session dirs named on the cluster's command lines
    dirs = {STATE_DIR}
    for _, cmd in known_pids.values():
        for m in re.finditer(r"--(?:temp-dir|temp_dir|session-dir|log_dir|logs-dir)=(/\S+)", cmd):
            parts = m.group(1).split("/")
            if len(parts) >= 3:
                dirs.add("/".join(parts[:3]))
    patterns = [(SUBNET + ".").replace(".", "[.]"), *(d.replace(".", "[.]") for d in sorted(dirs))]
    pg = subprocess.run(["pgrep", "-af", "|".join(patterns)], capture_output=True, text=True).stdout
    mine = os.getpid()
    pg_left = [ln[:140] for ln in pg.splitlines() if ln and int(ln.split()[0]) != mine]
    # ports: no host socket listens on the subnet or belongs to a cluster process; no route to the
    # subnet through one of our links; the service's URL no longer gets the service's answer. (A bare TCP
    # connect proves nothing here: this sandbox's egress proxy accepts connections to any address.)
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    known = set(known_pids)
    ss_left = [
        ln.strip()[:160]
        for ln in ss.splitlines()
        if (SUBNET + ".") in ln or any(int(p) in known for p in re.findall(r"pid=(\d+)", ln))
    ]
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    routes_left = [ln for ln in routes.splitlines() if SUBNET + "." in ln or PREFIX in ln]
    hs, hh, hb = http("GET", info["url"] + "/readyz", timeout=5)
    service_answers = hs == 200 and b"ready" in hb
    ok = (
        down_rc == 0
        and not ns_left
        and not links_left
        and not survivors
        and not pg_left
        and not ss_left
        and not routes_left
        and not service_answers
    )
    procs = (
        f"of {len(known_pids)} cluster processes seen, {len(at_return)} still existed when down returned "
        f"({len(zombies_at_return)} of them zombies), "
        + (f"all gone {gone_after:.1f} s after" if not survivors else f"alive 15 s later: {survivors}")
    )
    record(
        "6 down is clean",
        ok,
        f"down rc={down_rc} in {down_s:.1f} s; namespaces left {ns_left}; links left {links_left}; {procs}; "
        f"pgrep -af '{'|'.join(patterns)}' -> {pg_left}; host listeners on {SUBNET}.* or of cluster pids "
        f"{ss_left}; routes to the subnet {routes_left}; GET {info['url']}/readyz -> {hs} "
        f"(server {hh.get('server', '-')}; the service answering: {service_answers})"
        + (f"; down stderr: {down_err[-300:]}" if down_rc != 0 else ""),
    )


# ---------------------------------------------------------------------------------------------- main


def main() -> int:  # noqa: C901 (the checks in order, each guarded)
    if os.geteuid() != 0:
        print("FAIL: must run as root", flush=True)
        return 2
    pre_ns = [n for n in ns_list() if n.startswith(PREFIX)]
    if pre_ns:
        print(f"FAIL: namespaces {pre_ns} exist already; run `down` with the same env first", flush=True)
        return 2
    known_pids: dict[int, tuple[str, str]] = {}
    info: dict | None = None
    seed = int(time.time()) % 100000
    try:
        log("up ...")
        rc, out, err, up_s = cluster("up", timeout=300)
        snapshot_cluster_pids(known_pids)
        if rc != 0:
            record("1 up", False, f"rc={rc} after {up_s:.1f} s; stderr tail: {err[-800:]}")
            return 1
        info = last_json(out)
        log(f"up: {json.dumps(info)}")
        check_up(info, up_s)

        t = time.monotonic()
        st = status()
        log(f"status took {time.monotonic() - t:.1f} s")
        reps = check_placement(st)
        baseline_decoders = len(reps.get("SamDecoder", []))

        # Auth: the local cluster's README names no token; probe that the API is open (a 401 would mean it is not)
        s, _, b = post(info["url"] + "/sam/segment_image", click_body("indc-nothing", [1, 1]))
        log(f"probe click on an unknown id without a token: {s} {b[:200]!r}")

        roles = {n["name"]: n for n in info["nodes"]}
        enc_node = next(n for n in info["nodes"] if n.get("role") == "encoder")
        head_node = next(n for n in info["nodes"] if n.get("role") == "head")

        # 3: one image embedded, clicked through every node's proxy
        id3 = f"indc-img-{seed}-0"
        p3 = [220, 200]
        ref3 = check_clicks_every_proxy(info, id3, b64_image(seed), p3)

        # 4: single flight of a new image across proxies
        id4, _p4, _ref4 = check_single_flight(info, enc_node["metrics"], head_node["metrics"], seed + 1)

        # 5: references for the load's clicks (taken before the kill, through the head's proxy)
        images = [id3, id4]
        for k in (2, 3):
            iid = f"indc-img-{seed}-{k}"
            s, _, b = post(
                info["url"] + "/sam/embed_image",
                {"image": {"type": "base64", "value": b64_image(seed + k)}, "image_id": iid, "format": "metadata"},
            )
            if s != 200:
                log(f"embed of {iid} answered {s} {b[:200]!r}")
            images.append(iid)
        clicks = [(iid, pt) for iid in images for pt in ([220, 200], [420, 170], [100, 400])]
        refs = {}
        for iid, pt in clicks:
            s, _, b = post(info["url"] + "/sam/segment_image", click_body(iid, pt))
            if s == 200:
                refs[(iid, tuple(pt))] = answer_key(b)
            else:
                log(f"reference click {iid} {pt} answered {s} {b[:200]!r}")
        clicks = [c for c in clicks if (c[0], tuple(c[1])) in refs]
        if ref3 is not None and (id3, tuple(p3)) in refs:
            log(f"reference for {id3} {p3} equals check 3's answer: {same_answer(ref3, refs[(id3, tuple(p3))])[0]}")
        snapshot_cluster_pids(known_pids)
        victims = [n for n in ("decoder-1", "decoder-2") if n in reps.get("SamDecoder", [])]
        victim = victims[0] if victims else "decoder-1"
        if not clicks:
            record("5 decoder node killed under load", False, "no reference answers could be taken")
        else:
            log(f"load: {len(clicks)} cached clicks on {len(images)} images, 4 clients; killing {victim} after ~3 s")
            check_decoder_kill(info, clicks, refs, baseline_decoders, victim)
        _ = roles
        return 0
    except Exception as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        record("check script", False, f"aborted: {e!r}")
        return 1
    finally:
        snapshot_cluster_pids(known_pids)
        log("down ...")
        try:
            rc, out, err, down_s = cluster("down", timeout=180)
        except subprocess.TimeoutExpired:
            rc, err, down_s = -1, "down timed out", 180.0
        if info is not None:
            check_down(info, known_pids, rc, down_s, err)
        else:
            left = [n for n in ns_list() if n.startswith(PREFIX)]
            record("6 down is clean", rc == 0 and not left, f"down rc={rc}; namespaces left {left}")


if __name__ == "__main__":
    main()
    total = time.monotonic() - T0
    failed = [r for r in RESULTS if not r[1]]
    print("", flush=True)
    for name, ok, _ in RESULTS:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(f"total run time {total:.1f} s; {len(RESULTS) - len(failed)} passed, {len(failed)} failed", flush=True)
    sys.exit(1 if failed or not RESULTS else 0)
