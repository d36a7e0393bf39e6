"""The labelling page in headless Chromium (Debian's, through Playwright): click-to-overlay over 20 clicks, decoded
in the page (onnxruntime-web, WASM threads) against decoded by the service, and the time from opening an image to
its first mask; then whether fp16 on the wire would pay: the embedding's transfer time in the browser, and the
masks decoded from an fp16-rounded embedding against fp32."""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Bench, Report, Row, image_base64, sample_image

CHROMIUM = "/usr/bin/chromium"
CLICKS = 20
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "page.png"
"""The README's picture of the page, retaken by every run of this section."""


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _clicks(page: Any, rng: np.random.Generator, count: int, server: bool) -> tuple[list[float], list[float]]:
    """`count` single clicks on fresh objects; each one's click-to-overlay time (ms) as the page measured it, and
    its decode alone (the ONNX run in the page, or the server's answer)."""
    key = "serverClicks" if server else "clicks"
    box = page.locator("#markers").bounding_box()
    for _ in range(count):
        page.keyboard.press("Escape")  # reset: each click is a first click on an object, as the server sees one
        page.wait_for_function("!window.samPage.state.busy")
        before = page.evaluate(f"window.samPage.state.timings.{key}.length")
        x, y = rng.uniform(0.05, 0.95, size=2)
        page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.wait_for_function(f"window.samPage.state.timings.{key}.length > {before} && !window.samPage.state.busy")
    timings: list[float] = page.evaluate(f"window.samPage.state.timings.{key}")
    decodes: list[float] = page.evaluate(f"window.samPage.state.timings.{'serverDecodes' if server else 'decodes'}")
    return timings[-count:], decodes[-count:]


def _open(page: Any, bench: Bench, path: Path) -> dict[str, Any]:
    page.goto(bench.base_url + "/")
    page.evaluate("window.samPage.decoderReady")
    page.set_input_files("#file", str(path))
    page.wait_for_function("window.samPage.ready", timeout=300_000)
    box = page.locator("#markers").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("window.samPage.state.timings.openToFirstMaskMs !== null", timeout=120_000)
    return dict(
        page.evaluate(
            """() => {
              const t = window.samPage.state.timings;
              const embed = performance.getEntriesByType("resource")
                .filter((e) => e.name.endsWith("/sam/embed_image")).at(-1);
              return {decoderLoadMs: t.decoderLoadMs, embedMs: t.embedMs, firstMaskMs: t.openToFirstMaskMs,
                      threads: window.samPage.state.decoder.threads,
                      transferMs: embed ? embed.responseEnd - embed.responseStart : null,
                      transferBytes: embed ? embed.encodedBodySize : null};
            }"""
        )
    )


def _screenshot(page: Any) -> None:
    """A second object, by a box over the red rectangle, and the page as the annotator sees it."""
    page.keyboard.press("n")
    box = page.locator("#markers").bounding_box()
    corners = [(1680, 180), (2120, 720)]  # the red rectangle of sample_image, in its 2250x1500 pixels
    points = [(box["x"] + x / 2250 * box["width"], box["y"] + y / 1500 * box["height"]) for x, y in corners]
    before = page.evaluate("window.samPage.state.timings.clicks.length")
    page.mouse.move(*points[0])
    page.mouse.down()
    page.mouse.move(*points[1], steps=4)
    page.mouse.up()
    page.wait_for_function(f"window.samPage.state.timings.clicks.length > {before} && !window.samPage.state.busy")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    page.keyboard.press("n")


def fp16_masks(bench: Bench, pixels: np.ndarray, clicks: int = 20) -> tuple[float, float]:
    """Mean and worst IoU of masks decoded from the fp16-rounded embedding against the fp32 one (same clicks)."""
    import onnxruntime

    from sam_core.embedding import ImageEmbedding
    from sam_core.frames import MASK_INPUT_SHAPE, preprocess_shape
    from sam_core.model.prompts import build_prompt, onnx_prompt_inputs

    value = image_base64(pixels)
    with httpx.Client(base_url=bench.base_url, timeout=300) as http:
        graph = http.get("/sam/decoder.onnx").content
        embedded = http.post("/sam/embed_image", json={"image": {"type": "base64", "value": value}, "format": "binary"})
    array = np.load(io.BytesIO(embedded.content))
    size = (pixels.shape[0], pixels.shape[1])
    embedding = ImageEmbedding(embedding=array, original_size=size, input_size=preprocess_shape(size))
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    ious = []
    for _ in range(clicks):
        point = [float(rng.uniform(0, size[1] - 1)), float(rng.uniform(0, size[0] - 1))]
        prompt = build_prompt([point], [1], embedding.original_size)
        coords, labels = onnx_prompt_inputs(prompt, embedding.original_size)
        masks = []
        for candidate in (array, array.astype(np.float16).astype(np.float32)):
            out, _, _ = session.run(
                None,
                {
                    "image_embeddings": candidate,
                    "point_coords": coords,
                    "point_labels": labels,
                    "mask_input": np.zeros(MASK_INPUT_SHAPE, np.float32),
                    "has_mask_input": np.zeros(1, np.float32),
                    "orig_im_size": np.array(size, np.float32),
                },
            )
            masks.append(out[0, 0] > 0)
        union = np.logical_or(*masks).sum()
        ious.append(float(np.logical_and(*masks).sum() / union) if union else 1.0)
    return statistics.mean(ious), min(ious)


def page_clicks(bench: Bench, report: Report) -> None:
    from playwright.sync_api import sync_playwright

    bench.deploy("vit_tiny", decoders=2, decoder_threads=1)
    rng = np.random.default_rng(0)
    images = {
        "640x480": np.asarray(Image.fromarray(sample_image()).resize((640, 480))).copy(),
        "2250x1500": sample_image(),
    }
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for label, pixels in images.items():
            path = Path(tmp) / f"{label}.png"
            Image.fromarray(pixels).save(path)
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            opened = _open(page, bench, path)
            if label == "640x480":
                _screenshot(page)
            client, client_decodes = _clicks(page, rng, CLICKS, server=False)
            page.keyboard.press("s")
            server, server_decodes = _clicks(page, rng, CLICKS, server=True)
            page.close()
            report.add(
                Row(
                    f"page click-to-overlay p50, {label}: in the page vs the server",
                    f"{_p(client, 50):.1f} ms",
                    f"{_p(server, 50):.1f} ms",
                    _p(client, 50) / _p(server, 50),
                    notes=[
                        f"p90 {_p(client, 90):.1f} vs {_p(server, 90):.1f} ms over {CLICKS} clicks each; "
                        f"onnxruntime-web on {opened['threads']} WASM threads",
                        f"decode alone p50: ONNX run in the page {_p(client_decodes, 50):.1f} ms, the server's answer "
                        f"{_p(server_decodes, 50):.1f} ms (the rest: thresholding and drawing the overlay)",
                        f"open -> embedded {opened['embedMs']:.0f} ms, open -> first mask {opened['firstMaskMs']:.0f} "
                        f"ms (decoder graph loaded in {opened['decoderLoadMs']:.0f} ms at page load)",
                        f"embedding transfer {opened['transferMs']:.1f} ms for {opened['transferBytes']} B on loopback",
                    ],
                )
            )
        browser.close()
    mean_iou, worst_iou = fp16_masks(bench, images["640x480"])
    report.add(
        Row(
            "fp16 embedding on the wire: masks vs fp32 (IoU)",
            f"mean {mean_iou:.4f}",
            f"worst {worst_iou:.4f}",
            mean_iou,
            notes=["2 MiB instead of 4 MiB: at 100 Mbit/s 0.17 s less per image opened; nothing on loopback or a LAN"],
        )
    )
