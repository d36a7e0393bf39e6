"""Follow-up click latency over HTTP vs one bare in-process ONNX decoder call, measured side by side.

Starts a local Ray cluster, its own redis-server and the three-deployment app (vit_tiny random weights: the
decoder is the real SAM decoder, so its cost is real), embeds one 1500x2250 image, then alternates N
follow-up clicks over HTTP (keep-alive, cached embedding, one point, single mask, json polygons) with N bare
`OnnxDecoder.decode` calls on the same embedding and prompt in this process, with the same thread count.

Run: .venv/bin/python bench/bench_latency.py [--clicks 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import base64
import io
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

HEIGHT, WIDTH = 1500, 2250


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample_image() -> np.ndarray:
    image = Image.new("RGB", (WIDTH, HEIGHT), (40, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((600, 300, 1500, 1200), fill=(230, 200, 40))
    draw.rectangle((1700, 200, 2100, 700), fill=(200, 40, 60))
    # No pixel noise: random weights turn noise into masks of thousands of specks (5,558 contours, 15 ms of
    # contour tracing), nothing like a real SAM mask; flat shapes give a mask of a few smooth regions.
    return np.asarray(image).copy()


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server not found on PATH")
    port = free_port()
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads, both sides")
    args = parser.parse_args()

    import ray
    from ray import serve

    from deployments.app import compose
    from sam_core.decoder import OnnxDecoder
    from sam_core.encoder import ImageEncoder
    from sam_core.models import load_model, make_random_checkpoint
    from sam_core.prompts import build_prompt
    from sam_core.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis_process, redis_url = start_redis(work)
        try:
            checkpoint, _ = make_random_checkpoint("vit_tiny", work / "tiny.pth", seed=0)
            settings = Settings(
                model_type="vit_tiny",
                checkpoint=str(checkpoint),
                redis_url=redis_url,
                cache_dir=work / "cache",
                decoder_threads=args.threads,
            )
            ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            app = compose(
                settings,
                decoder_options={
                    "num_replicas": 1,
                    "autoscaling_config": None,
                    "ray_actor_options": {"num_cpus": args.threads},
                },
            )
            serve.run(app, name="sam", route_prefix="/")

            pixels = sample_image()
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            image_b64 = base64.b64encode(buffer.getvalue()).decode("ascii")

            model = load_model("vit_tiny", checkpoint=checkpoint, cache_dir=work / "cache", device="cpu")
            embedding = ImageEncoder(model.sam).embed(pixels)
            bare = OnnxDecoder.for_model(model.sam, model.identity, work / "cache", threads=args.threads)
            point = [[1050.0, 750.0]]
            prompt = build_prompt(point, [1], embedding.original_size)

            body = {"image_id": "bench-image", "point_coords": point, "point_labels": [1], "format": "json"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                with_image = {**body, "image": {"type": "base64", "value": image_b64}}
                client.post("/sam/segment_image", json=with_image).raise_for_status()
                for _ in range(5):  # warm both paths
                    client.post("/sam/segment_image", json=body).raise_for_status()
                    bare.decode(embedding, prompt)
                http_times, bare_times = [], []
                for _ in range(args.clicks):
                    started = time.perf_counter()
                    bare.decode(embedding, prompt)
                    bare_times.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    response = client.post("/sam/segment_image", json=body)
                    http_times.append(time.perf_counter() - started)
                    response.raise_for_status()
            polygon_points = len(response.json()["masks"][0])
        finally:
            serve.shutdown()
            ray.shutdown()
            redis_process.terminate()
            redis_process.wait(timeout=10)

    http_p50, bare_p50 = statistics.median(http_times), statistics.median(bare_times)
    http_p90 = float(np.percentile(http_times, 90))
    print(f"image {HEIGHT}x{WIDTH}, {args.clicks} clicks, {args.threads} threads, polygon: {polygon_points} points")
    print(f"bare in-process ONNX decoder call  p50 {bare_p50 * 1e3:7.1f} ms")
    print(f"follow-up click over HTTP          p50 {http_p50 * 1e3:7.1f} ms  (p90 {http_p90 * 1e3:.1f})")
    print(f"ratio (target <= 1.3)                  {http_p50 / bare_p50:7.2f}")


if __name__ == "__main__":
    main()
