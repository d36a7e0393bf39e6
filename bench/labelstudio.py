"""Label Studio as a client: interactive clicks through /labelstudio/predict as Label Studio sends them (task image
on a token-checking file host, brush RLE answers), vit_b, 1500x2250 JPEGs, 2 decoder replicas.

  - the second annotator's first click on an image the first annotator opened (cached: one decoder call) vs the
    first annotator's first click (fetch + encoder + decoder), which is what Label Studio's own SAM backend pays
    on every image a worker process has not embedded last (it keeps one image's embedding per process);
  - clicks per second with 4 annotators clicking at once, each on their own image, vs one annotator alone.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import HEIGHT, WIDTH, Bench, Report, Row, median, ms, sample_image
from labelstudio_side import FileHost, keypoint, predict_body

TOKEN = "0123456789abcdef0123456789abcdef01234567"
ANNOTATORS = 4


def _jpeg(variant: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(sample_image(variant)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _click(client: httpx.Client, path: str, n: int) -> float:
    context = [keypoint(20 + (n * 7) % 60, 30 + (n * 11) % 40, (WIDTH, HEIGHT))]
    started = time.perf_counter()
    response = client.post("/labelstudio/predict", json=predict_body(path, context))
    seconds = time.perf_counter() - started
    response.raise_for_status()
    assert response.json()["results"][0]["result"][0]["value"]["rle"]
    return seconds


def _annotator(url: str, path: str, seconds: float) -> list[float]:
    with httpx.Client(base_url=url, timeout=300) as client:
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            times.append(_click(client, path, len(times)))
        return times


def labelstudio_clicks(bench: Bench, report: Report, repeats: int = 3, seconds: float = 10.0) -> None:
    from ray import serve

    print("[17] Label Studio: clicks through /labelstudio/predict (vit_b, 1500x2250 JPEG)", flush=True)
    host = FileHost(TOKEN, "unused")
    paths = [f"/data/upload/1/photo-{i}.jpg" for i in range(repeats + ANNOTATORS + 1)]
    for i, path in enumerate(paths):
        host.files[path] = _jpeg(200 + i)
    with host.running():
        bench.deploy("vit_b", decoders=2, decoder_threads=1, labelstudio_url=host.url, labelstudio_token=TOKEN)
        encoder = serve.get_deployment_handle("SamEncoder", app_name="sam")
        first, second = [], []
        with httpx.Client(base_url=bench.base_url, timeout=300) as a, httpx.Client(base_url=bench.base_url) as b:
            _click(a, paths[-1], 0)  # warm-up: model loaded, sessions made
            for i in range(repeats):
                before = encoder.stats.remote().result()["images_embedded"]
                first.append(_click(a, paths[i], 0))
                second.append(_click(b, paths[i], 1))
                assert encoder.stats.remote().result()["images_embedded"] - before == 1
                print(f"    first annotator {ms(first[-1])}, second annotator's first click {ms(second[-1])}")
        first_s, second_s = median(first), median(second)
        report.add(
            Row(
                "Label Studio: second annotator's first click on an embedded image (vit_b, 1500x2250)",
                ms(second_s),
                f"{ms(first_s)} (first click: fetch + encoder, what a worker without the image pays)",
                first_s / second_s,
                notes=[f"image fetched from the file host {host.requests[paths[0]]} time(s) for both annotators"],
            )
        )
        own = paths[repeats : repeats + ANNOTATORS]
        with httpx.Client(base_url=bench.base_url, timeout=300) as client:
            for path in own:
                _click(client, path, 0)  # each annotator's image embedded
        alone = _annotator(bench.base_url, own[0], seconds)
        with ThreadPoolExecutor(ANNOTATORS) as pool:
            together = list(pool.map(lambda path: _annotator(bench.base_url, path, seconds), own))
        rate_alone = len(alone) / seconds
        clicks = [t for times in together for t in times]
        rate_together = len(clicks) / seconds
        report.add(
            Row(
                f"Label Studio: clicks/s with {ANNOTATORS} annotators, each on their own image",
                f"{rate_together:.1f}/s (p50 {ms(median(clicks))})",
                f"{rate_alone:.1f}/s for one annotator (p50 {ms(median(alone))}); one worker re-embedding at "
                f"every image switch: {1 / first_s:.2f}/s",
                rate_together / rate_alone,
            )
        )
