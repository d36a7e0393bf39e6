"""The benchmark's shared pieces: report rows, sample images, a private Redis and the running app (`Bench`)."""

from __future__ import annotations

import base64
import io
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from deployments.click_path import CLICK_PATH_NICENESS
from sam_cli.local_redis import LocalRedis
from sam_core.errors import ConfigurationError
from sam_core.wire.schemas import SEGMENT_ROUTE

HEIGHT, WIDTH = 1500, 2250
SEGMENT = SEGMENT_ROUTE
CLICK = [[1050.0, 750.0]]
STAGES = ("load", "decode", "encode", "store")
"""The decoder replica's own stages, as its Server-Timing header names them."""


@dataclass
class Row:
    """One line of the report: a measurement, its reference from the same run, and the target if any."""

    name: str
    ours: str
    reference: str
    ratio: float
    target: str = ""
    met: bool | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        verdict = "" if row.met is None else (" MET" if row.met else " MISSED")
        print(f"  -> {row.name}: {row.ours} vs {row.reference} = {row.ratio:.3g}x {row.target}{verdict}", flush=True)
        for note in row.notes:
            print(f"     {note}", flush=True)

    def print_table(self) -> None:
        headers = ("measure", "ours", "reference (same run)", "ratio", "target")
        cells = [
            (r.name, r.ours, r.reference, f"{r.ratio:.3g}", f"{r.target} {'met' if r.met else 'MISSED'}".strip())
            if r.met is not None
            else (r.name, r.ours, r.reference, f"{r.ratio:.3g}", r.target)
            for r in self.rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        line = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
        print("\n| " + line + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for cell in cells:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) + " |")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def sample_image(variant: int = 0) -> np.ndarray:
    """A 1500x2250 RGB image of flat shapes; `variant` moves one shape so every variant hashes differently.

    No pixel noise: random weights turn noise into masks of thousands of specks, whose contours take far longer
    to trace than a real SAM mask's; flat shapes give a mask of a few smooth regions.
    """
    image = Image.new("RGB", (WIDTH, HEIGHT), (40, 90, 160))
    draw = ImageDraw.Draw(image)
    lift = 5 * (variant // 240)  # past 240 variants the rectangle has left the frame: move the ellipse too
    draw.ellipse((600, 300 - lift, 1500, 1200 - lift), fill=(230, 200, 40))
    offset = 7 * (variant % 240)
    draw.rectangle((1700 - offset, 200, 2100 - offset, 700), fill=(200, 40, 60))
    return np.asarray(image).copy()


def image_base64(pixels: np.ndarray, image_format: str = "PNG") -> str:
    """PNG (lossless) by default: JPEG's ringing is noise that random weights turn into specky masks."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_server_timing(header: str) -> dict[str, float]:
    """`load;dur=1.20, decode;dur=30.1` -> {"load": 0.0012, "decode": 0.0301} (seconds)."""
    timings = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if rest:
            timings[name] = float(rest) / 1e3
    return timings


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """The project's own local redis-server launcher, on a free port, for the length of the run."""
    try:
        server = LocalRedis(workdir=workdir)
    except ConfigurationError as exc:
        raise SystemExit(exc.reason) from None
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@contextmanager
def local_bench() -> Iterator[Bench]:
    """A benchmark's own world for the length of the run: a temp work dir, a redis-server, a local Ray (8 logical
    CPUs) and Serve's proxy on a free port; everything stopped after."""
    import tempfile

    import ray
    from ray import serve

    from sam_cli.local_redis import free_port

    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        port = free_port()
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            yield Bench(Path(tmp), redis_url, port)
        finally:
            serve.shutdown()
            ray.shutdown()


class Bench:
    """The running pieces: work dir, Redis, the Serve app and an HTTP client, plus in-process references."""

    def __init__(self, work: Path, redis_url: str, port: int) -> None:
        self.work = work
        self.redis_url = redis_url
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.checkpoints: dict[str, Path] = {}

    def checkpoint(self, model_type: str) -> Path:
        from sam_core.model.build import make_random_checkpoint

        if model_type not in self.checkpoints:
            self.checkpoints[model_type], _ = make_random_checkpoint(
                model_type, self.work / f"{model_type}.pth", seed=0
            )
        return self.checkpoints[model_type]

    def settings(self, model_type: str, **overrides: Any) -> Any:
        from sam_core.settings import Settings

        values: dict[str, Any] = {
            "model_type": model_type,
            "checkpoint": str(self.checkpoint(model_type)),
            "redis_url": self.redis_url,
            "cache_dir": self.work / "cache",
        }
        return Settings(**{**values, **overrides})

    def deploy(
        self,
        model_type: str,
        *,
        name: str = "sam",
        decoders: int,
        decoder_threads: int,
        encoder_cpus: float = 2,
        ingresses: int = 1,
        decoder_router: dict[str, Any] | None = None,
        click_path_niceness: int | None = None,
        access_log: bool | None = None,
        serve_env: dict[str, str] | None = None,
        **settings: Any,
    ) -> None:
        """(Re)deploy the app (under `/`, or `/{name}` for another name); each replica's num_cpus sets its
        threads, as in production. `click_path_niceness`: the ingress's and decoders' nice level instead of
        the deployments' own (0). `access_log`: Ray Serve's per-request log lines on or off in every replica (None:
        the deployments' own, off on the click path). `serve_env`: Ray Serve variables in the ingress's and decoders'
        environment (their nice level then 0 unless `click_path_niceness` says otherwise)."""
        from ray import serve

        from deployments.app import compose

        runtime_env = {}
        if click_path_niceness is not None or serve_env is not None:
            niceness = CLICK_PATH_NICENESS if click_path_niceness is None else click_path_niceness
            env_vars = {"RAY_worker_niceness": str(niceness), **(serve_env or {})}
            runtime_env = {"runtime_env": {"env_vars": env_vars}}
        logging = {} if access_log is None else {"logging_config": {"enable_access_log": access_log}}
        app = compose(
            self.settings(model_type, decoder_threads=decoder_threads, **settings),
            encoder_options={"ray_actor_options": {"num_cpus": encoder_cpus}, **logging},
            decoder_options={
                **logging,
                "num_replicas": decoders,
                "autoscaling_config": None,
                "ray_actor_options": {"num_cpus": decoder_threads, **runtime_env},
                # None: the deployment's own (image-keyed consistent hashing); {}: Ray Serve's default router.
                **({} if decoder_router is None else {"request_router_config": decoder_router}),
            },
            ingress_options={"num_replicas": ingresses, "ray_actor_options": runtime_env, **logging},
        )
        serve.run(app, name=name, route_prefix="/" if name == "sam" else f"/{name}")

    def load(self, model_type: str) -> Any:
        from sam_core.model.build import load_model

        return load_model(model_type, checkpoint=self.checkpoint(model_type), cache_dir=self.work / "cache")
