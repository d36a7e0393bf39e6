"""The distributed shape: one embedding per image, follow-up clicks answered by any decoder replica from Redis."""

from __future__ import annotations

import base64
import io
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
from PIL import Image
from ray import serve
from segment_anything import SamPredictor

from sam_core.model.build import LoadedModel
from sam_core.wire.jobs import segment_job
from sam_core.wire.npy import npz_to_segment
from sam_core.wire.schemas import SegmentImageRequest
from tests.conftest import APP_NAME, DECODER_REPLICAS, ServeApp
from tests.deployments.test_api import image_payload

pytestmark = pytest.mark.slow


def png_base64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def encoder_runs() -> int:
    stats: dict[str, int] = serve.get_deployment_handle("SamEncoder", app_name=APP_NAME).stats.remote().result()
    return stats["images_embedded"]


@pytest.fixture
def http(serve_app: ServeApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_app.url, timeout=120) as client:
        yield client


@pytest.fixture
def session_image(tiny_model: LoadedModel) -> tuple[np.ndarray, SamPredictor]:
    """A fresh random image and SamPredictor set on it (the reference answers)."""
    rng = np.random.default_rng()
    height, width = (int(v) for v in rng.integers(200, 600, size=2))
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    predictor = SamPredictor(tiny_model.sam)
    predictor.set_image(pixels)
    return pixels, predictor


def click(
    http: httpx.Client, body: dict[str, Any], predictor: SamPredictor, points: np.ndarray, labels: np.ndarray
) -> str:
    """One click over HTTP (binary masks); asserts it matches SamPredictor; returns the decoder replica id."""
    body = {**body, "point_coords": points.tolist(), "point_labels": labels.tolist(), "format": "binary"}
    response = http.post("/sam/segment_image", json=body)
    assert response.status_code == 200, response.text
    masks, _ = npz_to_segment(response.content)
    # One click + padding: the best of the multimask outputs; more clicks: the single-output token.
    multimask = len(points) == 1
    expected, scores, _ = predictor.predict(points, labels, multimask_output=multimask)
    reference = expected[int(np.argmax(scores))] if multimask else expected[0]
    assert masks.shape == (1, *reference.shape)
    # Follow-ups read the embedding back from the fp16 cache: binary masks agree, logits only to fp16.
    assert iou(masks[0], reference) >= 0.99
    return response.headers["X-Decoder-Replica"]


def random_clicks(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> tuple[np.ndarray, np.ndarray]:
    height, width = shape[:2]
    points = np.stack([rng.integers(0, width, n), rng.integers(0, height, n)], axis=1).astype(float)
    return points, rng.integers(0, 2, n).clip(min=1 if n == 1 else 0)


def first_click(
    http: httpx.Client, session_image: tuple[np.ndarray, SamPredictor], rng: np.random.Generator
) -> tuple[str, str]:
    """A new session: its image sent with one click under a fresh id; the id and the decoder replica that answered."""
    pixels, predictor = session_image
    image_id = f"session-{uuid.uuid4()}"
    first = {"image": {"type": "base64", "value": png_base64(pixels)}, "image_id": image_id}
    return image_id, click(http, first, predictor, *random_clicks(rng, pixels.shape, 1))


def test_twenty_click_session_embeds_once_and_stays_on_one_decoder(
    http: httpx.Client, session_image: tuple[np.ndarray, SamPredictor]
) -> None:
    """The ingress keys decoder calls by image: a session's clicks all land on the replica holding its copy."""
    pixels, predictor = session_image
    rng = np.random.default_rng()
    before = encoder_runs()

    image_id, replica = first_click(http, session_image, rng)
    replicas = [replica]
    for i in range(19):
        replicas.append(click(http, {"image_id": image_id}, predictor, *random_clicks(rng, pixels.shape, 1 + i % 3)))

    assert encoder_runs() - before == 1
    assert len(set(replicas)) == 1, replicas


def test_any_decoder_replica_answers_a_follow_up_from_redis(
    http: httpx.Client, session_image: tuple[np.ndarray, SamPredictor]
) -> None:
    """Decoder calls without an image key (as after a replica's death, or from a caller of the decoder
    deployment itself) spread over the replicas; each reads the embedding from Redis and answers the same."""
    pixels, predictor = session_image
    image_id = f"any-replica-{uuid.uuid4()}"
    embedded = http.post(
        "/sam/embed_image", json={"image": {"type": "base64", "value": png_base64(pixels)}, "image_id": image_id}
    )
    assert embedded.status_code == 200, embedded.text
    decoder = serve.get_deployment_handle("SamDecoder", app_name=APP_NAME)
    points = np.array([[pixels.shape[1] / 3, pixels.shape[0] / 2]])
    request = SegmentImageRequest(image_id=image_id, point_coords=points.tolist(), point_labels=[1], format="binary")
    answers = [decoder.segment.remote(segment_job(request)).result(timeout_s=60) for _ in range(12)]
    assert len({answer.replica for answer in answers}) == DECODER_REPLICAS
    expected, scores, _ = predictor.predict(points, np.array([1]), multimask_output=True)
    reference = expected[int(np.argmax(scores))]
    for answer in answers:
        masks, _ = npz_to_segment(answer.body)
        assert iou(masks[0], reference) >= 0.99


def test_follow_ups_read_only_a_header_from_redis_once_each_replica_holds_a_copy(
    http: httpx.Client, serve_app: ServeApp, session_image: tuple[np.ndarray, SamPredictor]
) -> None:
    import redis

    pixels, predictor = session_image
    image_id = f"copies-{uuid.uuid4()}"
    rng = np.random.default_rng()
    embedded = http.post(
        "/sam/embed_image", json={"image": {"type": "base64", "value": png_base64(pixels)}, "image_id": image_id}
    )
    assert embedded.status_code == 200, embedded.text
    # The image's replica reads the entry in full on its first id-only click and keeps a copy.
    owner = click(http, {"image_id": image_id}, predictor, *random_clicks(rng, pixels.shape, 1))

    client = redis.Redis.from_url(serve_app.redis.url)
    sent_before = int(client.info("stats")["total_net_output_bytes"])
    clicks = 10
    for _ in range(clicks):
        assert click(http, {"image_id": image_id}, predictor, *random_clicks(rng, pixels.shape, 1)) == owner
    per_click = (int(client.info("stats")["total_net_output_bytes"]) - sent_before) / clicks
    # A full read is 2 MiB of embedding; the tag check is a 80-byte header plus replies.
    assert per_click < 2048, f"{per_click:.0f} bytes per click left Redis"


def decoder_replica_actors() -> list[tuple[str, str]]:
    return [
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if "SamDecoder" in actor["name"] and actor["name"].startswith("SERVE_REPLICA")
    ]


def test_killing_a_decoder_replica_keeps_the_session_going_from_the_cache(
    http: httpx.Client, session_image: tuple[np.ndarray, SamPredictor]
) -> None:
    pixels, predictor = session_image
    rng = np.random.default_rng()
    image_id, _ = first_click(http, session_image, rng)
    runs_after_first_click = encoder_runs()
    victims = decoder_replica_actors()
    assert len(victims) == DECODER_REPLICAS

    name, namespace = victims[0]
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    for _ in range(5):
        click(http, {"image_id": image_id}, predictor, *random_clicks(rng, pixels.shape, 2))

    assert encoder_runs() == runs_after_first_click
    # Serve replaces the dead replica by itself.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = decoder_replica_actors()
        if len(current) == DECODER_REPLICAS and victims[0] not in current:
            status = serve.status().applications[APP_NAME].deployments["SamDecoder"].status
            if status == "HEALTHY":
                break
        time.sleep(0.5)
    else:
        pytest.fail("Serve did not replace the killed decoder replica within 120 s")
    click(http, {"image_id": image_id}, predictor, *random_clicks(rng, pixels.shape, 1))


def replica_niceness(app_name: str, deployment: str) -> list[int]:
    """The nice level of each running replica process of a deployment (from /proc: the process names Ray gives
    its replicas)."""
    wanted = f"ray::ServeReplica:{app_name}:{deployment}".encode()
    levels = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes().split(b"\0")[0] == wanted:
                levels.append(os.getpriority(os.PRIO_PROCESS, int(entry.name)))
        except OSError:
            continue
    return levels


def test_the_click_path_runs_at_nice_0_and_the_encoder_at_rays_15(serve_app: ServeApp) -> None:
    """Ray starts workers at nice 15; the ingress and the decoders ask for 0 (their runtime env), so clicks do not
    yield to other processes on the node; the encoder keeps 15 and yields to the clicks."""
    assert replica_niceness(APP_NAME, "SamIngress") == [0]
    assert replica_niceness(APP_NAME, "SamDecoder") == [0] * DECODER_REPLICAS
    assert replica_niceness(APP_NAME, "SamEncoder") == [15]


def test_the_click_path_writes_no_access_log_line_per_request(serve_app: ServeApp) -> None:
    """Ray Serve logs a line per request in each replica unless told not to: the ingress and the decoders are
    (a few ms a click), the encoder is not, so its lines show the logs are where this test looks."""
    rng = np.random.default_rng()
    pixels = rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    image_id = f"access-log-{uuid.uuid4()}"
    body = {"image_id": image_id, "point_coords": [[50.0, 60.0]], "point_labels": [1], "format": "rle"}
    with httpx.Client(base_url=serve_app.url, timeout=60) as http:
        first = {**body, "image": image_payload(pixels)}
        assert http.post("/sam/segment_image", json=first).status_code == 200
        for _ in range(3):
            assert http.post("/sam/segment_image", json=body).status_code == 200
    node = ray._private.worker.global_worker.node
    assert node is not None, "the test session's Ray is running"
    logs = Path(node.get_logs_dir_path()) / "serve"

    def access_lines(deployment: str, marker: str) -> int:
        return sum(p.read_text().count(marker) for p in logs.glob(f"replica_{APP_NAME}_{deployment}_*.log"))

    deadline = time.monotonic() + 10  # the lines are written as the calls end; the others' would be by then
    while access_lines("SamEncoder", "CALL embed OK") == 0:
        assert time.monotonic() < deadline, f"no encoder access line in {logs}"
        time.sleep(0.2)
    assert access_lines("SamIngress", "POST /sam/segment_image") == 0
    assert access_lines("SamDecoder", "CALL segment") == 0


def test_images_arriving_one_by_one_during_a_pass_make_one_batch(serve_app: ServeApp) -> None:
    """Serve forms a batch as soon as its first call has waited `batch_wait_timeout_s`, even while a pass runs; the
    encoder holds calls that arrive during a pass and lets them in together, so a trickle of images (what
    `sam-serve warm`'s workers send, one as each is decoded) is embedded in batches, not one pass each."""
    encoder = serve.get_deployment_handle("SamEncoder", app_name=APP_NAME)
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    images = [rng.integers(0, 256, (683, 1024, 3), dtype=np.uint8) for _ in range(6)]
    encoder.embed.remote(images[0], None).result()
    before = encoder.stats.remote().result()
    responses = []
    for pixels in images:
        responses.append(encoder.embed.remote(pixels, None))
        time.sleep(0.03)  # a vit_tiny pass here takes 100-250 ms
    embeddings = [response.result() for response in responses]
    after = encoder.stats.remote().result()
    assert after["images_embedded"] - before["images_embedded"] == 6
    assert after["batches"] - before["batches"] <= 3, {k: after[k] - before.get(k, 0) for k in after}
    assert all(e.original_size == (683, 1024) for e in embeddings)
