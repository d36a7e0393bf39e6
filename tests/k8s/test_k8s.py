"""The cluster manifests (k8s/) and the Dockerfile, checked without a cluster or a Docker engine.

KubeRay objects are validated against the operator's CRD schemas closed the way `kubectl apply --validate=strict`
closes them, core objects with kubernetes-validate in strict mode, both Serve configs against Ray Serve's schema
(plus the keys it would silently ignore); serveConfigV2 must equal serve_config.yaml except for the production
overrides listed below, and the image, Ray and Python versions must equal the installed ones.
"""

from __future__ import annotations

import copy
import math
import re
import sys
import typing
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from sam_core.settings import ImageLimits, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "k8s"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
SERVE_CONFIG = REPO_ROOT / "serve_config.yaml"
# KubeRay's CRDs, kept with the tests (source, version and licence in its README.md).
SCHEMAS_DIR = Path(__file__).resolve().parent / "kuberay_crds"
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
KUBERNETES_VERSION = "1.30"
SAM_IMAGE = "sam-serve"  # the image name in the manifests; kustomization.yaml's `images:` points it at a registry

APP = "applications[sam]"
# The only places where the RayService's serveConfigV2 may differ from serve_config.yaml, and why.
PRODUCTION_OVERRIDES: dict[str, str] = {
    f"{APP}.args.redis_url": "the in-cluster Redis Service (k8s/redis.yaml); SAM_REDIS_URL from a Secret wins",
    f"{APP}.args.auth_tokens_file": "tenant tokens from the sam-auth Secret (k8s/make-secrets.sh)",
    f"{APP}.args.auth_required": "auth on by default: a replica refuses to start with no token",
    f"{APP}.args.encoder_dtype": "bfloat16 autocast on the GPU",
    f"{APP}.args.cache_dir": "the shared models volume the initContainers fill",
    f"{APP}.deployments[SamIngress].ray_actor_options.num_cpus": "the head offers 0 Ray CPUs",
    f"{APP}.deployments[SamIngress].ray_actor_options.resources.sam_ingress": "only the head offers it",
    f"{APP}.deployments[SamEncoder].ray_actor_options.num_cpus": "host-side batch work on the GPU pod",
    f"{APP}.deployments[SamEncoder].ray_actor_options.num_gpus": "one GPU per encoder replica",
    f"{APP}.deployments[SamDecoder].autoscaling_config.min_replicas": "production floor",
    f"{APP}.deployments[SamDecoder].autoscaling_config.max_replicas": "the cpu group at maxReplicas",
    f"{APP}.deployments[SamDecoder].ray_actor_options.num_cpus": "2 ONNX Runtime threads per replica",
    f"{APP}.deployments[SamDecoder].ray_actor_options.resources.sam_decoder": "only the cpu group offers it",
}
# Where each deployment must land, and only there (custom resources steer it: see k8s/rayservice.yaml).
HOME_GROUP = {"SamIngress": "head", "SamEncoder": "gpu", "SamDecoder": "cpu"}
HEAD = "head"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~1 MB each: the C loader is 10x faster


def load_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as stream:
        return [doc for doc in yaml.load_all(stream, Loader=_Loader) if doc]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.iterdir() if p.suffix in (".yaml", ".yml") and p != KUSTOMIZATION)


# ---- strict schemas ---------------------------------------------------------------------------------------


def close_schema(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which every object that lists `properties` forbids any other.

    A CRD's schema leaves objects open (the API server prunes unknown fields silently), so a misspelt field
    would pass; `kubectl apply --validate=strict` rejects it, and so does the closed schema. Objects marked
    `x-kubernetes-preserve-unknown-fields` stay open.
    """
    if isinstance(schema, list):
        return [close_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = dict(schema)
    if isinstance(closed.get("properties"), dict):
        closed["properties"] = {name: close_schema(sub) for name, sub in closed["properties"].items()}
        if not closed.get("x-kubernetes-preserve-unknown-fields"):
            closed.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(closed.get(key), dict):
            closed[key] = close_schema(closed[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(closed.get(key), list):
            closed[key] = close_schema(closed[key])
    return closed


def crd_schema(path: Path, version: str = "v1") -> dict[str, Any]:
    (crd,) = load_documents(path)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return schema


def schema_errors(validator: jsonschema.protocols.Validator, instance: Any) -> list[str]:
    return [
        f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(instance)
    ]


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, jsonschema.protocols.Validator]:
    """Closed-schema validators for the KubeRay kinds, loaded once (the CRD files are ~1 MB each)."""
    return {
        kind: jsonschema.Draft7Validator(close_schema(crd_schema(SCHEMAS_DIR / name)))
        for kind, name in CRD_FILES.items()
    }


# ---- manifests --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every object in every manifest file of k8s/."""
    return [(path.name, obj) for path in manifest_files() for obj in load_documents(path)]


@pytest.fixture(scope="module")
def rayservice(manifests: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    services = [obj for _, obj in manifests if obj["kind"] == "RayService"]
    assert len(services) == 1, f"expected one RayService in k8s/, found {len(services)}"
    return services[0]


@pytest.fixture(scope="module")
def serve_config_v2(rayservice: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return config


@pytest.fixture(scope="module")
def serve_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SERVE_CONFIG.read_text())
    return config


def ray_groups(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The head group (as "head") and the worker groups by groupName."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    return {HEAD: cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def pod_containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    spec = group["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def deployments_by_name(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (application,) = config["applications"]
    return {d["name"]: d for d in application["deployments"]}


# ---- schema validation --------------------------------------------------------------------------------------


def test_every_kuberay_object_passes_its_crd_schema_strictly(
    manifests: list[tuple[str, dict[str, Any]]], crd_validators: dict[str, jsonschema.protocols.Validator]
) -> None:
    kuberay = [(name, obj) for name, obj in manifests if obj["kind"] in CRD_FILES]
    assert kuberay, "no RayService or RayCluster in k8s/"
    errors = [
        f"{name} {obj['kind']}/{obj['metadata']['name']}: {error}"
        for name, obj in kuberay
        for error in schema_errors(crd_validators[obj["kind"]], obj)
    ]
    assert not errors, "\n".join(errors)


def test_rayservice_cluster_config_passes_the_raycluster_crd_spec_strictly(
    rayservice: dict[str, Any], crd_validators: dict[str, jsonschema.protocols.Validator]
) -> None:
    # The same cluster, described as a RayCluster: what KubeRay creates from the RayService.
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "sam"},
        "spec": rayservice["spec"]["rayClusterConfig"],
    }
    errors = schema_errors(crd_validators["RayCluster"], cluster)
    assert not errors, "\n".join(errors)


def test_a_misspelt_rayservice_field_fails_the_crd_schema(
    rayservice: dict[str, Any], crd_validators: dict[str, jsonschema.protocols.Validator]
) -> None:
    planted = copy.deepcopy(rayservice)
    head = planted["spec"]["rayClusterConfig"]["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    errors = schema_errors(crd_validators["RayService"], planted)
    assert any("rayStartParam" in error for error in errors), errors


def test_every_core_object_passes_kubernetes_validate_strictly(manifests: list[tuple[str, dict[str, Any]]]) -> None:
    core = [(name, obj) for name, obj in manifests if obj["kind"] not in CRD_FILES]
    assert core, "no core objects in k8s/"
    errors = []
    for name, obj in core:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            errors.append(f"{name} {obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_a_misspelt_deployment_field_fails_kubernetes_validate(manifests: list[tuple[str, dict[str, Any]]]) -> None:
    deployment = next(obj for _, obj in manifests if obj["kind"] == "Deployment")
    planted = copy.deepcopy(deployment)
    planted["spec"]["replica"] = planted["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(planted, KUBERNETES_VERSION, strict=True)


# ---- Serve configs ------------------------------------------------------------------------------------------


def _models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    """The pydantic models an annotation admits: `X`, `list[X]`, `X | dict | None`, ..."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def unknown_serve_keys(model: type[pydantic.BaseModel], data: Any, path: str = "") -> list[str]:
    """Keys of `data` that `model` (recursively) has no field for: Ray Serve's schema ignores them silently."""
    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    known = set(fields) | {f.alias for f in fields.values() if f.alias}
    unknown = []
    for key, value in data.items():
        if key not in known:
            unknown.append(f"{path}{key}")
            continue
        nested = _models_in(fields[key].annotation)
        if not nested:
            continue  # free-form (args, user_config, runtime_env): args are checked against Settings
        if isinstance(value, list):
            for index, item in enumerate(value):
                label = item.get("name", index) if isinstance(item, dict) else index
                unknown += unknown_serve_keys(nested[0], item, f"{path}{key}[{label}].")
        else:
            unknown += unknown_serve_keys(nested[0], value, f"{path}{key}.")
    return unknown


def check_serve_config(config: dict[str, Any]) -> None:
    """Ray Serve's own validation, then what it lets through: unknown keys and args that are no Settings field."""
    ServeDeploySchema.model_validate(config)
    unknown = unknown_serve_keys(ServeDeploySchema, config)
    assert not unknown, f"keys Ray Serve does not know (ignored silently): {unknown}"
    for application in config["applications"]:
        Settings(**application.get("args", {}))  # extra="forbid": a misspelt arg fails here


@pytest.mark.parametrize("source", ["serve_config.yaml", "serveConfigV2"])
def test_serve_config_is_a_valid_serve_deploy_config(
    source: str, serve_config: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    check_serve_config(serve_config if source == "serve_config.yaml" else serve_config_v2)


def test_a_misspelt_serve_option_fails_the_serve_config_check(serve_config_v2: dict[str, Any]) -> None:
    planted = copy.deepcopy(serve_config_v2)
    decoder = deployments_by_name(planted)["SamDecoder"]
    decoder["autoscaling_confg"] = decoder.pop("autoscaling_config")
    with pytest.raises(AssertionError, match="autoscaling_confg"):
        check_serve_config(planted)


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """Leaf values by path; list items that have a `name` are addressed by it: `deployments[SamEncoder].x`."""
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in flatten(sub, f"{path}.{key}" if path else key).items()}
    if isinstance(value, list) and value:
        named = all(isinstance(item, dict) and "name" in item for item in value)
        return {
            k: v
            for index, item in enumerate(value)
            for k, v in flatten(item, f"{path}[{item['name'] if named else index}]").items()
        }
    return {path: value}


def differing_paths(left: dict[str, Any], right: dict[str, Any]) -> set[str]:
    flat_left, flat_right = flatten(left), flatten(right)
    missing = object()
    return {
        path
        for path in flat_left.keys() | flat_right.keys()
        if flat_left.get(path, missing) != flat_right.get(path, missing)
    }


def test_serve_config_v2_equals_serve_config_yaml_but_for_the_production_overrides(
    serve_config: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    unexpected = differing_paths(serve_config, serve_config_v2) - PRODUCTION_OVERRIDES.keys()
    assert not unexpected, (
        f"serveConfigV2 and serve_config.yaml differ at {sorted(unexpected)}: make them equal, or list the path "
        "in PRODUCTION_OVERRIDES with the reason"
    )


def test_every_listed_production_override_is_a_real_difference(
    serve_config: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    stale = PRODUCTION_OVERRIDES.keys() - differing_paths(serve_config, serve_config_v2)
    assert not stale, f"PRODUCTION_OVERRIDES lists paths that no longer differ: {sorted(stale)}"


# ---- versions -----------------------------------------------------------------------------------------------

_DOCKER_FROM = re.compile(r"^FROM\s+(\S+)", re.MULTILINE | re.IGNORECASE)
_RAY_BASE_TAG = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>\d)(?P<minor>\d+)(-[\w.]+)?$")
_RAY_PIN = re.compile(r"\bray(?:\[[\w,]+\])?==(?P<version>[\w.]+)")
_IMAGE_RAY_TAG = re.compile(r"-ray(?P<ray>\d+\.\d+\.\d+)$")


def dockerfile_base() -> re.Match[str]:
    bases = _DOCKER_FROM.findall(DOCKERFILE.read_text())
    assert len(bases) == 1, f"expected a single-stage Dockerfile, found FROM {bases}"
    match = _RAY_BASE_TAG.match(bases[0])
    assert match, f"base image {bases[0]} is not rayproject/ray:<ray version>-py<major><minor>[-variant]"
    return match


def test_dockerfile_base_image_is_the_installed_ray_version() -> None:
    assert dockerfile_base()["ray"] == ray.__version__


def test_dockerfile_ray_pins_are_the_installed_ray_version() -> None:
    pins = _RAY_PIN.findall(DOCKERFILE.read_text())
    assert pins, "the Dockerfile should pin ray so pip cannot replace the base image's Ray"
    assert set(pins) == {ray.__version__}


def test_dockerfile_base_image_python_is_the_venv_python() -> None:
    base = dockerfile_base()
    assert (int(base["major"]), int(base["minor"])) == sys.version_info[:2]


def test_rayservice_ray_version_is_the_installed_ray(rayservice: dict[str, Any]) -> None:
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_every_ray_pod_image_tag_carries_the_installed_ray_version(rayservice: dict[str, Any]) -> None:
    images = [c["image"] for group in ray_groups(rayservice).values() for c in pod_containers(group)]
    autoscaler_image = rayservice["spec"]["rayClusterConfig"].get("autoscalerOptions", {}).get("image")
    images += [autoscaler_image] if autoscaler_image else []
    kustomize_images = load_documents(KUSTOMIZATION)[0].get("images", [])
    kustomized = [i.get("newTag", "") for i in kustomize_images if i["name"] == SAM_IMAGE]
    tags = [image.rpartition(":")[2] for image in images] + [tag for tag in kustomized if tag]
    wrong = [tag for tag in tags if (m := _IMAGE_RAY_TAG.search(tag)) is None or m["ray"] != ray.__version__]
    assert not wrong, f"image tags without -ray{ray.__version__}: {wrong}"


# ---- consistency ------------------------------------------------------------------------------------------------


def settings_field_of_env(name: str) -> str | None:
    """The Settings field a `SAM_*` environment variable sets (`images.<field>` for `SAM_IMAGE_*`), or None."""
    upper = name.upper()
    if upper.startswith("SAM_IMAGE_"):
        field = upper.removeprefix("SAM_IMAGE_").lower()
        return f"images.{field}" if field in ImageLimits.model_fields else None
    field = upper.removeprefix("SAM_").lower()
    return field if field in Settings.model_fields else None


def env_names(node: Any) -> list[str]:
    """Every `env[].name` anywhere in an object (containers, initContainers, autoscalerOptions, ...)."""
    if isinstance(node, list):
        return [name for item in node for name in env_names(item)]
    if not isinstance(node, dict):
        return []
    names = [item["name"] for item in node.get("env", []) if isinstance(item, dict) and "name" in item]
    return names + [name for value in node.values() for name in env_names(value)]


def test_every_sam_env_var_in_the_manifests_names_a_settings_field(
    manifests: list[tuple[str, dict[str, Any]]],
) -> None:
    names = {name for _, obj in manifests for name in env_names(obj) if name.upper().startswith("SAM_")}
    assert names, "no SAM_* variables found: the env walk is broken or the Redis URL override is gone"
    unknown = sorted(name for name in names if settings_field_of_env(name) is None)
    assert not unknown, f"SAM_* variables that set no Settings field: {unknown}"


def test_a_misspelt_sam_env_var_names_no_settings_field() -> None:
    assert settings_field_of_env("SAM_REDIS_URL") == "redis_url"
    assert settings_field_of_env("SAM_IMAGE_MAX_BYTES") == "images.max_bytes"
    assert settings_field_of_env("SAM_REDIS_ULR") is None
    assert settings_field_of_env("SAM_IMAGE_MAX_BYTE") is None


def test_kustomization_lists_every_manifest_in_k8s() -> None:
    listed = set(load_documents(KUSTOMIZATION)[0]["resources"])
    assert not {path.name for path in manifest_files()} - listed


def test_every_file_the_kustomization_lists_exists() -> None:
    listed = load_documents(KUSTOMIZATION)[0]["resources"]
    assert not [name for name in listed if not (K8S_DIR / name).is_file()]


def _quantity(value: Any) -> float:
    """A Kubernetes CPU/GPU/count quantity as a number: 8, "8", "500m"."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_resources(group: dict[str, Any]) -> dict[str, float]:
    """The Ray resources a group's node offers, as KubeRay and the Ray autoscaler derive them."""
    declared = group.get("resources", {})
    params = group.get("rayStartParams", {})
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    offered = {
        "CPU": _quantity(declared.get("CPU", params.get("num-cpus", limits.get("cpu", 0)))),
        "GPU": _quantity(declared.get("GPU", params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))),
    }
    offered.update({k: _quantity(v) for k, v in declared.items() if k not in ("CPU", "GPU", "memory")})
    return offered


def ray_demand(deployment: dict[str, Any]) -> dict[str, float]:
    options = deployment["ray_actor_options"]
    assert "num_cpus" in options, f"{deployment['name']}: set num_cpus explicitly (the code default is 1)"
    demand = {"CPU": float(options["num_cpus"]), "GPU": float(options.get("num_gpus", 0))}
    demand.update({k: float(v) for k, v in options.get("resources", {}).items()})
    return {k: v for k, v in demand.items() if v > 0}


def replicas_per_node(demand: dict[str, float], offered: dict[str, float]) -> int:
    if not demand:
        return sys.maxsize
    return min(math.floor(offered.get(k, 0.0) / v + 1e-9) for k, v in demand.items())


def test_no_ray_group_sets_ray_resources_in_both_resources_and_ray_start_params(rayservice: dict[str, Any]) -> None:
    # KubeRay refuses such a group at reconcile time; the CRD schema cannot say so.
    ray_start_keys = {"num-cpus", "num-gpus", "memory", "resources"}
    both = [
        name
        for name, g in ray_groups(rayservice).items()
        if g.get("resources") and ray_start_keys & set(g.get("rayStartParams", {}))
    ]
    assert not both


def test_each_deployment_fits_only_on_its_own_ray_group(
    rayservice: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    offered = {name: ray_resources(group) for name, group in ray_groups(rayservice).items()}
    homes = {
        name: {group for group, resources in offered.items() if replicas_per_node(ray_demand(d), resources) > 0}
        for name, d in deployments_by_name(serve_config_v2).items()
    }
    assert homes == {name: {group} for name, group in HOME_GROUP.items()}


def test_ray_groups_at_max_replicas_hold_every_deployment_at_max_replicas(
    rayservice: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    groups = ray_groups(rayservice)
    short = {}
    for name, deployment in deployments_by_name(serve_config_v2).items():
        wanted = deployment.get("autoscaling_config", {}).get("max_replicas", deployment.get("num_replicas", 1))
        group = groups[HOME_GROUP[name]]
        nodes = 1 if HOME_GROUP[name] == HEAD else group["maxReplicas"]
        capacity = nodes * replicas_per_node(ray_demand(deployment), ray_resources(group))
        if capacity < wanted:
            short[name] = f"{wanted} replicas wanted, room for {capacity}"
    assert not short


_SAM_SERVE_CALL = re.compile(r"sam-serve\s+(?P<command>[\w-]+)(?P<options>[^\n;&|]*)")


def sam_serve_calls(group: dict[str, Any]) -> list[tuple[dict[str, Any], re.Match[str]]]:
    """(initContainer, `sam-serve <command> <options>` match) for every sam-serve call in a group's init."""
    calls = []
    for init in group["template"]["spec"].get("initContainers", []):
        script = " ".join([*init.get("command", []), *init.get("args", [])])
        calls += [(init, call) for call in _SAM_SERVE_CALL.finditer(script)]
    return calls


def option_value(options: str, flag: str) -> str | None:
    words = options.split()
    return words[words.index(flag) + 1] if flag in words[:-1] else None


def test_worker_init_containers_provision_the_served_model_into_its_cache_dir(
    rayservice: dict[str, Any], serve_config_v2: dict[str, Any]
) -> None:
    (application,) = serve_config_v2["applications"]
    model_type, cache_dir = application["args"]["model_type"], application["args"]["cache_dir"]
    problems = []
    for name, group in ray_groups(rayservice).items():
        if name == HEAD:
            continue
        ray_mounts = {m["mountPath"]: m["name"] for m in group["template"]["spec"]["containers"][0]["volumeMounts"]}
        calls = sam_serve_calls(group)
        if not any(call["command"] == "download" for _, call in calls):
            problems.append(f"{name}: no `sam-serve download` in an initContainer")
        for init, call in calls:
            shown = call[0].strip()
            if option_value(call["options"], "--model-type") != model_type:
                problems.append(f"{name}: `{shown}` is not for the served model type {model_type}")
            if option_value(call["options"], "--cache-dir") != cache_dir:
                problems.append(f"{name}: `{shown}` does not write to cache_dir {cache_dir}")
            init_mounts = {m["mountPath"]: m["name"] for m in init.get("volumeMounts", [])}
            if cache_dir not in init_mounts or init_mounts[cache_dir] != ray_mounts.get(cache_dir):
                problems.append(f"{name}: {init['name']} and the Ray container share no volume at {cache_dir}")
    assert not problems, "\n".join(problems)


def test_the_decoder_group_exports_the_onnx_decoders_before_ray_starts(rayservice: dict[str, Any]) -> None:
    decoder_group = ray_groups(rayservice)[HOME_GROUP["SamDecoder"]]
    assert "export-decoder" in {call["command"] for _, call in sam_serve_calls(decoder_group)}
