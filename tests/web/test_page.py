"""The labelling page in a real headless Chromium (Debian's, driven by Playwright for Python), against the real
app over HTTP: the mask the page draws for a click or a box equals `/sam/segment_image`'s for the same prompt,
decoded in the page by onnxruntime-web on the service's graph or on the server; undo, objects, the COCO and PNG
exports; and every failure (a non-image, an image over the limits, the service not answering, onnxruntime-web
missing) shows a message on the page."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from deployments.ui import MEDIA_TYPES
from tests.conftest import ServeApp, photo_jpeg, rle_to_mask
from tests.deployments.test_api import iou

pytestmark = pytest.mark.slow

WEB = Path(__file__).resolve().parents[2] / "web"
MASK_IOU = 0.99


def open_page(page: Any, serve_app: ServeApp) -> None:
    page.goto(serve_app.url + "/")
    page.evaluate("window.samPage.decoderReady")


def write_image(tmp_path: Path, size: tuple[int, int], name: str = "picture.jpg") -> tuple[Path, np.ndarray]:
    """A fresh photo-like JPEG of `size` (height, width), and its pixels as the service decodes them."""
    data = photo_jpeg(np.random.default_rng(), size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def open_image(page: Any, path: Path) -> None:
    page.set_input_files("#file", str(path))
    page.wait_for_function("window.samPage.ready", timeout=120_000)


def open_fresh_image(page: Any, serve_app: ServeApp, tmp_path: Path, size: tuple[int, int]) -> None:
    """The page opened with its decoder ready, then a fresh photo of `size` (height, width) opened on it."""
    path, _ = write_image(tmp_path, size)
    open_page(page, serve_app)
    open_image(page, path)


def screen_point(page: Any, x: float, y: float) -> tuple[float, float]:
    """Where on the screen the image pixel (x, y) is drawn (the canvas is scaled to fit the window)."""
    box = page.locator("#markers").bounding_box()
    size = page.evaluate("[window.samPage.state.image.width, window.samPage.state.image.height]")
    return box["x"] + (x + 0.5) * box["width"] / size[0], box["y"] + (y + 0.5) * box["height"] / size[1]


def decoded_count(page: Any) -> int:
    return int(
        page.evaluate("window.samPage.state.timings.clicks.length + window.samPage.state.timings.serverClicks.length")
    )


def wait_for_decode(page: Any, before: int) -> None:
    page.wait_for_function(
        f"window.samPage.state.timings.clicks.length + window.samPage.state.timings.serverClicks.length > {before}"
        " && !window.samPage.state.busy",
        timeout=60_000,
    )


def click(page: Any, x: float, y: float, *, negative: bool = False) -> None:
    before = decoded_count(page)
    sx, sy = screen_point(page, x, y)
    page.mouse.click(sx, sy, button="right" if negative else "left")
    wait_for_decode(page, before)


def overlay_mask(page: Any) -> np.ndarray:
    """The overlay canvas's pixels as a (H, W) bool mask: what the annotator sees drawn over the image."""
    height, width, bits = page.evaluate(
        """() => {
          const canvas = document.getElementById("overlay");
          const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
          let bits = "";
          for (let i = 3; i < data.length; i += 4) bits += data[i] ? "1" : "0";
          return [canvas.height, canvas.width, bits];
        }"""
    )
    return np.frombuffer(bits.encode(), dtype=np.uint8).reshape(height, width) == ord("1")


def current_prompt(page: Any) -> dict[str, Any]:
    """The current object's prompt as the page recorded it (original-image pixels), as a segment_image body."""
    prompt = page.evaluate(
        "(() => { const s = window.samPage.state; const o = s.objects[s.current];"
        " return {image_id: s.image.id, points: o.points, box: o.box}; })()"
    )
    body: dict[str, Any] = {
        "image_id": prompt["image_id"],
        "point_coords": [[p["x"], p["y"]] for p in prompt["points"]],
        "point_labels": [p["label"] for p in prompt["points"]],
        "format": "rle",
    }
    if prompt["box"] is not None:
        body["box"] = prompt["box"]
    return body


def server_mask(serve_app: ServeApp, body: dict[str, Any]) -> np.ndarray:
    response = httpx.post(serve_app.url + "/sam/segment_image", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return rle_to_mask(response.json()["masks"][0])


def message(page: Any) -> str:
    page.wait_for_selector("#message:not([hidden])", timeout=60_000)
    return str(page.text_content("#message"))


# ---- served offline ---------------------------------------------------------------------------------------


def test_the_root_redirects_to_the_page_which_is_cross_origin_isolated(serve_app: ServeApp) -> None:
    with httpx.Client(base_url=serve_app.url, timeout=30) as http:
        root = http.get("/")
        assert root.status_code == 307
        assert root.headers["location"] == "/ui/"
        page = http.get("/ui/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cross-origin-opener-policy"] == "same-origin"
        assert page.headers["cross-origin-embedder-policy"] == "require-corp"
        again = http.get("/ui/", headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304
        assert not again.content


def test_every_page_file_is_served_as_it_is_on_disk(serve_app: ServeApp) -> None:
    with httpx.Client(base_url=serve_app.url, timeout=30) as http:
        for file in sorted((WEB / "ui").iterdir()):
            response = http.get(f"/ui/{file.name}")
            assert response.status_code == 200, file.name
            assert response.content == file.read_bytes(), file.name
            assert response.headers["content-type"] == MEDIA_TYPES[file.suffix], file.name


def test_onnxruntime_web_is_served_from_the_installed_package(serve_app: ServeApp) -> None:
    dist = WEB / "node_modules" / "onnxruntime-web" / "dist"
    lock = json.loads((WEB / "package-lock.json").read_text())
    assert (
        lock["packages"]["node_modules/onnxruntime-web"]["version"]
        == json.loads((WEB / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    )
    with httpx.Client(base_url=serve_app.url, timeout=30) as http:
        wasm = http.get("/ui/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm")
        assert wasm.status_code == 200
        assert wasm.headers["content-type"] == "application/wasm"
        assert wasm.content == (dist / "ort-wasm-simd-threaded.wasm").read_bytes()
        assert (
            http.get("/ui/vendor/onnxruntime-web/ort.wasm.min.mjs").content == (dist / "ort.wasm.min.mjs").read_bytes()
        )


@pytest.mark.parametrize("path", ["/ui/..%2Fpackage.json", "/ui/vendor/onnxruntime-web/ort.all.mjs", "/ui/a.b.js"])
def test_nothing_outside_the_page_and_its_runtime_is_served(serve_app: ServeApp, path: str) -> None:
    response = httpx.get(serve_app.url + path, timeout=30)
    assert response.status_code == 404
    assert "sam-serve-ui" not in response.text
    assert len(response.content) < 200


def test_the_page_loads_nothing_from_another_origin() -> None:
    for file in (WEB / "ui").iterdir():
        text = file.read_text()
        assert not re.search(r"https?://|//cdn|unpkg|jsdelivr", text), f"{file.name} names another origin"


# ---- in the browser -----------------------------------------------------------------------------------------


def test_a_click_decoded_in_the_page_draws_the_servers_mask(page: Any, serve_app: ServeApp, tmp_path: Path) -> None:
    path, pixels = write_image(tmp_path, (240, 360))
    open_page(page, serve_app)
    state = page.evaluate("({isolated: crossOriginIsolated, threads: window.samPage.state.decoder?.threads ?? 0})")
    assert state["isolated"], state  # WASM threads need the app's COOP + COEP headers
    assert state["threads"] >= 2, state
    open_image(page, path)
    assert page.evaluate("[window.samPage.state.image.height, window.samPage.state.image.width]") == [240, 360]
    click(page, 150, 100)
    drawn = overlay_mask(page)
    expected = server_mask(serve_app, current_prompt(page))
    assert drawn.shape == pixels.shape[:2]
    assert drawn.any()
    assert iou(drawn, expected) >= MASK_IOU
    page.screenshot(path=str(tmp_path / "page.png"))

    click(page, 60, 200, negative=True)  # a second click refines the same object
    body = current_prompt(page)
    assert body["point_labels"] == [1, 0]
    assert iou(overlay_mask(page), server_mask(serve_app, body)) >= MASK_IOU


def test_a_box_then_undo_in_the_page(page: Any, serve_app: ServeApp, tmp_path: Path) -> None:
    open_fresh_image(page, serve_app, tmp_path, (300, 200))
    click(page, 100, 150)
    after_click = overlay_mask(page)
    before = decoded_count(page)
    x0, y0 = screen_point(page, 30, 40)
    x1, y1 = screen_point(page, 160, 250)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2)
    page.mouse.move(x1, y1)
    page.mouse.up()
    wait_for_decode(page, before)
    body = current_prompt(page)
    assert body["box"] is not None
    assert body["point_labels"] == [1]
    assert iou(overlay_mask(page), server_mask(serve_app, body)) >= MASK_IOU

    before = decoded_count(page)
    page.keyboard.press("z")
    wait_for_decode(page, before)
    assert "box" not in current_prompt(page)
    assert iou(overlay_mask(page), after_click) >= MASK_IOU


def test_server_decoding_draws_the_same_mask(page: Any, serve_app: ServeApp, tmp_path: Path) -> None:
    open_fresh_image(page, serve_app, tmp_path, (200, 260))
    click(page, 120, 80)
    in_page = overlay_mask(page)
    page.keyboard.press("z")
    page.wait_for_function("!window.samPage.state.busy")
    page.keyboard.press("s")
    assert page.is_checked("#server-decode")
    click(page, 120, 80)
    assert page.evaluate("window.samPage.state.timings.serverClicks.length") == 1
    assert iou(overlay_mask(page), in_page) >= MASK_IOU


def test_objects_export_as_coco_rle_and_a_png_label_map(page: Any, serve_app: ServeApp, tmp_path: Path) -> None:
    open_fresh_image(page, serve_app, tmp_path, (180, 240))
    click(page, 50, 60)
    first = page.evaluate("Array.from(window.samPage.state.objects[0].mask)")
    page.keyboard.press("n")
    click(page, 190, 130)
    masks = [np.array(first, dtype=bool).reshape(180, 240)]
    masks.append(
        np.array(page.evaluate("Array.from(window.samPage.state.objects[1].mask)"), dtype=bool).reshape(180, 240)
    )

    with page.expect_download() as download:
        page.keyboard.press("e")
    document = json.loads(Path(download.value.path()).read_text())
    assert document["images"][0]["height"] == 180
    assert document["images"][0]["width"] == 240
    annotations = document["annotations"]
    assert len(annotations) == 2
    for annotation, mask in zip(annotations, masks, strict=True):
        decoded = rle_to_mask(annotation["segmentation"])  # pycocotools reads the page's RLE
        assert np.array_equal(decoded, mask)
        assert annotation["area"] == int(mask.sum())
        ys, xs = np.nonzero(mask)
        assert annotation["bbox"] == [
            int(xs.min()),
            int(ys.min()),
            int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1),
        ]

    with page.expect_download() as download:
        page.keyboard.press("p")
    label_map = np.asarray(Image.open(download.value.path()).convert("L"))
    assert label_map.shape == (180, 240)
    assert np.array_equal(label_map == 2, masks[1])  # a later object is drawn over an earlier one
    assert np.array_equal((label_map == 1) | (label_map == 2), masks[0] | masks[1])


# ---- failures shown on the page -----------------------------------------------------------------------------


def test_a_file_that_is_not_an_image_gets_a_message(page: Any, serve_app: ServeApp, tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"these are not the pixels you are looking for\n" * 20)
    open_page(page, serve_app)
    page.set_input_files("#file", str(path))
    assert "notes.jpg is not an image" in message(page)
    assert page.is_hidden("#stage")


def test_an_image_over_the_limits_gets_the_services_reason(page: Any, serve_app: ServeApp, tmp_path: Path) -> None:
    side = serve_app.settings.images.max_side + 1
    path = tmp_path / "strip.png"
    Image.new("RGB", (side, 1), (200, 30, 30)).save(path)  # a few hundred bytes, one pixel too long
    open_page(page, serve_app)
    page.set_input_files("#file", str(path))
    text = message(page)
    assert "413" in text, text
    assert str(serve_app.settings.images.max_side) in text, text


def test_the_service_not_answering_gets_a_message(page: Any, serve_app: ServeApp, tmp_path: Path) -> None:
    path, _ = write_image(tmp_path, (100, 120))
    open_page(page, serve_app)
    page.route("**/sam/embed_image", lambda route: route.abort("connectionrefused"))
    page.set_input_files("#file", str(path))
    assert "did not answer" in message(page)


def test_without_onnxruntime_web_the_page_decodes_on_the_server(page: Any, serve_app: ServeApp, tmp_path: Path) -> None:
    page.route("**/vendor/onnxruntime-web/**", lambda route: route.fulfill(status=404, body="missing"))
    path, _ = write_image(tmp_path, (160, 200))
    open_page(page, serve_app)
    assert "decoding in the page is unavailable" in message(page)
    assert page.is_checked("#server-decode")
    assert page.is_disabled("#server-decode")
    open_image(page, path)
    click(page, 80, 90)
    assert iou(overlay_mask(page), server_mask(serve_app, current_prompt(page))) >= MASK_IOU


def test_a_binary_embedding_names_its_image_and_size_in_headers(serve_app: ServeApp) -> None:
    from urllib.parse import unquote

    from tests.deployments.test_api import image_payload

    pixels = np.random.default_rng().integers(0, 256, size=(90, 130, 3), dtype=np.uint8)
    image_id = "ünïcode id/with spaces"  # any printable id; a header is latin-1, so it travels percent-encoded
    body = {"image": image_payload(pixels), "image_id": image_id, "format": "binary"}
    response = httpx.post(serve_app.url + "/sam/embed_image", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert unquote(response.headers["X-Image-Id"]) == image_id
    assert response.headers["X-Original-Size"] == "90,130"
    assert response.headers["X-Cached"] == "false"
    again = httpx.post(serve_app.url + "/sam/embed_image", json=body, timeout=60)
    assert again.headers["X-Cached"] == "true"


def test_the_container_image_carries_the_page_and_its_runtime() -> None:
    from deployments.ui import ORT_FILES

    dockerfile = (WEB.parent / "Dockerfile").read_text()
    assert "web/ui ./web/ui" in dockerfile
    for name in ORT_FILES:
        assert f"web/node_modules/onnxruntime-web/dist/{name}" in dockerfile
    assert "ENV SAM_UI_DIR=/home/ray/sam-serve/web" in dockerfile
