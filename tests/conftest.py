"""Shared test fixtures: a private Redis server (never the system Redis on 6379) and the tiny SAM model."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as coco_mask
import pytest
from PIL import Image

from sam_cli.local_redis import LocalRedis, free_port
from sam_core.model.build import LoadedModel, load_model, make_random_checkpoint
from sam_core.model.decoder import OnnxDecoder
from sam_core.settings import Settings

# ---- reference decoders for the mask encodings we write -------------------------------------------------


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """A COCO RLE (`{"size": [h, w], "counts": str}`) back to a (h, w) bool mask, by pycocotools."""
    counts = rle["counts"]
    decoded = coco_mask.decode(
        {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
    )
    return np.asarray(decoded, dtype=bool).reshape(tuple(rle["size"]))


def png_to_mask(data: bytes) -> np.ndarray:
    """A mask PNG back to a (h, w) bool mask (nonzero is inside), by OpenCV."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a greyscale PNG"
    assert image.ndim == 2, "not a greyscale PNG"
    return image > 0


def photo_jpeg(rng: np.random.Generator, size: tuple[int, int], quality: int = 92) -> bytes:
    """A photo-like JPEG of `size` (height, width): smooth colour fields with fine grain, so it compresses
    as camera pictures do (a few bits per pixel), not as flat colour or pure noise."""
    height, width = size
    coarse = rng.integers(0, 256, size=(max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
    pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ---- Redis ---------------------------------------------------------------------------------------------

REDIS_MAXMEMORY = "64mb"


def _session_redis(
    tmp_path_factory: pytest.TempPathFactory, name: str, maxmemory: str = REDIS_MAXMEMORY
) -> Iterator[LocalRedis]:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not on PATH")
    server = LocalRedis(executable, port=free_port(), workdir=tmp_path_factory.mktemp(name), maxmemory=maxmemory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """One private redis-server for the cache tests, on a free port, killed at the end."""
    yield from _session_redis(tmp_path_factory, "redis")


@pytest.fixture(scope="session")
def app_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """The serve app's own redis-server: the cache tests flush, stop and shrink theirs, never this one."""
    # Room for ~250 embeddings: the load test alone creates dozens of images.
    yield from _session_redis(tmp_path_factory, "app-redis", maxmemory="512mb")


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> str:
    """The private server's URL with an empty database and the default maxmemory.

    Restarts the server first if a fault test left it stopped.
    """
    redis_server.start()
    with redis_server.client() as client:
        client.config_set("maxmemory", REDIS_MAXMEMORY)
        client.flushdb()
    return redis_server.url


# ---- the tiny random-weight SAM ------------------------------------------------------------------------

TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random-weight vit_tiny checkpoint file (real prompt encoder and mask decoder)."""
    path, _ = make_random_checkpoint(
        "vit_tiny", tmp_path_factory.mktemp("checkpoints") / "sam_vit_tiny.pth", seed=TINY_SEED
    )
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The tiny checkpoint loaded through the same loader as official ones, on the CPU."""
    return load_model(
        "vit_tiny", checkpoint=tiny_checkpoint, cache_dir=tmp_path_factory.mktemp("model-cache"), device="cpu"
    )


@pytest.fixture(scope="session")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests' exported ONNX decoders live (shared by the session: export once)."""
    return tmp_path_factory.mktemp("decoders")


@pytest.fixture(scope="session")
def tiny_decoder(tiny_model: LoadedModel, decoder_dir: Path) -> OnnxDecoder:
    """The tiny model's ONNX decoders (single- and multi-mask), two intra-op threads."""
    return OnnxDecoder.for_model(tiny_model.sam, tiny_model.identity, decoder_dir, threads=2)


# ---- the Ray Serve application --------------------------------------------------------------------------

DECODER_REPLICAS = 2
APP_NAME = "sam"


@dataclass
class ServeApp:
    """The running test application: its HTTP base URL, a handle to the ingress, and what it runs on."""

    url: str
    handle: Any  # ray.serve.handle.DeploymentHandle to SamIngress
    settings: Settings
    redis: LocalRedis
    checkpoint: Path


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster with more logical CPUs than cores, so fractional replicas fit on 2 cores."""
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, namespace="sam-serve-tests")
    try:
        yield
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_app(
    ray_cluster: None,
    app_redis_server: LocalRedis,
    tiny_checkpoint: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServeApp]:
    """The real three-deployment app (tiny model, real Redis, 2 decoder replicas) over real HTTP.

    Started once per session: Ray start-up and deployment take ~15 s on 2 cores.
    """
    from ray import serve

    from deployments.app import compose

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = Settings(
        model_type="vit_tiny",
        checkpoint=str(tiny_checkpoint),
        redis_url=app_redis_server.url,
        cache_dir=tmp_path_factory.mktemp("serve-cache"),
        cache_timeout_s=0.5,
        decoder_threads=1,
    )
    app = compose(
        settings,
        encoder_options={"ray_actor_options": {"num_cpus": 0.5}},
        decoder_options={
            "num_replicas": DECODER_REPLICAS,
            "autoscaling_config": None,
            "ray_actor_options": {"num_cpus": 0.5},
        },
        ingress_options={"ray_actor_options": {"num_cpus": 0.25}},
    )
    handle = serve.run(app, name=APP_NAME, route_prefix="/")
    try:
        yield ServeApp(
            url=f"http://127.0.0.1:{port}",
            handle=handle,
            settings=settings,
            redis=app_redis_server,
            checkpoint=tiny_checkpoint,
        )
    finally:
        serve.delete(APP_NAME)


SMALL_REPLICA = {"ray_actor_options": {"num_cpus": 0.25}}


@contextmanager
def second_app(
    name: str,
    settings: Settings,
    *,
    decoder_options: Mapping[str, Any] | None = None,
    ingress_options: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """Another application in the test cluster under `/<name>`, for tests that break or reconfigure it
    (Redis faults, auth, overload, autoscaling) without touching the session's `serve_app`. Yields its handle.
    One decoder and one ingress replica, no autoscaling, unless `decoder_options` / `ingress_options` say
    otherwise.
    """
    from ray import serve

    from deployments.app import compose

    decoder = {**SMALL_REPLICA, "num_replicas": 1, "autoscaling_config": None, **(decoder_options or {})}
    if "autoscaling_config" in (decoder_options or {}):
        decoder.pop("num_replicas")
    ingress = {**SMALL_REPLICA, **(ingress_options or {})}
    app = compose(settings, encoder_options=SMALL_REPLICA, decoder_options=decoder, ingress_options=ingress)
    handle = serve.run(app, name=name, route_prefix=f"/{name}")
    try:
        yield handle
    finally:
        serve.delete(name)


# ---- a headless Chromium (the labelling page's tests) -------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, driven by Playwright for Python."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: `bash scripts/bootstrap.sh` installs Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
