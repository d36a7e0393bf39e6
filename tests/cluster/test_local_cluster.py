"""The service on a real multi-node Ray cluster (scripts/local-cluster.sh): placement, cross-node answers, single
flight across nodes, a decoder node and the encoder node killed, the Redis host cut off, a rolling update and
decoder autoscaling. The tests share one cluster and run in file order; each leaves it whole for the next."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.cluster.conftest import Cluster, answer, click_body, png_base64

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RNG = np.random.default_rng(2026)


def embed(client: httpx.Client, image: str, image_id: str) -> httpx.Response:
    return client.post("/sam/embed_image", json={"image": {"type": "base64", "value": image}, "image_id": image_id})


def new_image(client: httpx.Client) -> tuple[str, str, Any]:
    """A fresh image embedded under a fresh id: (id, base64 image, the reference answer to click_body)."""
    image, image_id = png_base64(RNG), f"cluster-{uuid.uuid4()}"
    assert embed(client, image, image_id).status_code == 200
    reference = client.post("/sam/segment_image", json=click_body(image_id))
    assert reference.status_code == 200, reference.text
    return image_id, image, answer(reference)


@contextmanager
def load(
    url: str, clients: int, work: Callable[[httpx.Client, int], tuple[Any, ...]]
) -> Iterator[list[tuple[Any, ...]]]:
    """`clients` threads calling `work(client, i)` in a loop while the block runs; yields the growing list of
    (started at, seconds, *what work returned)."""
    results: list[tuple[Any, ...]] = []
    stop = threading.Event()

    def loop(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                started = time.monotonic()
                outcome = work(client, i)
                results.append((started, time.monotonic() - started, *outcome))

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)


def clicker(sessions: list[tuple[str, str, Any]]) -> Callable[[httpx.Client, int], tuple[Any, ...]]:
    """Clicks by id on session `i % len`: (status, error name or None, whether a 200 equals the reference)."""

    def work(client: httpx.Client, i: int) -> tuple[Any, ...]:
        image_id, _, reference = sessions[i % len(sessions)]
        try:
            response = client.post("/sam/segment_image", json=click_body(image_id))
        except httpx.HTTPError as exc:
            return (type(exc).__name__, None, False)
        if response.status_code != 200:
            return (response.status_code, response.json().get("error"), False)
        return (200, None, answer(response) == reference)

    return work


@pytest.fixture(scope="module")
def http(cluster: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url, timeout=60) as client:
        yield client


def test_each_role_on_its_own_node(cluster: Cluster) -> None:
    nodes = cluster.status()["nodes"]
    ray_nodes = [node for node in nodes if node["role"] != "redis"]
    assert len(ray_nodes) >= 4
    assert len({node["ip"] for node in nodes}) == len(nodes), "every host has its own IP"
    placed = {node["name"]: node["replicas"] for node in nodes}
    assert placed == {
        "head": ["SamIngress"],
        "encoder": ["SamEncoder"],
        "decoder-1": ["SamDecoder"],
        "decoder-2": ["SamDecoder"],
        "redis": [],
    }


def test_a_cached_click_is_answered_by_a_decoder_on_another_node(cluster: Cluster, http: httpx.Client) -> None:
    """Embedded on the encoder node, stored in Redis on its own host, decoded on a decoder node, asked through the
    proxy of yet another node: every proxy gives the same answer."""
    image_id, _, reference = new_image(http)
    decoders = cluster.replicas("SamDecoder")
    on_node = {replica: node for node, replicas in decoders.items() for replica in replicas}
    for node in cluster.status()["nodes"]:
        if node["role"] == "redis":
            continue
        response = httpx.post(f"http://{node['ip']}:8000/sam/segment_image", json=click_body(image_id), timeout=60)
        assert response.status_code == 200, response.text
        assert answer(response) == reference
        assert on_node[response.headers["X-Decoder-Replica"]].startswith("decoder-")


def test_one_encoder_run_for_one_image_sent_through_every_node(cluster: Cluster) -> None:
    image = png_base64(RNG, (480, 640))
    before = cluster.encoder_runs()
    proxies = [node["ip"] for node in cluster.status()["nodes"] if node["role"] != "redis"]

    def send(ip: str) -> httpx.Response:
        body = {"image": {"type": "base64", "value": image}}
        return httpx.post(f"http://{ip}:8000/sam/embed_image", json=body, timeout=60)

    with ThreadPoolExecutor(len(proxies)) as pool:
        responses = list(pool.map(send, proxies))
    assert [r.status_code for r in responses] == [200] * len(proxies)
    assert len({r.json()["image_id"] for r in responses}) == 1
    cluster.wait("the encoder's metrics", lambda: cluster.encoder_runs() > before, 20)
    time.sleep(3)  # a second run would show within the metrics' 1 s refresh
    assert cluster.encoder_runs() - before == 1


def test_warm_decodes_on_the_cpu_nodes_and_the_encoder_batches(cluster: Cluster, tmp_path: Path) -> None:
    """`sam-serve warm` run on the head (a driver on the cluster): its Ray Data actors decode and resize on nodes
    with CPUs to spare, never the encoder's, and the encoder embeds what they send in batches larger than 1."""
    count = 16
    for index in range(count):
        Image.fromarray(RNG.integers(0, 256, (1500, 2250, 3), dtype=np.uint8)).save(tmp_path / f"{index}.jpg")
    runs, images = cluster.encoder_runs(), cluster.encoder_metric("ray_sam_encoder_images_total")
    started = time.monotonic()
    out = cluster.run("exec", "head", "sam-serve", "warm", str(tmp_path), "--no-progress", timeout_s=300)
    seconds = time.monotonic() - started
    assert re.search(rf"warmed {count} images in [\d.]+ s .*: {count} embedded, 0 already cached, 0 failed", out), out
    cluster.wait(
        "the encoder's metrics", lambda: cluster.encoder_metric("ray_sam_encoder_images_total") >= images + count, 20
    )
    batches = cluster.encoder_runs() - runs
    rate = f"{count / seconds:.2f} images/s, one encoder replica"
    print(f"warm: {count} images in {seconds:.1f} s ({rate}), {batches:.0f} encoder batches")
    assert batches < count, "the encoder saw batches larger than 1"
    workers = cluster.actor_nodes("MapWorker(MapBatches(WarmImages))")
    assert workers, "the job's actors are listed"
    assert "encoder" not in workers, workers

    again = cluster.run("exec", "head", "sam-serve", "warm", str(tmp_path), "--no-progress", timeout_s=300)
    assert f"0 embedded, {count} already cached" in again, again


def test_a_decoder_node_killed_under_load(cluster: Cluster, http: httpx.Client) -> None:
    """No wrong answer; only requests in flight may fail (503 ReplicaUnavailable); two decoder replicas again
    within 30 s."""
    sessions = [new_image(http) for _ in range(4)]
    with load(cluster.url, 4, clicker(sessions)) as results:
        time.sleep(3)
        killed_at = time.monotonic()
        cluster.run("kill", "decoder-1")
        dead_s = cluster.wait("decoder-1 declared dead", lambda: "decoder-1" not in cluster.replicas("SamDecoder"), 30)
        cluster.wait("two decoder replicas", lambda: sum(map(len, cluster.replicas("SamDecoder").values())) == 2, 30)
        back_s = time.monotonic() - killed_at
        time.sleep(6)
    print(f"decoder node killed: declared dead {dead_s:.1f} s, 2 replicas {back_s:.1f} s after; {len(results)} clicks")
    assert back_s < 30
    assert all(ok for _, _, status, _, ok in results if status == 200), "a wrong answer"
    failed = [(started - killed_at, status, error) for started, _, status, error, _ in results if status != 200]
    assert all(error == "ReplicaUnavailable" and -1 < at < 5 for at, _, error in failed), failed
    assert sum(1 for started, *_ in results if started > killed_at + 5) > 20, "clicks went on"
    assert "decoder-1" not in cluster.replicas("SamDecoder")
    cluster.run("start", "decoder-1")  # returns once the node has joined


def test_the_encoder_node_killed(cluster: Cluster, http: httpx.Client) -> None:
    """Cold requests get 503 + Retry-After at once; cached clicks go on; the encoder is back once its node is."""
    image_id, _, reference = new_image(http)
    cluster.run("kill", "encoder")
    killed_at = time.monotonic()
    cold: list[tuple[float, httpx.Response]] = []
    while time.monotonic() - killed_at < 15:
        started = time.monotonic()
        response = embed(http, png_base64(RNG), f"cold-{uuid.uuid4()}")
        cold.append((time.monotonic() - started, response))
        click = http.post("/sam/segment_image", json=click_body(image_id))
        assert click.status_code == 200
        assert answer(click) == reference
    statuses = [(round(seconds, 2), r.status_code, r.headers.get("Retry-After")) for seconds, r in cold]
    print(f"encoder node killed: cold requests {statuses[:4]} ... ({len(statuses)})")
    assert all(r.status_code == 503 and r.json()["error"] == "EncoderUnavailable" for _, r in cold)
    assert all(r.headers.get("Retry-After") for _, r in cold)
    assert cold[0][0] < 10, statuses
    assert all(seconds < 1.0 for seconds, _ in cold[1:]), statuses
    cluster.run("start", "encoder")
    cluster.wait(
        "a cold request embedded", lambda: embed(http, png_base64(RNG), f"w-{uuid.uuid4()}").status_code == 200, 90
    )


def test_the_redis_host_cut_off_for_10_s(cluster: Cluster, http: httpx.Client) -> None:
    """Nothing waits on the cut Redis past its timeout, and after the first timeout nothing waits on it at all
    (the cache's breaker); images sent are still answered; after heal the cached answers are the same, and an
    image sent during the cut is never answered for another."""
    image_id, image, reference = new_image(http)
    other_id, other_image = f"cut-{uuid.uuid4()}", png_base64(RNG)
    timeout_s = cluster.config()["applications"][0]["args"]["cache_timeout_s"]
    cluster.run("cut", "redis")
    by_id, with_image = [], []
    cut_at = time.monotonic()
    while time.monotonic() - cut_at < 10:
        started = time.monotonic()
        response = http.post("/sam/segment_image", json=click_body(image_id))
        by_id.append((time.monotonic() - started, response.status_code, response.json().get("error")))
        started = time.monotonic()
        sent = {"type": "base64", "value": other_image}
        response = http.post("/sam/segment_image", json=click_body(other_id, image=sent))
        with_image.append((time.monotonic() - started, response.status_code))
    cluster.run("heal", "redis")
    seen = [(round(s, 2), c) for s, c, _ in by_id], [(round(s, 2), c) for s, c in with_image]
    print(f"redis cut: by id {seen[0]}; with image {seen[1]}")
    assert all(code == 503 and error == "CacheUnavailable" for _, code, error in by_id)
    assert max(seconds for seconds, *_ in by_id) < 2 * timeout_s + 0.5
    # The first timeout opened each process's breaker: later calls fail at once, not after a deadline each.
    assert max(seconds for seconds, *_ in by_id[1:]) < 0.25
    assert all(code == 200 for _, code in with_image)
    assert sorted(seconds for seconds, _ in with_image)[len(with_image) // 2] < 2 * timeout_s
    cluster.wait(
        "answers by id", lambda: http.post("/sam/segment_image", json=click_body(image_id)).status_code == 200, 10
    )
    assert answer(http.post("/sam/segment_image", json=click_body(image_id))) == reference
    later = http.post("/sam/segment_image", json=click_body(other_id))
    assert later.status_code in (200, 404)
    if later.status_code == 200:
        fresh = http.post(
            "/sam/segment_image", json=click_body(other_id, image={"type": "base64", "value": other_image})
        )
        assert answer(later) == answer(fresh)
    assert image != other_image


def test_a_rolling_update_under_4_clients_fails_nothing(cluster: Cluster, http: httpx.Client) -> None:
    config = cluster.config()
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "SamDecoder":
            deployment["autoscaling_config"]["min_replicas"] = 3
        if deployment["name"] == "SamEncoder":
            deployment["user_config"]["max_batch_size"] = 2
    changed = cluster.info["config"].replace(".yaml", "-changed.yaml")
    with open(changed, "w") as out:
        yaml.safe_dump(config, out)
    sessions = [new_image(http) for _ in range(4)]
    with load(cluster.url, 4, clicker(sessions)) as results:
        time.sleep(2)
        cluster.run("deploy", changed)
        # At least 3: under 4 clients the autoscaler may already have gone to its max of 4.
        cluster.wait("three decoders", lambda: sum(map(len, cluster.replicas("SamDecoder").values())) >= 3, 60)
        time.sleep(2)
    assert len(results) > 20
    assert [r for r in results if r[2] != 200 or not r[4]] == []
    cluster.run("deploy")  # back to the cluster's own config


def test_decoders_scale_up_under_load_and_down_after(cluster: Cluster, http: httpx.Client) -> None:
    sessions = [new_image(http) for _ in range(8)]
    counts: list[tuple[float, int]] = []
    started = time.monotonic()

    def count() -> int:
        replicas = sum(map(len, cluster.replicas("SamDecoder").values()))
        counts.append((round(time.monotonic() - started, 1), replicas))
        return replicas

    cluster.wait("two decoders before the load", lambda: count() == 2, 90)
    with load(cluster.url, 8, clicker(sessions)) as results:
        cluster.wait("more decoders under load", lambda: count() > 2, 150)
        time.sleep(5)
        count()
    loaded = time.monotonic()
    cluster.wait("decoders back to 2", lambda: count() == 2, 90)
    print(f"decoder replicas over time (s, replicas): {counts}; back to 2 {time.monotonic() - loaded:.0f} s after")
    assert all(r[2] == 200 and r[4] for r in results)
