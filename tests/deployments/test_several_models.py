"""Several models served by one application: two tiny checkpoints of different seeds side by side.

Each answer must match its own model's `SamPredictor`, an embedding of one model must never reach the other's
decoder, and the encoder's batches must each be one model's (Serve splits `@serve.batch` by multiplexed model
id). One app here keeps at most 1 model per replica, so every switch between the models unloads one and loads
the other (Serve's LRU), and the answers must stay right through it.
"""

from __future__ import annotations

import asyncio
import base64
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from ray import serve
from segment_anything import SamPredictor

from sam_core.client import SamClient
from sam_core.embedding import round_to_storage
from sam_core.model.build import LoadedModel, load_model, make_random_checkpoint
from sam_core.model.encoder import ImageEncoder
from sam_core.settings import ModelSpec, Settings
from sam_core.wire.npy import npy_to_embedding
from sam_core.wire.schemas import SegmentImageRequest
from tests.conftest import ServeApp, second_app
from tests.deployments.test_api import (
    assert_error,
    expected_mask,
    image_payload,
    iou,
    new_image_id,
    random_image,
    relative_l2,
    segment_binary,
    unambiguous,
)

pytestmark = pytest.mark.slow

SEED_B = 7
MIN_IOU = 0.99


@dataclass
class TwoModels:
    http: httpx.Client
    url: str
    handle: object
    models: dict[str, LoadedModel]  # served id -> the same weights loaded here


def _served_models(
    serve_app: ServeApp, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[ModelSpec], dict[str, LoadedModel]]:
    path_b, sha_b = make_random_checkpoint(
        "vit_tiny", tmp_path_factory.mktemp("checkpoint-b") / "tiny_b.pth", seed=SEED_B
    )
    specs = [
        ModelSpec(id="tiny-a", model_type="vit_tiny", checkpoint=str(serve_app.checkpoint)),
        ModelSpec(id="tiny-b", model_type="vit_tiny", checkpoint=str(path_b), checkpoint_sha256=sha_b),
    ]
    cache = tmp_path_factory.mktemp("local-models")
    loaded = {
        spec.id: load_model("vit_tiny", checkpoint=spec.checkpoint, cache_dir=cache, device="cpu") for spec in specs
    }
    return specs, loaded


def _app(
    name: str,
    serve_app: ServeApp,
    tmp_path_factory: pytest.TempPathFactory,
    per_replica: int,
    extra: tuple[ModelSpec, ...] = (),
) -> Iterator[TwoModels]:
    specs, loaded = _served_models(serve_app, tmp_path_factory)
    specs += extra
    settings = serve_app.settings.model_copy(
        update={
            "models": tuple(specs),
            "max_models_per_replica": per_replica,
            "cache_dir": tmp_path_factory.mktemp(f"{name}-cache"),
        }
    )
    with second_app(name, settings) as handle, httpx.Client(base_url=f"{serve_app.url}/{name}", timeout=120) as http:
        yield TwoModels(http, f"{serve_app.url}/{name}", handle, loaded)


@pytest.fixture(scope="module")
def two(serve_app: ServeApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoModels]:
    """Both models served, both kept loaded on each replica; and a third whose checkpoint is not there."""
    broken = ModelSpec(id="broken", model_type="vit_tiny", checkpoint="/nonexistent/broken.pth")
    yield from _app("two-models", serve_app, tmp_path_factory, per_replica=2, extra=(broken,))


def _predictor(model: LoadedModel, pixels: np.ndarray) -> SamPredictor:
    predictor = SamPredictor(model.sam)
    predictor.set_image(pixels)
    return predictor


def _own_embedding(model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
    """What the service should cache for this image under this model (fp16-rounded, as the cache stores it)."""
    return round_to_storage(ImageEncoder(model.sam, device="cpu").embed_batch([pixels])[0].embedding)


# ---- configuration -------------------------------------------------------------------------------------------


def test_models_setting_lists_the_served_models_the_first_the_default(tmp_path: Path) -> None:
    settings = Settings(
        models=[{"id": "quality", "model_type": "vit_h"}, {"id": "fast", "model_type": "vit_b", "checkpoint": "/b"}]
    )
    assert [spec.id for spec in settings.served_models] == ["quality", "fast"]
    assert settings.default_model == "quality"
    fast = settings.for_model("fast")
    assert (fast.model_type, fast.checkpoint, fast.models) == ("vit_b", "/b", ())
    # Without `models`, the one model of model_type/checkpoint, named by its type (the seed's sam_version_id).
    single = Settings(model_type="vit_b", checkpoint="/x")
    assert [(s.id, s.model_type, s.checkpoint) for s in single.served_models] == [("vit_b", "vit_b", "/x")]


def test_models_setting_is_read_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAM_MODELS", '[{"id": "medsam", "model_type": "vit_b", "checkpoint": "/m.pth"}]')
    assert Settings.with_env_overrides({"model_type": "vit_h"}).served_models[0].id == "medsam"


@pytest.mark.parametrize(
    ("models", "words"),
    [
        ([{"id": "a", "model_type": "vit_b"}, {"id": "a", "model_type": "vit_h"}], "a repeated"),
        ([{"id": "a", "model_type": "vit_huge"}], "unknown model type 'vit_huge'"),
        ([{"id": "has space", "model_type": "vit_b"}], "pattern"),
        ([{"id": "a", "model_type": "vit_b", "checkpont": "/x"}], "checkpont"),
        ([{"id": "a", "model_type": "vit_b", "checkpoint_sha256": "abc"}], "64 hex digits"),
    ],
)
def test_bad_models_setting_is_refused_naming_it(models: list[dict[str, str]], words: str) -> None:
    from deployments.app import load_settings
    from sam_core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="models") as raised:
        load_settings({"models": models})
    assert words in str(raised.value)


@pytest.mark.parametrize("source", ["serve_config.yaml", "k8s/rayservice.yaml"])
def test_the_configs_example_of_several_models_is_valid(source: str) -> None:
    """The commented `models:` example in serve_config.yaml and the RayService is a valid setting."""
    from deployments.app import load_settings

    lines = (Path(__file__).resolve().parents[2] / source).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# models:")
    example = [lines[start].replace("# ", "", 1)]
    example += [line.replace("# ", "  ", 1) for line in lines[start + 1 :] if line.strip().startswith("#   - ")][:3]
    args = yaml.safe_load(textwrap.dedent("\n".join(example)).replace("<64 hex digits>", "ab" * 32))
    assert [spec.id for spec in load_settings(args, env_overrides=False).served_models] == ["vit_h", "vit_b", "medsam"]


# ---- the served app ------------------------------------------------------------------------------------------


def test_models_route_lists_both_with_their_sha256_and_loaded_replicas(two: TwoModels) -> None:
    pixels = random_image(np.random.default_rng())
    for model in ("tiny-a", "tiny-b"):  # each loaded on the encoder and a decoder
        segment_binary(
            two.http, {"image": image_payload(pixels), "model": model, "point_coords": [[5, 5]], "point_labels": [1]}
        )
    listed = {info["id"]: info for info in two.http.get("/sam/models").json()["models"]}
    assert list(listed) == ["tiny-a", "tiny-b", "broken"]
    assert listed["tiny-a"]["default"]
    assert not listed["tiny-b"]["default"]
    broken = listed.pop("broken")
    assert (broken["checkpoint_sha256"], broken["model_id"]) == (None, None)
    assert broken["loaded"] == {"encoder": 0, "decoder": 0}
    for model, info in listed.items():
        identity = two.models[model].identity
        assert info["model_type"] == "vit_tiny"
        assert info["checkpoint_sha256"] == identity.checkpoint_sha256
        assert info["model_id"] == identity.model_id
        assert info["loaded"]["encoder"] >= 1, info
        assert info["loaded"]["decoder"] >= 1, info
    assert listed["tiny-a"]["model_id"] != listed["tiny-b"]["model_id"]
    with SamClient(two.url) as client:
        assert [info.id for info in client.models()] == ["tiny-a", "tiny-b", "broken"]


def test_each_model_embeds_and_answers_as_its_own_predictor(two: TwoModels) -> None:
    rng = np.random.default_rng()
    pixels = random_image(rng)
    image_id = new_image_id()
    for model in ("tiny-b", "tiny-a"):
        body = {"image": image_payload(pixels), "image_id": image_id, "model": model, "format": "binary"}
        response = two.http.post("/sam/embed_image", json=body)
        assert response.status_code == 200, response.text
        got = npy_to_embedding(response.content)
        assert relative_l2(got, _own_embedding(two.models[model], pixels)) < 1e-3
    a = npy_to_embedding(two.http.post("/sam/embed_image", json={"image_id": image_id, "format": "binary"}).content)
    b_body = {"image_id": image_id, "format": "binary", "model": "tiny-b"}
    b = npy_to_embedding(two.http.post("/sam/embed_image", json=b_body).content)
    assert relative_l2(a, b) > 0.1, "the two seeds' embeddings must differ"
    for model in ("tiny-a", "tiny-b"):
        predictor = _predictor(two.models[model], pixels)
        prompt = unambiguous(
            predictor, lambda: {"point_coords": rng.uniform(10, 200, (1, 2)).round(1), "point_labels": np.array([1])}
        )
        points = prompt["point_coords"]
        masks, _ = segment_binary(
            two.http, {"image_id": image_id, "model": model, "point_coords": points.tolist(), "point_labels": [1]}
        )
        assert iou(masks[0], expected_mask(predictor, points, np.array([1]))) >= MIN_IOU, model


def test_one_models_embedding_never_reaches_the_others_decoder(two: TwoModels) -> None:
    pixels = random_image(np.random.default_rng())
    image_id = new_image_id()
    body = {"image": image_payload(pixels), "image_id": image_id, "model": "tiny-a"}
    assert two.http.post("/sam/embed_image", json=body).status_code == 200
    click = {"image_id": image_id, "point_coords": [[10, 10]], "point_labels": [1]}
    assert two.http.post("/sam/segment_image", json={**click, "model": "tiny-a"}).status_code == 200
    assert_error(two.http.post("/sam/segment_image", json={**click, "model": "tiny-b"}), 404, "image_id")
    assert_error(two.http.post("/sam/embed_image", json={"image_id": image_id, "model": "tiny-b"}), 404, "image_id")


def test_unknown_model_is_404_naming_what_is_served(two: TwoModels) -> None:
    for route in ("/sam/segment_image", "/sam/embed_image", "/sam/segment_everything"):
        body = assert_error(two.http.post(route, json={"image_id": "x", "model": "vit_h"}), 404, "model")
        assert "'tiny-a', 'tiny-b', 'broken'" in body["reason"], body
    body = assert_error(two.http.post("/sam/embed_image", json={"image_id": "x", "sam_version_id": "vit_h"}), 404,
                        "sam_version_id")  # fmt: skip
    assert body["error"] == "UnknownModel"
    assert_error(two.http.get("/sam/decoder.onnx", params={"model": "nope"}), 404, "model")


def test_sam_version_id_picks_a_served_id_or_the_first_of_that_type(two: TwoModels) -> None:
    pixels = random_image(np.random.default_rng())
    image_id = new_image_id()
    body = {"image": image_payload(pixels), "image_id": image_id, "model": "tiny-b"}
    assert two.http.post("/sam/embed_image", json=body).status_code == 200
    # Cached only for tiny-b: the seed's field naming tiny-b finds it; naming the type gets tiny-a (the first).
    assert two.http.post("/sam/embed_image", json={"image_id": image_id, "sam_version_id": "tiny-b"}).status_code == 200
    by_type = two.http.post("/sam/embed_image", json={"image_id": image_id, "sam_version_id": "vit_tiny"})
    assert_error(by_type, 404, "image_id")


def test_decoder_file_is_each_models_own(two: TwoModels) -> None:
    ids = {}
    for model in ("tiny-a", "tiny-b"):
        response = two.http.get("/sam/decoder.onnx", params={"model": model})
        assert response.status_code == 200
        ids[model] = response.headers["X-Model-Id"]
        assert ids[model] == two.models[model].identity.model_id
    default = two.http.get("/sam/decoder.onnx")
    assert default.headers["X-Model-Id"] == ids["tiny-a"]


def test_concurrent_embeds_of_both_models_each_get_their_own_models_embedding(two: TwoModels) -> None:
    """Eight new images at once, alternating models: batches that mixed models would give some image the
    other model's embedding."""
    rng = np.random.default_rng()
    images = [random_image(rng) for _ in range(8)]
    models = ["tiny-a", "tiny-b"] * 4

    async def embed_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=two.url, timeout=120) as client:
            calls = [
                client.post("/sam/embed_image", json={"image": image_payload(px), "model": m, "format": "binary"})
                for px, m in zip(images, models, strict=True)
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(embed_all())
    for pixels, model, response in zip(images, models, responses, strict=True):
        assert response.status_code == 200, response.text
        assert relative_l2(npy_to_embedding(response.content), _own_embedding(two.models[model], pixels)) < 1e-3


def test_handle_callers_name_the_model_in_the_request(two: TwoModels) -> None:
    rng = np.random.default_rng()
    pixels = random_image(rng)
    predictor = _predictor(two.models["tiny-b"], pixels)
    prompt = unambiguous(
        predictor, lambda: {"point_coords": rng.uniform(10, 200, (1, 2)).round(1), "point_labels": np.array([1])}
    )
    request = SegmentImageRequest(
        image=image_payload(pixels),
        model="tiny-b",
        point_coords=prompt["point_coords"].tolist(),
        point_labels=[1],
        format="binary",
    )
    result = two.handle.segment.remote(request).result()  # type: ignore[attr-defined]
    from sam_core.wire.npy import npz_to_segment

    masks, _ = npz_to_segment(result.body)
    assert iou(masks[0], expected_mask(predictor, prompt["point_coords"], np.array([1]))) >= MIN_IOU


def test_one_model_per_replica_unloads_and_reloads_and_stays_right(
    serve_app: ServeApp, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """max_models_per_replica 1: each switch unloads the other model (Serve's LRU); answers stay each model's."""
    rng = np.random.default_rng()
    for app in _app("one-model-each", serve_app, tmp_path_factory, per_replica=1):
        encoder = serve.get_deployment_handle("SamEncoder", app_name="one-model-each")
        decoder = serve.get_deployment_handle("SamDecoder", app_name="one-model-each")
        # The non-default model first: the start-up (default) model must make room for it, not sit beside it. A
        # new image each time, so the encoder runs (and switches) every time.
        for model in ("tiny-b", "tiny-a", "tiny-b", "tiny-a", "tiny-b"):
            pixels = random_image(rng)
            predictor = _predictor(app.models[model], pixels)
            body = {"image": image_payload(pixels), "model": model, "format": "binary"}
            got = npy_to_embedding(app.http.post("/sam/embed_image", json=body).content)
            assert relative_l2(got, _own_embedding(app.models[model], pixels)) < 1e-3, model
            prompt = unambiguous(
                predictor,
                lambda: {"point_coords": rng.uniform(10, 200, (1, 2)).round(1), "point_labels": np.array([1])},
            )
            points = prompt["point_coords"]
            masks, _ = segment_binary(
                app.http,
                {"image": image_payload(pixels), "model": model, "point_coords": points.tolist(), "point_labels": [1]},
            )
            assert iou(masks[0], expected_mask(predictor, points, np.array([1]))) >= MIN_IOU, model
            assert encoder.stats.remote().result()["models_held"] == 1
            assert decoder.stats.remote().result()["models_held"] == 1
        listed = {info["id"]: info["loaded"] for info in app.http.get("/sam/models").json()["models"]}
        # One model per replica: the last one used is the one each replica holds now.
        assert listed["tiny-b"] == {"encoder": 1, "decoder": 1}, listed
        assert listed["tiny-a"]["encoder"] == 0, listed


def test_warm_names_the_model_and_fills_only_its_cache(two: TwoModels, tmp_path: Path) -> None:
    """`sam-serve warm --model tiny-b`: the first tiny-b click on a warmed image has no encoder stage; tiny-a
    has embedded nothing of it."""
    from PIL import Image

    from sam_cli.warm import warm

    rng = np.random.default_rng()
    paths = []
    for index in range(3):
        path = tmp_path / f"warm-{index}.png"
        Image.fromarray(random_image(rng)).save(path)
        paths.append(path)
    summary = warm([str(p) for p in paths], app_name="two-models", model="tiny-b", concurrency=1, progress=False)
    assert (summary.embedded, summary.skipped, summary.failed) == (3, 0, [])
    again = warm([str(p) for p in paths], app_name="two-models", model="tiny-b", concurrency=1, progress=False)
    assert (again.embedded, again.skipped) == (0, 3)
    image = {"type": "base64", "value": base64.b64encode(paths[0].read_bytes()).decode()}
    click = {"image": image, "point_coords": [[20, 20]], "point_labels": [1]}
    warmed = two.http.post("/sam/segment_image", json={**click, "model": "tiny-b"})
    assert warmed.status_code == 200, warmed.text
    assert "encoder;" not in warmed.headers["Server-Timing"], warmed.headers["Server-Timing"]
    cold = two.http.post("/sam/segment_image", json={**click, "model": "tiny-a"})
    assert "encoder;" in cold.headers["Server-Timing"], cold.headers["Server-Timing"]
    unknown = warm([str(paths[0])], app_name="two-models", model="nope", concurrency=1, progress=False)
    assert unknown.embedded == 0
    assert unknown.failed[0][1].startswith("UnknownModel"), unknown.failed


def test_a_model_that_cannot_load_is_503_naming_it_and_the_others_keep_serving(two: TwoModels) -> None:
    pixels = random_image(np.random.default_rng())
    click = {"image": image_payload(pixels), "point_coords": [[20, 20]], "point_labels": [1]}
    for _ in range(2):  # the next request tries again, and fails the same way
        body = assert_error(two.http.post("/sam/segment_image", json={**click, "model": "broken"}), 503, "model")
        assert body["error"] == "ModelUnavailable"
        assert "'broken' could not be loaded" in body["reason"], body
        assert "/nonexistent/broken.pth" in body["reason"], body
        for model in ("tiny-a", "tiny-b"):
            assert two.http.post("/sam/segment_image", json={**click, "model": model}).status_code == 200
    assert two.http.get("/readyz").status_code == 200


def test_model_field_must_look_like_an_id(two: TwoModels) -> None:
    assert_error(two.http.post("/sam/segment_image", json={"image_id": "x", "model": "a b" * 40}), 422, "model")
    assert_error(two.http.get("/sam/decoder.onnx", params={"model": "../x"}), 422, "model")


def test_segment_everything_runs_each_models_own_generator(two: TwoModels) -> None:
    """With a crop layer, so the crops' encoder calls name the model too: each answer is its own model's
    `SamAutomaticMaskGenerator`'s."""
    from tests.conftest import rle_to_mask
    from tests.deployments.test_everything import (
        FEW_POINTS_AND_CROPS,
        assert_same_masks,
        body,
        png_base64,
        reference,
        scene,
    )

    image = scene(5)
    payload = {"type": "base64", "value": png_base64(image)}
    for model in ("tiny-b", "tiny-a"):
        expected = reference(two.models[model], image, FEW_POINTS_AND_CROPS)
        answer = two.http.post("/sam/segment_everything", json=body(FEW_POINTS_AND_CROPS, image=payload, model=model))
        assert answer.status_code == 200, answer.text
        records = answer.json()["masks"]
        assert_same_masks(expected, records, [rle_to_mask(record["segmentation"]) for record in records])


def test_the_page_offers_the_models_and_decodes_with_the_chosen_one(
    browser: object, two: TwoModels, tmp_path: Path
) -> None:
    """The labelling page lists the served models; a click decoded in the page on the chosen model's graph and
    embedding draws that model's mask, and switching models re-embeds the image and redraws the object."""
    from tests.conftest import rle_to_mask
    from tests.web.test_page import MASK_IOU as PAGE_IOU
    from tests.web.test_page import click, current_prompt, open_image, overlay_mask, write_image

    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(two.url + "/")
        page.evaluate("window.samPage.decoderReady")
        assert page.is_visible("#model")
        options = page.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
        assert options == ["tiny-a", "tiny-b", "broken"]
        assert page.input_value("#model") == "tiny-a"
        page.select_option("#model", "tiny-b")
        page.wait_for_function("window.samPage.state.decoder !== null")
        assert page.evaluate("window.samPage.state.decoder.modelId") == two.models["tiny-b"].identity.model_id

        path, _ = write_image(tmp_path, (240, 320))
        open_image(page, path)
        click(page, 150, 100)

        def server_mask(model: str) -> np.ndarray:
            response = two.http.post("/sam/segment_image", json={**current_prompt(page), "model": model})
            assert response.status_code == 200, response.text
            return rle_to_mask(response.json()["masks"][0])

        assert iou(overlay_mask(page), server_mask("tiny-b")) >= PAGE_IOU
        page.select_option("#model", "tiny-a")
        page.wait_for_function("window.samPage.switchedTo === 'tiny-a'", timeout=60_000)
        assert page.evaluate("window.samPage.state.decoder.modelId") == two.models["tiny-a"].identity.model_id
        assert iou(overlay_mask(page), server_mask("tiny-a")) >= PAGE_IOU
    finally:
        context.close()
    assert not errors, f"the page threw: {errors}"
