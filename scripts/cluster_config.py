"""The local cluster's Serve config: serve_config.yaml with the overrides below and nothing else (as KubeRay's is
serve_config.yaml with its production overrides; tests/cluster checks both stay that way).

Placement is by custom resources, as on KubeRay (k8s/rayservice.yaml): only the head offers `sam_ingress`, only
the encoder node `sam_encoder` (it stands for a GPU node: on KubeRay the encoder asks for `num_gpus: 1`), only
the decoder nodes `sam_decoder`, so a replica can land nowhere else whatever starts first.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

# Each node's Ray resources (`ray start --num-cpus --resources`). Logical CPUs: the machine's real cores are
# shared by every node, as in any one-machine test of a cluster.
NODE_RESOURCES: dict[str, tuple[float, dict[str, float]]] = {
    "head": (1, {"sam_ingress": 1}),
    "encoder": (1, {"sam_encoder": 1}),
    "decoder": (2, {"sam_decoder": 2}),
}

# deployment name -> (ray_actor_options overrides, autoscaling_config overrides)
DEPLOYMENT_OVERRIDES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "SamIngress": ({"resources": {"sam_ingress": 1}}, {}),
    "SamEncoder": ({"resources": {"sam_encoder": 1}}, {}),
    # Two decoder replicas at least, one per decoder node (Serve spreads replicas); serve_config's max of 4 is two
    # per node. Target 1 ongoing request and scale-down after 10 s (not 2 and 60): on one 2-core machine the
    # ingress caps how many clicks reach the decoders at once, and a test must see both directions in minutes.
    "SamDecoder": (
        {"resources": {"sam_decoder": 1}},
        {"min_replicas": 2, "target_ongoing_requests": 1, "downscale_delay_s": 10},
    ),
}


def cluster_config(
    source: Path, *, redis_url: str, model_type: str, checkpoint: str, cache_dir: str, decoder_threads: int = 1
) -> dict[str, Any]:
    """serve_config.yaml (`source`) for the local cluster: the cluster's Redis and model, placement by resource.

    `decoder_threads` is pinned (ONNX Runtime would otherwise take every core of the machine in each replica).
    """
    config = yaml.safe_load(source.read_text())
    out = copy.deepcopy(config)
    (app,) = out["applications"]
    app["args"].update(
        {
            "model_type": model_type,
            "checkpoint": checkpoint,
            "redis_url": redis_url,
            "cache_dir": cache_dir,
            "decoder_threads": decoder_threads,
        }
    )
    for deployment in app["deployments"]:
        actor, autoscaling = DEPLOYMENT_OVERRIDES[deployment["name"]]
        deployment.setdefault("ray_actor_options", {}).update(copy.deepcopy(actor))
        if autoscaling:
            deployment["autoscaling_config"].update(autoscaling)
    return out


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
