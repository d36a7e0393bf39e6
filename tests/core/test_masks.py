"""Specification of sam_core.wire.masks: every encoding round-trips, and bad client input is refused by field."""

from __future__ import annotations

import base64
import io
import json
import pickle
import secrets

import cv2
import numpy as np
import pycocotools.mask as coco_mask
import pytest
import shapely.geometry
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sam_core.errors import InvalidInput
from sam_core.wire import masks
from sam_core.wire import npy as sam_npy
from tests.conftest import png_to_mask, rle_to_mask

ODD_SHAPES = [(1, 1), (3, 7), (7, 3), (1, 50), (37, 91), (256, 256)]


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random inputs each run; the seed is printed so a failure can be replayed."""
    seed = secrets.randbits(64)
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)


def sample_masks(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Empty, full, a single pixel and random noise of one shape."""
    single = np.zeros(shape, dtype=bool)
    single[rng.integers(shape[0]), rng.integers(shape[1])] = True
    return {
        "empty": np.zeros(shape, dtype=bool),
        "full": np.ones(shape, dtype=bool),
        "single_pixel": single,
        "random": rng.random(shape) < rng.uniform(0.1, 0.9),
    }


def random_ellipse_mask(rng: np.random.Generator, shape: tuple[int, int] = (256, 256)) -> np.ndarray:
    height, width = shape
    mask = np.zeros(shape, dtype=np.uint8)
    center = (int(rng.integers(width // 3, 2 * width // 3)), int(rng.integers(height // 3, 2 * height // 3)))
    axes = (int(rng.integers(width // 8, width // 3 + 1)), int(rng.integers(height // 8, height // 3 + 1)))
    cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    return mask.astype(bool)


def npy_base64(array: np.ndarray, *, allow_pickle: bool = False) -> str:
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=allow_pickle)
    return base64.b64encode(stream.getvalue()).decode()


# ---- polygons -----------------------------------------------------------------------------------------


def test_polygon_of_a_rectangle_mask_is_its_four_corners() -> None:
    mask = np.zeros((30, 40), dtype=bool)
    mask[10:20, 5:25] = True  # rows 10..19, columns 5..24

    polygon = masks.mask_to_polygon(mask)

    assert sorted(map(tuple, polygon)) == sorted([(5, 10), (24, 10), (24, 19), (5, 19)])


def test_polygon_of_an_empty_mask_is_an_empty_list() -> None:
    assert masks.mask_to_polygon(np.zeros((20, 30), dtype=bool)) == []


def test_polygon_of_a_single_pixel_is_that_pixel() -> None:
    mask = np.zeros((9, 9), dtype=bool)
    mask[4, 6] = True

    assert masks.mask_to_polygon(mask) == [[6, 4]]


def test_polygon_is_json_ready_python_ints(rng: np.random.Generator) -> None:
    polygon = masks.mask_to_polygon(random_ellipse_mask(rng))

    assert all(type(value) is int for point in polygon for value in point)
    assert json.loads(json.dumps(polygon)) == polygon


def test_polygon_is_the_largest_blob_by_area_not_by_vertex_count() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[5:65, 5:65] = True  # big square: 4 vertices
    mask[80:95, 70:95:2] = True  # small comb: many vertices (the seed's vertex-count rule would pick it)
    mask[80:82, 70:95] = True

    polygon = masks.mask_to_polygon(mask)

    assert sorted(map(tuple, polygon)) == sorted([(5, 5), (64, 5), (64, 64), (5, 64)])


def test_hole_free_mask_is_redrawn_exactly_from_its_polygons(rng: np.random.Generator) -> None:
    mask = random_ellipse_mask(rng) | random_ellipse_mask(rng)
    outlines, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = masks.polygons_to_mask([c.reshape(-1, 2).tolist() for c in outlines], mask.shape)
    # The union of two ellipses can enclose a hole; outlines describe the mask with holes filled.
    holes_filled = np.zeros(mask.shape, np.uint8)
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(holes_filled, contours, -1, 1, thickness=-1)

    np.testing.assert_array_equal(filled, holes_filled.astype(bool))


def test_polygon_to_mask_to_polygon_keeps_a_big_convex_shape(rng: np.random.Generator) -> None:
    angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
    radii = rng.uniform(60, 100)
    polygon_in = np.stack([128 + radii * np.cos(angles), 128 + 0.8 * radii * np.sin(angles)], axis=1)
    polygon_in = shapely.geometry.Polygon(polygon_in).convex_hull.exterior.coords[:-1]

    polygon_out = masks.mask_to_polygon(masks.polygons_to_mask([list(p) for p in polygon_in]))

    shape_in, shape_out = shapely.geometry.Polygon(polygon_in), shapely.geometry.Polygon(polygon_out)
    iou = shape_in.intersection(shape_out).area / shape_in.union(shape_out).area
    assert iou > 0.95, iou


def test_polygons_to_mask_takes_one_polygon_or_a_list_of_them() -> None:
    triangle = [[10, 10], [100, 10], [10, 100]]

    np.testing.assert_array_equal(masks.polygons_to_mask(triangle), masks.polygons_to_mask([triangle]))


def test_polygons_to_mask_defaults_to_the_256_low_res_frame() -> None:
    mask = masks.polygons_to_mask([[0, 0], [10, 0], [10, 10]])

    assert mask.shape == (256, 256)
    assert mask.dtype == np.bool_


def test_overlapping_polygons_are_filled_as_their_union() -> None:
    square_a = [[10, 10], [60, 10], [60, 60], [10, 60]]
    square_b = [[40, 40], [90, 40], [90, 90], [40, 90]]

    mask = masks.polygons_to_mask([square_a, square_b])

    assert mask[50, 50]  # inside both
    assert mask.sum() == 2 * 51 * 51 - 21 * 21


def test_self_intersecting_polygon_is_filled_even_odd() -> None:
    angles = np.pi / 2 + np.arange(5) * 4 * np.pi / 5  # pentagram: the centre is wound twice
    star = np.stack([128 + 100 * np.cos(angles), 128 - 100 * np.sin(angles)], axis=1).tolist()

    mask = masks.polygons_to_mask(star)

    assert not mask[128, 128]
    assert mask[128 - 90, 128]  # the top spike


def test_points_slightly_outside_the_frame_are_kept_and_the_fill_clipped() -> None:
    mask = masks.polygons_to_mask([[-100, -100], [300, -100], [300, 300], [-100, 300]])

    assert mask.all()


def test_float_vertices_are_rounded_to_the_nearest_pixel() -> None:
    mask = masks.polygons_to_mask([[9.6, 9.6], [20.4, 9.6], [20.4, 20.4], [9.6, 20.4]])

    assert np.argwhere(mask).min(axis=0).tolist() == [10, 10]
    assert np.argwhere(mask).max(axis=0).tolist() == [20, 20]


# Deliberately ill-typed client JSON: any value at all.
BAD_POLYGONS: dict[str, object] = {
    "not_a_list": "[[0, 0], [1, 1], [2, 0]]",
    "a_dict": {"points": [[0, 0], [1, 1], [2, 0]]},
    "null": None,
    "a_number": 5,
    "empty_list": [],
    "two_points": [[0, 0], [10, 10]],
    "empty_polygon_in_list": [[]],
    "string_coordinate": [[0, 0], ["10", 0], [10, 10]],
    "bool_coordinate": [[0, 0], [True, 0], [10, 10]],
    "nan_coordinate": [[0, 0], [float("nan"), 0], [10, 10]],
    "inf_coordinate": [[0, 0], [float("inf"), 0], [10, 10]],
    "three_numbers_a_point": [[0, 0, 0], [10, 0, 0], [10, 10, 0]],
    "point_not_a_list": [[0, 0], 10, [10, 10]],
    "far_outside_the_frame": [[0, 0], [10_000, 0], [10, 10]],
    "int_too_big_for_a_float": [[0, 0], [10**400, 0], [10, 10]],
    "too_many_points": [[i % 256, i // 256 % 256] for i in range(masks.MAX_POLYGON_POINTS + 1)],
    # 256 rings of 40 vertices: within the ring limit, over the vertex limit in all.
    "too_many_points_over_polygons": [[[j % 256, i] for j in range(40)] for i in range(masks.MAX_POLYGONS)],
    "too_many_polygons": [[[i % 256, 0], [i % 256, 1], [0, 2]] for i in range(masks.MAX_POLYGONS + 1)],
    "100_000_points": [[i % 256, i // 256 % 256] for i in range(100_000)],
    "one_good_one_bad": [[[0, 0], [10, 0], [10, 10]], [[0, 0], [1, 1]]],
}


@pytest.mark.parametrize("polygons", BAD_POLYGONS.values(), ids=BAD_POLYGONS.keys())
def test_bad_polygon_is_refused_naming_the_field(polygons: object) -> None:
    with pytest.raises(InvalidInput) as raised:
        masks.polygons_to_mask(polygons, field="mask_input")

    assert raised.value.field == "mask_input"
    assert raised.value.reason


def test_polygons_at_the_limits_are_rasterised() -> None:
    ring = [[i % 256, i // 256 % 256] for i in range(masks.MAX_POLYGON_POINTS)]
    assert masks.polygons_to_mask(ring).shape == (256, 256)
    rings = [[[x, 0], [x, 5], [0, 5]] for x in range(masks.MAX_POLYGONS)]
    assert masks.polygons_to_mask(rings).any()


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=40,
)
point_like = st.lists(st.one_of(st.integers(-600, 600), st.floats(), st.booleans(), st.none()), max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_like, st.lists(point_like, max_size=8), st.lists(st.lists(point_like, max_size=6))))
def test_polygons_to_mask_raises_nothing_but_invalid_input(polygons: object) -> None:
    try:
        mask = masks.polygons_to_mask(polygons)
    except InvalidInput as exc:
        assert exc.field == "mask_input"  # noqa: PT017 - one allowed outcome (no pytest.raises); `else` the other
    else:
        assert mask.shape == (256, 256)
        assert mask.dtype == np.bool_


def test_mask_input_array_is_sams_float32_zero_one_input() -> None:
    mask = masks.polygons_to_mask([[10, 10], [100, 10], [10, 100]])

    mask_input = masks.mask_input_array(mask)

    assert mask_input.shape == (1, 1, 256, 256)
    assert mask_input.dtype == np.float32
    assert set(np.unique(mask_input)) == {0.0, 1.0}
    np.testing.assert_array_equal(mask_input[0, 0] == 1.0, mask)


# ---- client-sent .npy ---------------------------------------------------------------------------------


def test_binary_mask_input_round_trips(rng: np.random.Generator) -> None:
    logits = rng.standard_normal((1, 1, 256, 256)).astype(np.float32)

    decoded = sam_npy.decode_npy_base64(npy_base64(logits), field="mask_input", expected_shape=(1, 1, 256, 256))

    np.testing.assert_array_equal(decoded, logits)


class UnpickleTrap:
    """Unpickling this flips `sprung`: proof that a payload was (or was not) unpickled."""

    sprung = False

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_spring_trap, ())


def _spring_trap() -> None:
    UnpickleTrap.sprung = True


def test_pickled_npy_is_refused_without_unpickling() -> None:
    UnpickleTrap.sprung = False
    payload = npy_base64(np.array([UnpickleTrap()], dtype=object), allow_pickle=True)

    with pytest.raises(InvalidInput) as raised:
        sam_npy.decode_npy_base64(payload, field="mask_input", expected_shape=None)

    assert raised.value.field == "mask_input"
    assert not UnpickleTrap.sprung
    pickle.loads(pickle.dumps(UnpickleTrap()))  # the trap works: unpickling would have sprung it
    assert UnpickleTrap.sprung


def test_bare_pickle_is_refused_without_unpickling() -> None:
    UnpickleTrap.sprung = False
    payload = base64.b64encode(pickle.dumps(UnpickleTrap())).decode()

    with pytest.raises(InvalidInput):
        sam_npy.decode_npy_base64(payload, field="embeddings", expected_shape=None)

    assert not UnpickleTrap.sprung


def test_wrong_shape_npy_is_refused() -> None:
    payload = npy_base64(np.zeros((1, 256, 256), dtype=np.float32))

    with pytest.raises(InvalidInput, match=r"shape \(1, 256, 256\)") as raised:
        sam_npy.decode_npy_base64(payload, field="mask_input", expected_shape=(1, 1, 256, 256))

    assert raised.value.field == "mask_input"


def test_npy_of_a_dtype_not_allowed_is_refused() -> None:
    payload = npy_base64(np.zeros((1, 1, 256, 256), dtype=np.int64))

    with pytest.raises(InvalidInput, match="dtype"):
        sam_npy.decode_npy_base64(payload, field="mask_input", expected_shape=(1, 1, 256, 256))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_npy_with_non_finite_values_is_refused(bad_value: float) -> None:
    array = np.zeros((1, 1, 256, 256), dtype=np.float32)
    array[0, 0, 3, 4] = bad_value

    with pytest.raises(InvalidInput, match="NaN or inf"):
        sam_npy.decode_npy_base64(npy_base64(array), field="mask_input", expected_shape=None)


def test_npy_whose_header_claims_more_data_than_sent_is_refused_before_allocating() -> None:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        stream, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    )  # 4 TB claimed, no data sent

    with pytest.raises(InvalidInput, match="needs"):
        sam_npy.decode_npy_base64(base64.b64encode(stream.getvalue()), field="embeddings", expected_shape=None)


def test_truncated_npy_is_refused() -> None:
    raw = base64.b64decode(npy_base64(np.zeros((1, 1, 256, 256), np.float32)))

    with pytest.raises(InvalidInput):
        sam_npy.decode_npy_base64(base64.b64encode(raw[:-10]), field="mask_input", expected_shape=None)


def test_npz_sent_as_npy_is_refused() -> None:
    stream = io.BytesIO()
    np.savez(stream, mask_input=np.zeros((1, 1, 256, 256), np.float32))

    with pytest.raises(InvalidInput, match=r"\.npy"):
        sam_npy.decode_npy_base64(base64.b64encode(stream.getvalue()), field="mask_input", expected_shape=None)


def test_npy_base64_longer_than_max_bytes_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidInput, match="at most 100"):
        sam_npy.decode_npy_base64("A" * 101, field="embeddings", expected_shape=None, max_bytes=100)


@pytest.mark.parametrize("value", ["not base64!", "QUJD=", 12345, None])
def test_value_that_is_not_base64_text_is_refused(value: object) -> None:
    with pytest.raises(InvalidInput) as raised:
        sam_npy.decode_npy_base64(value, field="mask_input", expected_shape=None)  # type: ignore[arg-type]

    assert raised.value.field == "mask_input"


def test_base64_wrapped_in_lines_is_accepted(rng: np.random.Generator) -> None:
    logits = rng.standard_normal((1, 1, 256, 256)).astype(np.float32)
    stream = io.BytesIO()
    np.save(stream, logits)

    decoded = sam_npy.decode_npy_base64(
        base64.encodebytes(stream.getvalue()).decode(), field="mask_input", expected_shape=(1, 1, 256, 256)
    )

    np.testing.assert_array_equal(decoded, logits)


def test_big_endian_and_fortran_order_npy_load_as_native_c_arrays(rng: np.random.Generator) -> None:
    logits = rng.standard_normal((1, 1, 256, 256))
    sent = np.asfortranarray(logits.astype(">f4"))

    decoded = sam_npy.decode_npy_base64(npy_base64(sent), field="mask_input", expected_shape=(1, 1, 256, 256))

    assert decoded.dtype == np.dtype("=f4")
    assert decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, logits.astype(np.float32))


# ---- COCO RLE -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_rle_round_trips(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    for kind, mask in sample_masks(rng, shape).items():
        np.testing.assert_array_equal(rle_to_mask(masks.encode_rle(mask)), mask, err_msg=kind)


def test_rle_is_json_ready_coco_rle(rng: np.random.Generator) -> None:
    mask = random_ellipse_mask(rng, (120, 80))

    rle = json.loads(json.dumps(masks.encode_rle(mask)))

    assert rle["size"] == [120, 80]
    assert isinstance(rle["counts"], str)
    np.testing.assert_array_equal(coco_mask.decode({**rle, "counts": rle["counts"].encode()}), mask)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40)))
def test_rle_round_trips_any_mask(mask: np.ndarray) -> None:
    np.testing.assert_array_equal(rle_to_mask(masks.encode_rle(mask)), mask)


# ---- PNG ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_png_round_trips(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    for kind, mask in sample_masks(rng, shape).items():
        np.testing.assert_array_equal(png_to_mask(masks.encode_png(mask)), mask, err_msg=kind)


def test_png_is_one_bit_greyscale(rng: np.random.Generator) -> None:
    png = masks.encode_png(random_ellipse_mask(rng))

    bit_depth, colour_type = png[24], png[25]
    assert (bit_depth, colour_type) == (1, 0)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40)))
def test_png_round_trips_any_mask(mask: np.ndarray) -> None:
    np.testing.assert_array_equal(png_to_mask(masks.encode_png(mask)), mask)


# ---- the seed's binary bodies -------------------------------------------------------------------------


def test_embedding_npy_is_the_seeds_float32_np_save(rng: np.random.Generator) -> None:
    embedding = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)

    body = sam_npy.embedding_to_npy(embedding)

    loaded = np.load(io.BytesIO(body), allow_pickle=False)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, embedding)
    np.testing.assert_array_equal(sam_npy.npy_to_embedding(body), embedding)


def test_segment_npz_holds_bool_masks_and_float32_low_res_logits(rng: np.random.Generator) -> None:
    mask = rng.random((1, 37, 91)) < 0.5
    low_res = rng.standard_normal((1, 256, 256)).astype(np.float32)

    body = sam_npy.segment_to_npz(mask, low_res)

    with np.load(io.BytesIO(body), allow_pickle=False) as archive:
        assert sorted(archive.files) == ["low_res_masks", "masks"]
        assert archive["masks"].dtype == np.bool_
        np.testing.assert_array_equal(archive["masks"], mask)
        assert archive["low_res_masks"].dtype == np.float32
        np.testing.assert_array_equal(archive["low_res_masks"], low_res)


def test_segment_npz_thresholds_float_logits_at_zero(rng: np.random.Generator) -> None:
    logits = rng.standard_normal((1, 20, 30)).astype(np.float32)
    low_res = rng.standard_normal((1, 256, 256)).astype(np.float32)

    decoded_masks, _ = sam_npy.npz_to_segment(sam_npy.segment_to_npz(logits, low_res))

    np.testing.assert_array_equal(decoded_masks, logits > 0)


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_segment_npz_round_trips(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    low_res = rng.standard_normal((1, 256, 256)).astype(np.float32)
    for kind, mask in sample_masks(rng, shape).items():
        decoded_masks, decoded_low_res = sam_npy.npz_to_segment(sam_npy.segment_to_npz(mask[None], low_res))
        np.testing.assert_array_equal(decoded_masks, mask[None], err_msg=kind)
        np.testing.assert_array_equal(decoded_low_res, low_res, err_msg=kind)


def test_npz_to_segment_reads_the_seeds_float_logit_bodies(rng: np.random.Generator) -> None:
    logits = rng.standard_normal((1, 20, 30)).astype(np.float32)
    low_res = rng.standard_normal((1, 256, 256)).astype(np.float32)
    stream = io.BytesIO()
    np.savez_compressed(stream, masks=logits, low_res_masks=low_res)

    decoded_masks, decoded_low_res = sam_npy.npz_to_segment(stream.getvalue())

    np.testing.assert_array_equal(decoded_masks, logits > 0)
    np.testing.assert_array_equal(decoded_low_res, low_res)


@pytest.mark.parametrize("body", [b"", b"not a zip", npy_base64(np.zeros(3)).encode()])
def test_body_that_is_not_a_segment_npz_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidInput):
        sam_npy.npz_to_segment(body)
