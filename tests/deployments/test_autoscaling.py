"""Decoder replicas follow the load: more replicas under concurrent clicks, back to the minimum when idle."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from ray import serve
from ray.serve.schema import ReplicaState

from sam_core.wire.schemas import EmbedImageRequest, ImagePayload, SegmentImageRequest
from tests.conftest import ServeApp, second_app
from tests.deployments.test_serve import png_base64

pytestmark = pytest.mark.slow

APP = "sam-autoscale"
# Aggressive timings so a test sees a full cycle in about a minute; serve_config.yaml has the production ones.
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 3,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 1,
    "downscale_delay_s": 4,
    "look_back_period_s": 2,
}


def running_decoders() -> int:
    status = serve.status().applications[APP].deployments["SamDecoder"]
    return int(status.replica_states.get(ReplicaState.RUNNING, 0))


@pytest.fixture
def autoscaling_app(serve_app: ServeApp) -> Iterator[Any]:
    """A second application in the same cluster with decoder autoscaling on (same model, cache, Redis)."""
    options = {"autoscaling_config": AUTOSCALING, "max_ongoing_requests": 2}
    with second_app(APP, serve_app.settings, decoder_options=options) as handle:
        yield handle


def test_decoder_replicas_grow_under_load_and_shrink_back(autoscaling_app: Any) -> None:
    rng = np.random.default_rng()
    pixels = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    image_id = f"autoscale-{uuid.uuid4()}"
    embed = EmbedImageRequest(image=ImagePayload(type="base64", value=png_base64(pixels)), image_id=image_id)
    autoscaling_app.embed.remote(embed).result()
    assert running_decoders() == 1

    peak = 1
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and peak < 2:
        # Waves of 16 concurrent clicks: ~8 ongoing per replica against a target of 1.
        clicks = [
            autoscaling_app.segment.remote(
                SegmentImageRequest(image_id=image_id, point_coords=[[float(x), 100.0]], point_labels=[1])
            )
            for x in rng.integers(0, 320, 16)
        ]
        for click in clicks:
            click.result()
        peak = max(peak, running_decoders())
    assert peak >= 2, "decoder replicas did not grow under load within 90 s"

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and running_decoders() > AUTOSCALING["min_replicas"]:
        time.sleep(1)
    assert running_decoders() == AUTOSCALING["min_replicas"], "decoder replicas did not shrink back when idle"
