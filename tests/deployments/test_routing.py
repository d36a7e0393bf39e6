"""Decoders that keep their images: the ingress keys each decoder call by image, and the decoders'
consistent-hash router sends an image's clicks to the replica that holds its decoded copy. Over real HTTP,
with three decoder replicas on Redis; then a replica added and one removed move only their share of images.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from ray import serve

from deployments.app import compose
from tests.conftest import SMALL_REPLICA, ServeApp
from tests.deployments.test_api import image_payload

pytestmark = pytest.mark.slow

NAME = "sam-routing"
IMAGES = 12
CLICKS = 20


# A fixed code version makes a redeploy that changes only num_replicas a scaling of the running deployments,
# as a `serve deploy` of an edited config file is (serve.run gives each run a new random version otherwise,
# which replaces every replica). Serve keeps `version` to its internal options.
FIXED = {**SMALL_REPLICA, "version": "routing-test", "_internal": True}


def deploy(serve_app: ServeApp, decoders: int) -> None:
    decoder = {**FIXED, "num_replicas": decoders, "autoscaling_config": None}
    app = compose(serve_app.settings, encoder_options=FIXED, decoder_options=decoder, ingress_options=FIXED)
    serve.run(app, name=NAME, route_prefix=f"/{NAME}")


@pytest.fixture(scope="module")
def http(serve_app: ServeApp) -> Iterator[httpx.Client]:
    deploy(serve_app, decoders=3)
    try:
        with httpx.Client(base_url=f"{serve_app.url}/{NAME}", timeout=120) as client:
            yield client
    finally:
        serve.delete(NAME)


@pytest.fixture(scope="module")
def image_ids(http: httpx.Client) -> list[str]:
    rng = np.random.default_rng()
    ids = []
    for _ in range(IMAGES):
        pixels = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
        response = http.post("/sam/embed_image", json={"image": image_payload(pixels), "format": "metadata"})
        assert response.status_code == 200, response.text
        ids.append(response.json()["image_id"])
    return ids


def click(http: httpx.Client, image_id: str, x: float = 100.0) -> str:
    body: dict[str, Any] = {"image_id": image_id, "point_coords": [[x, 120.0]], "point_labels": [1], "format": "rle"}
    response = http.post("/sam/segment_image", json=body)
    assert response.status_code == 200, response.text
    return response.headers["X-Decoder-Replica"]


def placement(http: httpx.Client, image_ids: list[str]) -> dict[str, str]:
    return {image_id: click(http, image_id) for image_id in image_ids}


def test_an_images_clicks_stay_on_one_decoder_replica(http: httpx.Client, image_ids: list[str]) -> None:
    """12 images x 20 clicks, the images interleaved as 12 annotators' clicks would be."""
    rng = np.random.default_rng()
    seen: dict[str, list[str]] = {image_id: [] for image_id in image_ids}
    for _ in range(CLICKS):
        for image_id in image_ids:
            seen[image_id].append(click(http, image_id, float(rng.uniform(0, 319))))
    follow_ups = [replica == replicas[0] for replicas in seen.values() for replica in replicas[1:]]
    hit_rate = sum(follow_ups) / len(follow_ups)
    owners = {replicas[0] for replicas in seen.values()}
    print(f"\nclicks after an image's first on its replica: {hit_rate:.1%}; {len(owners)} replicas own images")
    assert hit_rate >= 0.95
    assert len(owners) >= 2, "every image landed on one replica: the images are not spread"


def settled_placement(http: httpx.Client, image_ids: list[str]) -> dict[str, str]:
    """The placement once the ingress's router has learnt of a new replica set (Serve's long poll pushes it
    within about a second): two rounds in a row that agree."""
    time.sleep(3.0)
    last = placement(http, image_ids)
    for _ in range(10):
        current = placement(http, image_ids)
        if current == last:
            return current
        last = current
    raise AssertionError("the placement of images did not settle")


def test_a_replica_added_or_removed_moves_only_its_share(
    serve_app: ServeApp, http: httpx.Client, image_ids: list[str]
) -> None:
    before = settled_placement(http, image_ids)
    deploy(serve_app, decoders=4)
    after = settled_placement(http, image_ids)
    added = set(after.values()) - set(before.values())
    moved = {image_id for image_id in image_ids if after[image_id] != before[image_id]}
    print(f"\n3 -> 4 replicas: {len(moved)} of {IMAGES} images moved, to {len(added)} new replica")
    assert len(added) <= 1
    assert all(after[image_id] in added for image_id in moved), "an image moved between two old replicas"

    deploy(serve_app, decoders=3)
    final = settled_placement(http, image_ids)
    removed = set(after.values()) - set(final.values())
    kept = [image_id for image_id in image_ids if after[image_id] not in removed]
    print(f"4 -> 3 replicas: {len(removed)} owner removed; {len(kept)} images on surviving replicas")
    assert len(set(final.values())) <= 3
    assert all(final[image_id] == after[image_id] for image_id in kept), "an image left a replica that stayed"
