"""`sam-serve warm`: a Ray Data job embedding a dataset into the shared cache through the running app's handle,
skipping what is cached (a rerun resumes), reporting bad files; afterwards a first click costs one decoder call."""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sam_cli.warm import EMBEDDING_PAYLOAD_BYTES, WarmSourceError, list_sources, warm
from tests.conftest import APP_NAME, ServeApp, photo_jpeg

REPO = Path(__file__).resolve().parents[2]


def encoder_stats() -> dict[str, int]:
    from ray import serve

    stats: dict[str, int] = serve.get_deployment_handle("SamEncoder", app_name=APP_NAME).stats.remote().result()
    return stats


def write_images(root: Path, count: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = root / ("nested" if i % 2 else "") / f"image-{i}.{'jpg' if i % 3 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jpg":
            path.write_bytes(photo_jpeg(rng, (120 + 8 * i, 160)))
        else:
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (90, 140 + 4 * i, 3), dtype=np.uint8)).save(buffer, format="PNG")
            path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def test_sources_are_a_folder_a_glob_or_a_manifest(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "data", 4, seed=1)
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    assert list_sources(str(tmp_path / "data")) == sorted(str(p) for p in paths)
    assert list_sources(str(tmp_path / "data" / "**" / "*.jpg")) == sorted(str(p) for p in paths if p.suffix == ".jpg")
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"# a comment\ndata/image-0.png\n\n{paths[1]}\nhttps://example.com/a.jpg\n")
    assert list_sources(str(manifest)) == [
        str(tmp_path / "data/image-0.png"),
        str(paths[1]),
        "https://example.com/a.jpg",
    ]
    with pytest.raises(WarmSourceError, match="no folder"):
        list_sources(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WarmSourceError, match="names no images"):
        list_sources(str(tmp_path / "empty"))


@pytest.mark.slow
def test_warm_embeds_once_resumes_and_reports_bad_files(serve_app: ServeApp, tmp_path: Path) -> None:
    images = write_images(tmp_path / "data", 6, seed=int.from_bytes(os.urandom(4), "little"))
    (tmp_path / "data" / "broken.jpg").write_bytes(b"\xff\xd8 this is no JPEG")
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join([*(str(p) for p in images), "data/broken.jpg", "data/missing.png"]) + "\n")
    sources = list_sources(str(manifest))

    before = encoder_stats()["images_embedded"]
    first = warm(sources, app_name=APP_NAME, concurrency=2, batch_size=3, progress=False)
    assert (first.images, first.embedded, first.skipped) == (8, 6, 0)
    reasons = dict(first.failed)
    assert set(reasons) == {str(tmp_path / "data/broken.jpg"), str(tmp_path / "data/missing.png")}
    assert reasons[str(tmp_path / "data/broken.jpg")].startswith("ImageDecodeError")
    assert reasons[str(tmp_path / "data/missing.png")].startswith("unreadable: FileNotFoundError")
    assert first.bytes_cached == 6 * EMBEDDING_PAYLOAD_BYTES
    assert encoder_stats()["images_embedded"] - before == 6

    again = warm(sources, app_name=APP_NAME, concurrency=2, batch_size=3, progress=False)
    assert (again.embedded, again.skipped, len(again.failed)) == (0, 6, 2)
    assert encoder_stats()["images_embedded"] - before == 6  # a rerun embeds nothing

    # The first click on a warmed image (sent with its bytes, as a client does) costs one decoder call.
    body = {
        "image": {"type": "base64", "value": base64.b64encode(images[3].read_bytes()).decode()},
        "point_coords": [[40, 50]],
        "point_labels": [1],
        "format": "rle",
    }
    response = httpx.post(f"{serve_app.url}/sam/segment_image", json=body, timeout=60)
    assert response.status_code == 200, response.text
    stages = dict(re.findall(r"(\w+);dur=([\d.]+)", response.headers["Server-Timing"]))
    assert "decode" in stages
    assert "encoder" not in stages
    assert encoder_stats()["images_embedded"] - before == 6


@pytest.mark.slow
def test_pixels_the_workers_prepare_embed_as_the_ingress_own_decode_does(serve_app: ServeApp, tmp_path: Path) -> None:
    from sam_core.errors import InvalidInput
    from sam_core.wire.images import encoded_file, encoder_input
    from sam_core.wire.messages import WarmImage
    from sam_core.wire.schemas import EmbedImageRequest, ImagePayload

    (image,) = write_images(tmp_path, 1, seed=int.from_bytes(os.urandom(4), "little"))
    data = image.read_bytes()
    limits = serve_app.handle.image_limits.remote().result()
    assert limits == serve_app.settings.images
    prepared = encoder_input(encoded_file(data, "image"), limits)
    assert serve_app.handle.warm_cached.remote([prepared.content_id]).result() == [False]
    assert serve_app.handle.warm.remote(WarmImage(prepared)).result().cached is False
    assert serve_app.handle.warm_cached.remote([prepared.content_id]).result() == [True]

    payload = ImagePayload(type="base64", value=base64.b64encode(data).decode())
    warmed = serve_app.handle.embed.remote(EmbedImageRequest(image=payload)).result()
    assert warmed.response.cached
    assert warmed.response.image_id == prepared.content_id
    # The same bytes under an id of the caller's own: decoded by the ingress and embedded anew.
    own = serve_app.handle.embed.remote(EmbedImageRequest(image=payload, image_id=f"own-{image.name}")).result()
    assert not own.response.cached
    np.testing.assert_array_equal(warmed.embedding, own.embedding)

    with pytest.raises(InvalidInput, match="sha256") as caught:
        serve_app.handle.warm_cached.remote([prepared.content_id, "my-image"]).result()
    assert caught.value.field == "content_ids[1]"
    wrong_frame = WarmImage(dataclasses.replace(prepared, original_size=(prepared.original_size[1], 7)))
    with pytest.raises(InvalidInput, match="input frame") as caught:
        serve_app.handle.warm.remote(wrong_frame).result()
    assert caught.value.field == "pixels"


@pytest.mark.slow
def test_the_command_warms_through_a_ray_address(serve_app: ServeApp, tmp_path: Path) -> None:
    import ray

    write_images(tmp_path / "data", 3, seed=int.from_bytes(os.urandom(4), "little"))
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "sam_cli", "warm", str(tmp_path / "data"), "--address", address, "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(
        r"warmed 3 images in [\d.]+ s \([\d.]+ images/s\): 3 embedded, 0 already cached, 0 failed", done.stdout
    )

    missing_app = [*command[:5], "--address", address, "--app", "no-such-app", "--no-progress"]
    refused = subprocess.run(missing_app, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert refused.returncode == 2
    assert "no-such-app" in refused.stderr


@pytest.mark.slow
def test_the_python_example_warms_too(serve_app: ServeApp, tmp_path: Path) -> None:
    import ray

    write_images(tmp_path / "data", 2, seed=int.from_bytes(os.urandom(4), "little"))
    (tmp_path / "data" / "bad.png").write_bytes(b"no PNG")
    address = ray.get_runtime_context().gcs_address
    example = REPO / "examples" / "warm_dataset.py"
    command = [sys.executable, str(example), str(tmp_path / "data"), "--address", address]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 embedded, 0 already cached" in done.stdout
    assert re.search(r"failed: .*bad\.png: ImageDecodeError", done.stdout), done.stdout
