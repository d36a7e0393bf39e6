"""The local cluster deploys serve_config.yaml itself, with only its documented overrides (no root needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from cluster_config import DEPLOYMENT_OVERRIDES, NODE_RESOURCES, cluster_config

REPO = Path(__file__).resolve().parents[2]


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{path}.{key}").items()}
    if isinstance(value, list):
        named = all(isinstance(item, dict) and "name" in item for item in value)
        return {
            k: v
            for i, item in enumerate(value)
            for k, v in flatten(item, f"{path}[{item['name'] if named else i}]").items()
        }
    return {path: value}


def test_the_cluster_config_is_serve_config_with_its_overrides_only() -> None:
    source = REPO / "serve_config.yaml"
    made = cluster_config(
        source, redis_url="redis://10.0.0.20:6379/0", model_type="vit_tiny", checkpoint="/m/t.pth", cache_dir="/m"
    )
    before, after = flatten(yaml.safe_load(source.read_text())), flatten(made)
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
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
