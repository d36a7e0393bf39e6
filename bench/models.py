"""Several models in one app: what naming a model costs a click, and what a model switch costs when a replica
holds fewer models than are served.

  - vit_tiny, two checkpoints of different seeds, both kept loaded (max_models_per_replica 2), 1 decoder
    replica: follow-up clicks alternating between the models vs the same clicks all on one model, in pairs
    alternated with each other;
  - vit_b (the real ViT-B encoder's load and run), two checkpoints, max_models_per_replica 1: a new image on
    the other model (the encoder unloads one ViT-B and loads the other) vs a new image on the loaded model, the
    first click after a switch (the decoder replica loads the other model's ONNX sessions) vs a click with the
    model loaded, and each replica's RSS holding one vit_b against two (max_models_per_replica 2).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Bench, Report, Row, image_base64, median, ms, sample_image

SEGMENT = "/sam/segment_image"
EMBED = "/sam/embed_image"
CLICK = [[700.0, 900.0]]


def _two_models(bench: Bench, model_type: str) -> list[dict[str, str]]:
    from sam_core.model.build import make_random_checkpoint

    other, _ = make_random_checkpoint(model_type, bench.work / f"{model_type}-seed1.pth", seed=1)
    return [
        {"id": f"{model_type}-a", "model_type": model_type, "checkpoint": str(bench.checkpoint(model_type))},
        {"id": f"{model_type}-b", "model_type": model_type, "checkpoint": str(other)},
    ]


def _export_decoders(bench: Bench, specs: list[dict[str, str]]) -> None:
    from sam_core.services.configured import open_decoder

    for spec in specs:
        settings = bench.settings(spec["model_type"], models=specs).for_model(spec["id"])
        open_decoder(settings, threads=1)


def _timed(client: httpx.Client, route: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    client.post(route, json=body).raise_for_status()
    return time.perf_counter() - started


def _stats(deployment: str) -> dict[str, Any]:
    from ray import serve

    stats: dict[str, Any] = serve.get_deployment_handle(deployment, app_name="sam").stats.remote().result()
    return stats


def several_models(bench: Bench, report: Report, clicks: int = 100) -> None:
    print(f"[19] several models: {clicks} clicks alternating two vit_tiny models vs one; vit_b switches", flush=True)
    tiny = _two_models(bench, "vit_tiny")
    bench.deploy("vit_tiny", decoders=1, decoder_threads=2, models=tiny, max_models_per_replica=2)
    image = {"type": "base64", "value": image_base64(sample_image(3), "JPEG")}
    ids = [spec["id"] for spec in tiny]
    alternating, single = [], []
    with httpx.Client(base_url=bench.base_url, timeout=300) as client:
        for model in ids:
            client.post(EMBED, json={"image": image, "image_id": "models", "model": model, "format": "metadata"})
        click = {"image_id": "models", "point_coords": CLICK, "point_labels": [1]}
        for _ in range(5):
            for model in ids:
                _timed(client, SEGMENT, {**click, "model": model})
        for _ in range(clicks // 2):
            alternating += [_timed(client, SEGMENT, {**click, "model": model}) for model in ids]
            single += [_timed(client, SEGMENT, {**click, "model": ids[0]}) for _ in ids]
    report.add(
        Row(
            "follow-up click p50, alternating between 2 served models (vit_tiny, both loaded, 1 decoder replica)",
            ms(median(alternating)),
            f"{ms(median(single))} with every click on one model",
            median(alternating) / median(single),
            notes=[f"{len(alternating)} clicks each side, in pairs alternated with each other; json polygons"],
        )
    )

    big = _two_models(bench, "vit_b")
    a, b = (spec["id"] for spec in big)
    _export_decoders(bench, big)  # as the KubeRay initContainers do: a switch then loads, never exports
    bench.deploy("vit_b", decoders=1, decoder_threads=2, models=big, max_models_per_replica=1)
    images = [{"type": "base64", "value": image_base64(sample_image(20 + i), "JPEG")} for i in range(4)]
    with httpx.Client(base_url=bench.base_url, timeout=600) as client:
        embed = {"format": "metadata"}
        loaded_a = _timed(client, EMBED, {**embed, "image": images[0], "image_id": "m0", "model": a})
        click_a = [_timed(client, SEGMENT, {"image_id": "m0", "model": a, "point_coords": CLICK}) for _ in range(5)]
        one_encoder, one_decoder = _stats("SamEncoder")["rss_bytes"], _stats("SamDecoder")["rss_bytes"]
        switch_b = _timed(client, EMBED, {**embed, "image": images[1], "image_id": "m1", "model": b})
        click_b = [_timed(client, SEGMENT, {"image_id": "m1", "model": b, "point_coords": CLICK}) for _ in range(5)]
        # Back to the first model's image: the decoder replica unloads b and loads a again (the ingress knows a's
        # identity already, so nothing else loads it first; the embedding is in Redis and in the local copies).
        switch_click = _timed(client, SEGMENT, {"image_id": "m0", "model": a, "point_coords": CLICK})
        loaded_b = _timed(client, EMBED, {**embed, "image": images[2], "image_id": "m2", "model": b})
        switched_encoder = _stats("SamEncoder")["rss_bytes"]
    loaded = median([loaded_a, loaded_b])
    report.add(
        Row(
            "new 1500x2250 image on the other model, max_models_per_replica 1 (vit_b: one ViT-B out, the other in)",
            f"{switch_b:.2f} s",
            f"{loaded:.2f} s on the loaded model",
            switch_b / loaded,
            notes=[f"on the loaded model: {loaded_a:.2f} s ({a}), {loaded_b:.2f} s ({b})"],
        )
    )
    report.add(
        Row(
            "click that switches a decoder replica's model, max_models_per_replica 1 (vit_b: one out, the other in)",
            ms(switch_click),
            f"{ms(median(click_a + click_b))} p50 with the model loaded",
            switch_click / median(click_a + click_b),
        )
    )

    bench.deploy("vit_b", decoders=1, decoder_threads=2, models=big, max_models_per_replica=2)
    with httpx.Client(base_url=bench.base_url, timeout=600) as client:
        for model in (a, b):
            client.post(EMBED, json={"image": images[3], "model": model, "format": "metadata"}).raise_for_status()
            client.post(SEGMENT, json={"image": images[3], "model": model, "point_coords": CLICK}).raise_for_status()
        two_encoder, two_decoder = _stats("SamEncoder")["rss_bytes"], _stats("SamDecoder")["rss_bytes"]
    report.add(
        Row(
            "encoder replica RSS holding two vit_b models (max_models_per_replica 2)",
            f"{two_encoder / 2**20:.0f} MiB",
            f"{one_encoder / 2**20:.0f} MiB holding one",
            two_encoder / one_encoder,
            notes=[
                f"decoder replica: {two_decoder / 2**20:.0f} MiB with two vs {one_decoder / 2**20:.0f} MiB with one",
                f"encoder with max 1, after switching to the other model: {switched_encoder / 2**20:.0f} MiB",
            ],
        )
    )
