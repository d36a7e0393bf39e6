"""`GET /sam/decoder.onnx` over real HTTP: the low-res graph a client downloads decodes a click, in its own ONNX
Runtime session with the service's upscaling, to the same mask as `/sam/segment_image` (the same graph, the same
inputs); the full graph's own upscaling to within a handful of pixels; its ETag revalidates with a 304; it names
its model."""

from __future__ import annotations

import hashlib
import io

import httpx
import numpy as np
import onnxruntime
import pytest

from sam_core.embedding import ImageEmbedding
from sam_core.frames import MASK_INPUT_SHAPE, preprocess_shape
from sam_core.model.decoder import upscale_logits
from sam_core.model.prompts import build_prompt, onnx_prompt_inputs
from sam_core.wire.npy import npz_to_segment
from tests.conftest import ServeApp
from tests.deployments.test_api import image_payload

pytestmark = pytest.mark.slow

ROUTE = "/sam/decoder.onnx"


FULL_GRAPH_PIXELS = 1e-3
"""Most of an image's pixels on which the full graph's upscaling (ONNX Resize) may answer otherwise than the
service's (OpenCV): logits within rounding of 0 (measured: 0-1 of 46,800 here; a wrong crop or size flips
thousands)."""


def client_decode(graph: bytes, embedding: ImageEmbedding, point: list[float], *, low_res: bool) -> np.ndarray:
    """A click decoded as a client would: its own session on the downloaded bytes, the server's transform; the
    low-res graph's logits upscaled as the service documents."""
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    prompt = build_prompt([point], [1], embedding.original_size)
    coords, labels = onnx_prompt_inputs(prompt, embedding.original_size)
    feeds = {
        "image_embeddings": embedding.embedding,
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": np.zeros(MASK_INPUT_SHAPE, np.float32),
        "has_mask_input": np.zeros(1, np.float32),
    }
    if low_res:
        scores, logits = session.run(None, feeds)
        assert [output.name for output in session.get_outputs()] == ["iou_predictions", "low_res_masks"]
        assert scores.shape == (1, 1)
        assert logits.shape == (1, 1, 256, 256)
        masks = upscale_logits(logits[0], embedding.original_size)[None]
    else:
        feeds["orig_im_size"] = np.array(embedding.original_size, np.float32)
        masks, _, _ = session.run(None, feeds)
    mask: np.ndarray = masks[0, 0] > 0.0  # (1, 1, H, W): one prompt, the single-mask graph's one mask
    return mask


@pytest.mark.parametrize("low_res", [True, False], ids=["low_res", "full"])
def test_the_downloaded_graph_decodes_a_click_as_the_service_does(serve_app: ServeApp, low_res: bool) -> None:
    rng = np.random.default_rng()
    pixels = rng.integers(0, 256, size=(180, 260, 3), dtype=np.uint8)
    point = [100.0, 70.0]
    with httpx.Client(base_url=serve_app.url, timeout=60) as http:
        response = http.get(ROUTE, params={"low_res": "true"} if low_res else {})
        assert response.status_code == 200, response.text
        assert response.headers["X-Decoder-Variant"] == ("single-lowres" if low_res else "single")
        graph = response.content
        assert response.headers["ETag"] == f'"{hashlib.sha256(graph).hexdigest()}"'
        assert response.headers["X-Model-Id"] == http.get("/readyz").json()["model_id"]
        assert response.headers["Cache-Control"] == "no-cache"
        embedded = http.post("/sam/embed_image", json={"image": image_payload(pixels), "format": "binary"})
        assert embedded.status_code == 200, embedded.text
        array = np.load(io.BytesIO(embedded.content))
        embedding = ImageEmbedding(array, original_size=(180, 260), input_size=preprocess_shape((180, 260)))
        body = {"image": image_payload(pixels), "point_coords": [point], "point_labels": [1], "format": "binary"}
        served = http.post("/sam/segment_image", json=body)
        assert served.status_code == 200, served.text
    masks, _ = npz_to_segment(served.content)
    ours = client_decode(graph, embedding, point, low_res=low_res)
    assert ours.shape == masks[0].shape
    differ = int((ours != masks[0]).sum())
    if low_res:
        assert differ == 0, f"{differ} pixels differ"
    else:
        assert differ <= FULL_GRAPH_PIXELS * ours.size, f"{differ} pixels differ"


def test_the_graph_revalidates_by_its_etag_and_each_variant_is_its_own(serve_app: ServeApp) -> None:
    with httpx.Client(base_url=serve_app.url, timeout=60) as http:
        single = http.get(ROUTE)
        again = http.get(ROUTE, headers={"If-None-Match": single.headers["ETag"]})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["ETag"] == single.headers["ETag"]
        stale = http.get(ROUTE, headers={"If-None-Match": '"not-this-one"'})
        assert stale.status_code == 200
        assert stale.content == single.content
        multi = http.get(ROUTE, params={"multimask": "true"})
        assert multi.status_code == 200
        assert multi.headers["X-Decoder-Variant"] == "multi"
        assert multi.headers["ETag"] != single.headers["ETag"]
        session = onnxruntime.InferenceSession(multi.content, providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()][:1] == ["image_embeddings"]
        low = http.get(ROUTE, params={"multimask": "true", "low_res": "true"})
        assert low.status_code == 200
        assert low.headers["X-Decoder-Variant"] == "multi-lowres"
        assert len({low.headers["ETag"], multi.headers["ETag"], single.headers["ETag"]}) == 3
        session = onnxruntime.InferenceSession(low.content, providers=["CPUExecutionProvider"])
        assert "orig_im_size" not in [i.name for i in session.get_inputs()]
        assert [o.name for o in session.get_outputs()] == ["iou_predictions", "low_res_masks"]
        for field in ("multimask", "low_res"):
            bad = http.get(ROUTE, params={field: "maybe"})
            assert bad.status_code == 422
            assert field in bad.text
