"""`sam-serve run`: the whole service on a local Ray cluster, with the cache it can find (a given Redis, a private
redis-server, or memory), until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sam_cli.arguments import (
    add_model_options,
    add_setting_flags,
    models_json,
    non_negative_float,
    positive_float,
    positive_int,
    setting_flags,
)
from sam_cli.local_redis import LocalRedis, redis_answers
from sam_core.errors import ConfigurationError
from sam_core.settings import Settings
from sam_core.wire.generator_schemas import EVERYTHING_ROUTE
from sam_core.wire.schemas import DECODER_FILE_ROUTE, EMBED_ROUTE, SEGMENT_ROUTE

log = logging.getLogger(__name__)

APP_NAME = "sam"

RANDOM_WEIGHTS_SEED = 0

MEMORY_CACHE_WARNING = """\
*************************************************************************************************
* WARNING: no Redis, so nothing is shared between processes. The ingress keeps the embeddings   *
* in its own memory and sends them to the decoders with every click; the low-res logits for     *
* use_mask_input_cache stay in each decoder replica; everything is lost when the app restarts,  *
* and a second ingress replica would not see the first one's images.                            *
* Install redis-server (then `sam-serve run` starts one) or pass --redis-url / set REDIS_URL.   *
*************************************************************************************************"""


def _redacted(url: str) -> str:
    """A Redis URL fit for logs: the password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _pick_cache(flag_url: str | None, sam_redis_url: str | None) -> tuple[str | None, LocalRedis | None]:
    """The cache to run with: (redis_url, the redis-server started for it) or (None, None) for in-memory.

    A given URL (--redis-url, then SAM_REDIS_URL, then REDIS_URL) is used if it answers PING; else a private
    redis-server from PATH is started; else the per-replica in-memory cache, with a loud warning.
    """
    candidates = (
        ("--redis-url", flag_url),
        ("SAM_REDIS_URL", sam_redis_url),
        ("REDIS_URL", os.environ.get("REDIS_URL")),
    )
    for source, url in candidates:
        if not url:
            continue
        if redis_answers(url):
            print(f"sam-serve: cache: Redis at {_redacted(url)} (from {source})", file=sys.stderr)
            return url, None
        print(
            f"sam-serve: Redis at {_redacted(url)} (from {source}) does not answer PING; not using it", file=sys.stderr
        )
    executable = shutil.which("redis-server")
    if executable is not None:
        local = LocalRedis(executable)
        try:
            local.start()
        except ConfigurationError as exc:
            local.close()
            log.warning("could not start a private redis-server: %s", exc)
        else:
            print(f"sam-serve: cache: private redis-server at {local.url} (pid {local.pid})", file=sys.stderr)
            return local.url, local
    log.warning("no Redis: the ingress keeps embeddings in its own memory; nothing is shared or kept on restart")
    print(MEMORY_CACHE_WARNING, file=sys.stderr)
    return None, None


def _prepare_checkpoint(settings: Settings, random_weights: bool) -> Settings:
    """With --random-weights, a seeded random checkpoint for a model type Meta publishes none for."""
    from deployments.app import load_settings
    from sam_core.model.build import make_random_checkpoint
    from sam_core.model.registry import architecture

    model_type = settings.model_type
    official = architecture(model_type).official
    if settings.models:
        if random_weights:
            raise ConfigurationError("--random-weights serves one model: it and --models exclude each other")
        return settings
    if random_weights:
        if settings.checkpoint:
            raise ConfigurationError(
                "--random-weights and a checkpoint (--checkpoint, SAM_CHECKPOINT) exclude each other"
            )
        if official:
            raise ConfigurationError(
                f"{model_type} has an official checkpoint: --random-weights is for model types without one "
                f"(vit_tiny); for random {model_type} weights use `sam-serve make-checkpoint --model-type "
                f"{model_type} --out FILE` and --checkpoint FILE"
            )
        path = settings.cache_dir / f"sam_{model_type}_random_seed{RANDOM_WEIGHTS_SEED}.pth"
        path, sha256 = make_random_checkpoint(model_type, path, seed=RANDOM_WEIGHTS_SEED)
        print(
            f"sam-serve: RANDOM WEIGHTS: {model_type} seeded with {RANDOM_WEIGHTS_SEED} ({path}, sha256 "
            f"{sha256[:12]}); the service works end to end but its masks are meaningless",
            file=sys.stderr,
        )
        return load_settings({**settings.model_dump(), "checkpoint": str(path)}, env_overrides=False)
    if not official and not settings.checkpoint:
        raise ConfigurationError(
            f"{model_type} has no official checkpoint: pass --checkpoint FILE, or --random-weights for a "
            "seeded random one (offline runs; meaningless masks)"
        )
    return settings


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _deployment_options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(encoder options, decoder options) for compose(): fixed decoder replicas, CPUs and GPUs per replica."""
    encoder_actor: dict[str, Any] = {"num_cpus": args.encoder_cpus}
    if args.encoder_gpus > 0:
        encoder_actor["num_gpus"] = args.encoder_gpus
    decoder_options = {
        "num_replicas": args.decoder_replicas,
        "autoscaling_config": None,
        "ray_actor_options": {"num_cpus": args.decoder_cpus},
    }
    return {"ray_actor_options": encoder_actor}, decoder_options


def _check_resources(args: argparse.Namespace, ingress_cpus: float) -> None:
    """Refuse up front what Ray would otherwise leave pending forever (replicas that do not fit)."""
    needed = args.encoder_cpus + args.decoder_replicas * args.decoder_cpus + ingress_cpus
    if needed > args.num_cpus + 1e-9:
        raise ConfigurationError(
            f"the replicas need {needed:g} CPUs (encoder {args.encoder_cpus:g} + {args.decoder_replicas} "
            f"decoders x {args.decoder_cpus:g} + ingress {ingress_cpus:g}) but --num-cpus is {args.num_cpus:g}"
        )


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM both raise KeyboardInterrupt in the main thread, so shutdown runs in one place."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def _shutdown(local_redis: LocalRedis | None) -> None:
    """Serve, then Ray, then Redis (replicas may still write to it while they stop). A second signal forces."""

    def force(signum: int, _frame: object) -> None:
        print("sam-serve: second signal: exiting without a clean shutdown", file=sys.stderr)
        if local_redis is not None:
            local_redis.stop()
        os._exit(128 + signum)

    import ray
    from ray import serve

    if not ray.is_initialized() and local_redis is None:
        return  # nothing was started
    signal.signal(signal.SIGINT, force)
    signal.signal(signal.SIGTERM, force)
    print("sam-serve: shutting down", file=sys.stderr)
    if ray.is_initialized():
        try:
            serve.shutdown()
        except Exception as exc:  # noqa: BLE001 (whatever failed, Ray and Redis must still be stopped)
            log.warning("serve.shutdown failed: %s", exc)
        ray.shutdown()
    if local_redis is not None:
        local_redis.close()
    print("sam-serve: stopped", file=sys.stderr)


def _metrics_url() -> str:
    """Where this Ray node exports its Prometheus metrics (Ray picks the port unless told)."""
    import ray

    node = next(
        node for node in ray.nodes() if node["Alive"] and node["NodeID"] == ray.get_runtime_context().get_node_id()
    )
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def cmd_run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from deployments.app import compose, load_settings
    from deployments.ingress import SamIngress

    _stop_on_signals()
    local_redis = None
    try:
        # Flags given here win over SAM_* variables, which win over the defaults (pydantic-settings' order).
        settings = load_settings(setting_flags(args), env_overrides=False)
        ingress_cpus = float(SamIngress.ray_actor_options.get("num_cpus", 0.0))  # type: ignore[attr-defined]
        _check_resources(args, ingress_cpus)
        _check_port_free(args.host, args.port)
        settings = _prepare_checkpoint(settings, args.random_weights)
        redis_url, local_redis = _pick_cache(args.redis_url, settings.redis_url_value())
        settings = load_settings({**settings.model_dump(), "redis_url": redis_url}, env_overrides=False)

        print(f"sam-serve: starting Ray ({args.num_cpus} logical CPUs)", file=sys.stderr)
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, namespace="sam-serve")
        _stop_on_signals()  # ray.init installs its own SIGTERM handler (sys.exit)
        if args.encoder_gpus > ray.cluster_resources().get("GPU", 0.0):
            raise ConfigurationError(
                f"--encoder-gpus {args.encoder_gpus:g} but Ray sees {ray.cluster_resources().get('GPU', 0.0):g} GPUs"
            )
        encoder_options, decoder_options = _deployment_options(args)
        serve.start(http_options={"host": args.host, "port": args.port})
        served = ", ".join(spec.id for spec in settings.served_models)
        print(f"sam-serve: deploying {served} (first start exports the ONNX decoders)", file=sys.stderr)
        serve.run(
            compose(settings, encoder_options=encoder_options, decoder_options=decoder_options),
            name=APP_NAME,
            route_prefix="/",
        )
        url = f"http://{args.host}:{args.port}"
        routes = f"POST {EMBED_ROUTE}, {SEGMENT_ROUTE}, {EVERYTHING_ROUTE}; GET {DECODER_FILE_ROUTE}"
        print(f"sam-serve: ready at {url} ({routes}; docs at {url}/docs)")
        print(f"sam-serve: the labelling page at {url}/ui/; Label Studio's ML backend URL: {url}/labelstudio")
        print(f"sam-serve: Prometheus metrics at {_metrics_url()} (ray_sam_*: deployments/METRICS.md)")
        print("sam-serve: Ctrl-C or SIGTERM stops it", file=sys.stderr)
        sys.stdout.flush()
        while True:
            signal.pause()
    except KeyboardInterrupt:
        return 0
    finally:
        _shutdown(local_redis)


def add_run_options(run: argparse.ArgumentParser) -> None:
    add_model_options(run)
    run.add_argument(
        "--models",
        type=models_json,
        help='several models as JSON, the first the default: \'[{"id": "vit_b", "model_type": "vit_b"}, ...]\' '
        "(each id, model_type, and checkpoint or checkpoint_url + checkpoint_sha256; env SAM_MODELS)",
    )
    add_setting_flags(run, "max_models_per_replica")
    run.add_argument(
        "--random-weights",
        action="store_true",
        help="model types without official weights "
        "(vit_tiny) and no --checkpoint: a seeded random checkpoint (offline; meaningless masks)",
    )
    run.add_argument("--host", default="127.0.0.1", help="HTTP host to listen on (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    run.add_argument(
        "--num-cpus",
        type=positive_int,
        default=max(os.cpu_count() or 1, 4),
        help="logical CPUs of the local Ray cluster (default max(cores, 4))",
    )
    run.add_argument("--decoder-replicas", type=positive_int, default=2, help="decoder replicas (default 2)")
    run.add_argument("--decoder-cpus", type=positive_float, default=1.0, help="CPUs per decoder replica")
    run.add_argument("--encoder-cpus", type=positive_float, default=1.0, help="CPUs of the encoder replica")
    run.add_argument("--encoder-gpus", type=non_negative_float, default=0.0, help="GPUs of the encoder replica")
    run.add_argument("--redis-url", help="shared cache (else REDIS_URL, else a private redis-server, else memory)")
