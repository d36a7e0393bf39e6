"""The `sam-serve` command line: fetch and check checkpoints, export decoders, segment an image locally, and
`run` the whole service on a local Ray cluster.

Settings come from `SAM_*` environment variables (sam_core.settings.Settings); flags given here win.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sam_core.errors import ConfigurationError, SamServeError
from sam_core.settings import Settings

log = logging.getLogger(__name__)


def _setting_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields given as flags (None: not given, so the env or the default applies)."""
    overrides: dict[str, Any] = {}
    names = ("model_type", "checkpoint", "checkpoint_sha256", "checkpoint_url", "cache_dir", "device")
    for name in (*names, "encoder_dtype"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "quantize", False):
        overrides["decoder_quantize"] = True
    return overrides


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(**_setting_flags(args))


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-type", help="vit_h, vit_l, vit_b or vit_tiny (env SAM_MODEL_TYPE)")
    parser.add_argument("--checkpoint", help="local checkpoint file (env SAM_CHECKPOINT); else downloaded")
    parser.add_argument("--checkpoint-sha256", help="expected sha256, overrides the registry's")
    parser.add_argument("--checkpoint-url", help="download from this mirror instead of the official URL")
    parser.add_argument("--cache-dir", type=Path, help="where checkpoints and decoders are kept")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")


def _parse_point(text: str) -> tuple[float, float, int]:
    """`x,y` (foreground) or `x,y,label` in original-image pixels."""
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"point {text!r}: use x,y or x,y,label")
    label = int(parts[2]) if len(parts) == 3 else 1
    return float(parts[0]), float(parts[1]), label


def _parse_box(text: str) -> list[float]:
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"box {text!r}: use x0,y0,x1,y1")
    return parts


def cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from sam_core.models import make_random_checkpoint

    path, sha256 = make_random_checkpoint(args.model_type, Path(args.out), seed=args.seed)
    print(json.dumps({"checkpoint": str(path), "model_type": args.model_type, "sha256": sha256}))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from sam_core.service import resolve_configured_checkpoint

    settings = _settings(args)
    path, sha256 = resolve_configured_checkpoint(settings)
    print(json.dumps({"checkpoint": str(path), "model_type": settings.model_type, "sha256": sha256}))
    return 0


def cmd_export_decoder(args: argparse.Namespace) -> int:
    from sam_core.decoder import ensure_decoder_file
    from sam_core.service import load_configured_model

    settings = _settings(args)
    model = load_configured_model(settings, device="cpu")
    paths = [
        ensure_decoder_file(
            model.sam,
            model.identity,
            settings.cache_dir,
            multimask=multimask,
            quantized=settings.decoder_quantize,
        )
        for multimask in (False, True)
    ]
    print(json.dumps({"model_id": model.identity.model_id, "decoders": [str(p) for p in paths]}))
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from sam_core.images import decode_image_bytes
    from sam_core.masks import encode_png, encode_rle, mask_to_polygon
    from sam_core.prompts import build_prompt
    from sam_core.service import configured_decoder, configured_encoder, load_configured_model

    settings = _settings(args)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    model = load_configured_model(settings)
    decoder = configured_decoder(model.sam, model.identity, settings, threads=settings.decoder_threads)
    timings["load_s"] = time.perf_counter() - started

    image = decode_image_bytes(Path(args.image).read_bytes(), settings.images, field="image")
    started = time.perf_counter()
    embedding = configured_encoder(model, settings).embed(image.pixels)
    timings["embed_s"] = time.perf_counter() - started

    points = args.point or []
    prompt = build_prompt(
        [[x, y] for x, y, _ in points],
        [label for _, _, label in points],
        embedding.original_size,
        box=args.box,
    )
    started = time.perf_counter()
    output = decoder.decode(embedding, prompt, multimask=args.multimask)
    timings["decode_s"] = time.perf_counter() - started

    best = int(np.argmax(output.iou_scores))
    mask = output.masks[best]
    result: dict[str, Any] = {
        "model_id": model.identity.model_id,
        "image_size": list(embedding.original_size),
        "iou_scores": [round(float(s), 4) for s in output.iou_scores],
        "mask_pixels": int(mask.sum()),
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    if args.format == "polygon":
        result["polygon"] = mask_to_polygon(mask)
    elif args.format == "rle":
        result["rle"] = encode_rle(mask)
    if args.out:
        Path(args.out).write_bytes(encode_png(mask))
        result["png"] = args.out
    print(json.dumps(result))
    return 0


# ---- sam-serve run: the whole service on a local Ray cluster ---------------------------------------------

APP_NAME = "sam"
RANDOM_WEIGHTS_SEED = 0
REDIS_PING_TIMEOUT_S = 1.0
REDIS_START_DEADLINE_S = 10.0
REDIS_STOP_TIMEOUT_S = 5.0
LOCAL_REDIS_OPTIONS = {
    "--bind": "127.0.0.1",
    "--save": "",
    "--appendonly": "no",
    "--maxmemory": "1gb",
    "--maxmemory-policy": "allkeys-lru",
}
MEMORY_CACHE_WARNING = """\
*************************************************************************************************
* WARNING: no Redis, so nothing is shared between processes. The ingress keeps the embeddings   *
* in its own memory and sends them to the decoders with every click; the low-res logits for     *
* use_mask_input_cache stay in each decoder replica; everything is lost when the app restarts,  *
* and a second ingress replica would not see the first one's images.                            *
* Install redis-server (then `sam-serve run` starts one) or pass --redis-url / set REDIS_URL.   *
*************************************************************************************************"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value


def _redacted(url: str) -> str:
    """A Redis URL fit for logs: the password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _redis_answers(url: str) -> bool:
    """True when a Redis server at `url` answers PING within REDIS_PING_TIMEOUT_S."""
    import redis

    try:
        client = redis.Redis.from_url(
            url, socket_timeout=REDIS_PING_TIMEOUT_S, socket_connect_timeout=REDIS_PING_TIMEOUT_S
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A Popen preexec_fn that has the child SIGTERMed when this process dies, even by SIGKILL (Linux only).

    prctl is looked up here, before the fork, so the child only makes one foreign call before exec (what
    Ray does for its own processes; preexec_fn must not take locks another thread may hold).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


class LocalRedis:
    """A private `redis-server` child on a free port of 127.0.0.1: no persistence, LRU eviction at 1 GB.

    It runs in its own session, so a Ctrl-C in the terminal reaches only `sam-serve run`, which stops it
    after Serve has shut down; on Linux it also dies with its parent if that is killed outright.
    """

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.port = 0
        self._workdir = tempfile.TemporaryDirectory(prefix="sam-serve-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, attempts: int = 3) -> None:
        """Start on a free port and wait for PING; a port taken meanwhile means another try on another port."""
        die_with_parent = _die_with_parent_hook()
        for _ in range(attempts):
            self.port = _free_port()
            options = {**LOCAL_REDIS_OPTIONS, "--port": str(self.port), "--dir": self._workdir.name}
            log_path = Path(self._workdir.name) / "redis.log"
            with log_path.open("ab") as log_file:
                self._process = subprocess.Popen(
                    [self.executable, *itertools.chain.from_iterable(options.items())],
                    cwd=self._workdir.name,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            deadline = time.monotonic() + REDIS_START_DEADLINE_S
            while time.monotonic() < deadline and self._process.poll() is None:
                if _redis_answers(self.url):
                    return
                time.sleep(0.05)
            self.stop()
        tail = (Path(self._workdir.name) / "redis.log").read_text(errors="replace")[-1000:]
        raise ConfigurationError(f"{self.executable} did not start (tried {attempts} ports):\n{tail}")

    def stop(self) -> None:
        """Stop the server and wait for it; killed if it does not exit in time."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=REDIS_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=REDIS_STOP_TIMEOUT_S)

    def close(self) -> None:
        self.stop()
        self._workdir.cleanup()


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
        if _redis_answers(url):
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
    from sam_core.models import architecture, make_random_checkpoint

    model_type = settings.model_type
    official = architecture(model_type).official
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
        except Exception as exc:  # keep going: Ray and Redis must still be stopped
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
        # SAM_* env vars apply (validated by load_settings); flags given here win over them.
        env_settings = load_settings({})
        settings = load_settings({**env_settings.model_dump(), **_setting_flags(args)}, env_overrides=False)
        ingress_cpus = float(SamIngress.ray_actor_options.get("num_cpus", 0.0))  # type: ignore[attr-defined]
        _check_resources(args, ingress_cpus)
        _check_port_free(args.host, args.port)
        settings = _prepare_checkpoint(settings, args.random_weights)
        redis_url, local_redis = _pick_cache(args.redis_url, env_settings.redis_url)
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
        print(f"sam-serve: deploying {settings.model_type} (first start exports the ONNX decoders)", file=sys.stderr)
        serve.run(
            compose(settings, encoder_options=encoder_options, decoder_options=decoder_options),
            name=APP_NAME,
            route_prefix="/",
        )
        url = f"http://{args.host}:{args.port}"
        print(f"sam-serve: ready at {url} (POST /sam/embed_image, /sam/segment_image; docs at {url}/docs)")
        print(f"sam-serve: Prometheus metrics at {_metrics_url()} (ray_sam_*: deployments/METRICS.md)")
        print("sam-serve: Ctrl-C or SIGTERM stops it", file=sys.stderr)
        sys.stdout.flush()
        while True:
            signal.pause()
    except KeyboardInterrupt:
        return 0
    finally:
        _shutdown(local_redis)


def _add_run_options(run: argparse.ArgumentParser) -> None:
    _add_model_options(run)
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
        type=_positive_int,
        default=max(os.cpu_count() or 1, 4),
        help="logical CPUs of the local Ray cluster (default max(cores, 4))",
    )
    run.add_argument("--decoder-replicas", type=_positive_int, default=2, help="decoder replicas (default 2)")
    run.add_argument("--decoder-cpus", type=_positive_float, default=1.0, help="CPUs per decoder replica")
    run.add_argument("--encoder-cpus", type=_positive_float, default=1.0, help="CPUs of the encoder replica")
    run.add_argument("--encoder-gpus", type=_non_negative_float, default=0.0, help="GPUs of the encoder replica")
    run.add_argument("--redis-url", help="shared cache (else REDIS_URL, else a private redis-server, else memory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-serve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-checkpoint", help="save a seeded random-weight SAM (offline runs, tests)")
    make.add_argument("--model-type", default="vit_tiny")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", required=True)
    make.set_defaults(func=cmd_make_checkpoint)

    download = commands.add_parser("download", help="download and verify an official checkpoint")
    _add_model_options(download)
    download.set_defaults(func=cmd_download)

    export = commands.add_parser("export-decoder", help="export the ONNX decoders for a checkpoint")
    _add_model_options(export)
    export.add_argument("--quantize", action="store_true", help="int8 dynamic quantisation")
    export.set_defaults(func=cmd_export_decoder)

    segment = commands.add_parser("segment", help="embed an image and segment it from prompts, in-process")
    _add_model_options(segment)
    segment.add_argument("--encoder-dtype", choices=["float32", "float16", "bfloat16"])
    segment.add_argument("--quantize", action="store_true", help="int8 decoder")
    segment.add_argument("--image", required=True, help="image file")
    segment.add_argument("--point", type=_parse_point, action="append", help="x,y[,label] in image pixels; repeatable")
    segment.add_argument("--box", type=_parse_box, help="x0,y0,x1,y1 in image pixels")
    segment.add_argument("--multimask", action="store_true", help="three candidate masks, best one written")
    segment.add_argument("--format", choices=["polygon", "rle", "none"], default="polygon")
    segment.add_argument("--out", help="write the best mask as a PNG here")
    segment.set_defaults(func=cmd_segment)

    run = commands.add_parser("run", help="serve the API on a local Ray cluster (and a private Redis) until stopped")
    _add_run_options(run)
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except SamServeError as exc:
        print(f"sam-serve: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
