"""The local cluster deploys serve_config.yaml itself, with only its documented overrides (no root needed)."""

from __future__ import annotations

from pathlib import Path

import yaml
from cluster_config import DEPLOYMENT_OVERRIDES, NODE_RESOURCES, cluster_config

from tests.k8s.test_k8s import differing_paths

REPO = Path(__file__).resolve().parents[2]


def test_the_cluster_config_is_serve_config_with_its_overrides_only() -> None:
    source = REPO / "serve_config.yaml"
    made = cluster_config(
        source, redis_url="redis://10.0.0.20:6379/0", model_type="vit_tiny", checkpoint="/m/t.pth", cache_dir="/m"
    )
    changed = {f".{path}" for path in differing_paths(yaml.safe_load(source.read_text()), made)}
    app = ".applications[sam]"
    args = ("model_type", "checkpoint", "redis_url", "cache_dir", "decoder_threads")
    expected = {f"{app}.args.{name}" for name in args}
    for deployment, (actor, autoscaling) in DEPLOYMENT_OVERRIDES.items():
        expected |= {f"{app}.deployments[{deployment}].ray_actor_options.resources.{r}" for r in actor["resources"]}
        expected |= {f"{app}.deployments[{deployment}].autoscaling_config.{key}" for key in autoscaling}
    assert changed == expected


def test_each_deployment_asks_for_a_resource_only_its_nodes_offer() -> None:
    offered = {role: set(resources) for role, (_, resources) in NODE_RESOURCES.items()}
    for deployment, role in (("SamIngress", "head"), ("SamEncoder", "encoder"), ("SamDecoder", "decoder")):
        (wanted,) = DEPLOYMENT_OVERRIDES[deployment][0]["resources"]
        assert [r for r, names in offered.items() if wanted in names] == [role]
