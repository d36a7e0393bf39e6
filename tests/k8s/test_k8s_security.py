"""The KubeRay manifests' lock-down: every Secret they name is one kustomize makes, every port a pod opens is
covered by a NetworkPolicy rule, Ray's own ports are reachable only from Ray pods (and the KubeRay operator),
Redis only from the app's Ray pods, and k8s/make-secrets.sh writes files the service accepts."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sam_core.settings import Settings
from sam_core.tenants import tenant_tokens
from tests.k8s.test_k8s import K8S_DIR, KUSTOMIZATION, load_documents, manifest_files

# KubeRay adds this label to every pod it makes for a RayCluster; the manifests' templates do not carry it.
RAY_NODE_LABEL = {"ray.io/is-ray-node": "yes"}
# Ray's own ports on the head: GCS, dashboard + job API, Ray client, dashboard agent.
RAY_PRIVATE_PORTS = {6379, 8265, 10001, 52365}
SERVE_PORT = 8000


def objects() -> list[dict[str, Any]]:
    return [obj for path in manifest_files() for obj in load_documents(path)]


def generated_secrets() -> dict[str, set[str]]:
    """Secret name -> its keys, for every Secret kustomize's secretGenerator makes."""
    kustomization = load_documents(KUSTOMIZATION)[0]
    secrets: dict[str, set[str]] = {}
    for generator in kustomization.get("secretGenerator", []):
        keys = {entry.split("=", 1)[0] if "=" in entry else Path(entry).name for entry in generator.get("files", [])}
        keys |= {entry.split("=", 1)[0] for entry in generator.get("literals", [])}
        secrets[generator["name"]] = keys
    return secrets


def all_secrets() -> dict[str, set[str]]:
    secrets = generated_secrets()
    for obj in objects():
        if obj["kind"] == "Secret":
            secrets[obj["metadata"]["name"]] = {*obj.get("data", {}), *obj.get("stringData", {})}
    return secrets


def pod_templates() -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """(name, labels the running pod carries, pod spec) for every pod the manifests make."""
    pods = []
    for obj in objects():
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            template = obj["spec"]["template"]
            pods.append((obj["metadata"]["name"], template["metadata"].get("labels", {}), template["spec"]))
        elif obj["kind"] == "RayService":
            cluster = obj["spec"]["rayClusterConfig"]
            groups = {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}
            for name, group in groups.items():
                labels = {**group["template"]["metadata"].get("labels", {}), **RAY_NODE_LABEL}
                pods.append((f"ray-{name}", labels, group["template"]["spec"]))
    assert pods, "no pod templates found in k8s/"
    return pods


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "the checks here read matchLabels only"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def policies_for(labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        obj
        for obj in objects()
        if obj["kind"] == "NetworkPolicy"
        and "Ingress" in obj["spec"].get("policyTypes", ["Ingress"])
        and selects(obj["spec"]["podSelector"], labels)
    ]


def rules_admitting(labels: dict[str, str], port: int, port_name: str | None) -> list[dict[str, Any]]:
    """The ingress rules of the policies selecting a pod that let traffic to this port in."""
    rules = []
    for policy in policies_for(labels):
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports is None or any(p.get("port") in (port, port_name) for p in ports):
                rules.append(rule)
    return rules


def container_ports(spec: dict[str, Any]) -> list[tuple[int, str | None]]:
    ports = []
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for port in container.get("ports", []):
            ports.append((port["containerPort"], port.get("name")))
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            http = container.get(probe, {}).get("httpGet")
            if http and isinstance(http["port"], int):
                ports.append((http["port"], None))
    return ports


def test_every_secret_reference_names_a_secret_and_key_the_manifests_make() -> None:
    secrets = all_secrets()
    assert {"sam-auth", "sam-redis"} <= secrets.keys()
    references = 0
    for name, _, spec in pod_templates():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    references += 1
                    assert ref["name"] in secrets, f"{name}: env {env['name']} names unknown Secret {ref['name']}"
                    assert ref["key"] in secrets[ref["name"]], f"{name}: Secret {ref['name']} has no key {ref['key']}"
                    assert not ref.get("optional"), f"{name}: env {env['name']} may silently miss its Secret"
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                references += 1
                secret = volume["secret"]["secretName"]
                assert secret in secrets, f"{name}: volume {volume['name']} names unknown Secret {secret}"
    assert references >= 4, "expected the Redis URL on every Ray pod, the password on Redis and the token volume"


def test_the_generated_secrets_keep_their_names_for_the_rayservice() -> None:
    kustomization = load_documents(KUSTOMIZATION)[0]
    assert kustomization.get("generatorOptions", {}).get("disableNameSuffixHash") is True, (
        "the RayService (a custom resource) names its Secrets literally: hash suffixes would break the references"
    )


def test_every_port_of_every_pod_is_covered_by_a_network_policy() -> None:
    for name, labels, spec in pod_templates():
        assert policies_for(labels), f"pod {name} is selected by no NetworkPolicy: every pod may reach it"
        for port, port_name in container_ports(spec):
            assert rules_admitting(labels, port, port_name), (
                f"pod {name}: port {port} ({port_name}) has no NetworkPolicy rule (a probe or a client would fail)"
            )


def _open_to_all(rule: dict[str, Any]) -> bool:
    return "from" not in rule or any(not peer for peer in rule["from"])


def _peers_are(rule: dict[str, Any], allowed: list[dict[str, str]]) -> bool:
    return all(
        any(selects(peer.get("podSelector", {}), labels) for labels in allowed) and peer.get("podSelector")
        for peer in rule["from"]
    )


def test_ray_private_ports_are_reachable_only_from_ray_pods_and_the_operator() -> None:
    ray_pod = {**RAY_NODE_LABEL, "app.kubernetes.io/part-of": "sam-serve"}
    operator = {"app.kubernetes.io/name": "kuberay-operator"}
    checked = 0
    for name, labels, _spec in pod_templates():
        if not name.startswith("ray-"):
            continue
        for port in RAY_PRIVATE_PORTS:
            for rule in rules_admitting(labels, port, None):
                checked += 1
                assert not _open_to_all(rule), f"pod {name}: Ray's port {port} is open to every pod"
                assert _peers_are(rule, [ray_pod, operator]), f"pod {name}: port {port} admits {rule['from']}"
    assert checked, "no rule admits Ray's ports at all: the Ray pods could not talk to each other"


def test_serve_http_is_the_one_port_open_to_everyone() -> None:
    for name, labels, spec in pod_templates():
        for port, port_name in container_ports(spec):
            open_rules = [r for r in rules_admitting(labels, port, port_name) if _open_to_all(r)]
            if port == SERVE_PORT and name.startswith("ray-"):
                assert open_rules, f"pod {name}: Serve's HTTP port is closed to clients"
            else:
                assert not open_rules, f"pod {name}: port {port} is open to every pod of the cluster"


def test_redis_admits_only_the_apps_ray_pods_and_asks_for_a_password() -> None:
    (redis,) = [(n, labels, spec) for n, labels, spec in pod_templates() if n == "sam-redis"]
    _, labels, spec = redis
    rules = rules_admitting(labels, 6379, None)
    assert rules
    for rule in rules:
        assert _peers_are(rule, [{**RAY_NODE_LABEL, "app.kubernetes.io/part-of": "sam-serve"}]), rule
    (container,) = spec["containers"]
    command = " ".join([*container.get("command", []), *container.get("args", [])])
    assert "--requirepass" in command
    assert "$REDIS_PASSWORD" in command
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "sam-redis", "key": "password"}


def test_the_rayservice_requires_auth_from_the_token_secret() -> None:
    (service,) = [obj for obj in objects() if obj["kind"] == "RayService"]
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    settings = Settings(**app["args"])
    assert settings.auth_required is True
    assert settings.auth_tokens_file == Path("/etc/sam-auth/tokens.json")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for c in head["containers"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes[mounts["/etc/sam-auth"]]["secret"]["secretName"] == "sam-auth"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_make_secrets_writes_what_the_generator_reads_and_the_service_accepts(tmp_path: Path) -> None:
    shutil.copy(K8S_DIR / "make-secrets.sh", tmp_path / "make-secrets.sh")
    subprocess.run(["bash", str(tmp_path / "make-secrets.sh"), "alice", "bob"], check=True, capture_output=True)
    secrets_dir = tmp_path / "secrets"
    for name, keys in generated_secrets().items():
        kustomization = load_documents(KUSTOMIZATION)[0]
        (generator,) = [g for g in kustomization["secretGenerator"] if g["name"] == name]
        for entry in generator["files"]:
            path = entry.split("=", 1)[-1]
            assert (tmp_path / path).is_file(), f"make-secrets.sh did not write {path} for Secret {name}"
        assert keys
    tokens = json.loads((secrets_dir / "tokens.json").read_text())
    assert set(tokens) == {"alice", "bob"}
    assert tokens["alice"] != tokens["bob"]
    accepted = tenant_tokens(Settings(auth_tokens_file=secrets_dir / "tokens.json"))
    assert sorted(accepted.values()) == ["alice", "bob"]
    password = (secrets_dir / "redis-password").read_text()
    assert len(password) >= 32
    url = (secrets_dir / "redis-url").read_text()
    assert Settings(redis_url=url).redis_url_value() == f"redis://:{password}@sam-redis:6379/0"
    assert (secrets_dir / "tokens.json").stat().st_mode & 0o077 == 0, "the token file is readable by others"
    # A second run keeps the files: the cluster's tokens do not change under the tenants' feet.
    subprocess.run(["bash", str(tmp_path / "make-secrets.sh")], check=True, capture_output=True)
    assert json.loads((secrets_dir / "tokens.json").read_text()) == tokens
