"""Mask and embedding encodings on a realistic SAM output: time and bytes against the seed's formats.

Run `python bench/bench_masks.py [--repeats N]` (~30 s on the 2-core dev machine). The mask is what SAM's
decoder produces for a 1500x2250 image: 256x256 low-res logits of a few overlapping blobs over a smoothed
random field, upsampled the way `SamOnnxModel` does (bilinear to 1024, crop to the input size, bilinear to
the original size), thresholded at 0.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import orjson
import pycocotools.mask as coco_mask
import rasterio.features
import shapely.geometry
from PIL import Image

from sam_core.embedding import round_to_storage
from sam_core.wire import masks as sam_masks
from sam_core.wire import npy as sam_npy

HEIGHT, WIDTH = 1500, 2250


def sam_like_logits(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(low-res logits (256, 256), logits at original pixels (HEIGHT, WIDTH)), both float32."""
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    field = np.zeros((256, 256), np.float32)
    for _ in range(4):  # a few overlapping elliptical blobs, SAM's typical "object" response
        cy, cx = rng.uniform(50, 110), rng.uniform(60, 200)
        sy, sx = rng.uniform(15, 35), rng.uniform(20, 45)
        field += np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
    noise = cv2.GaussianBlur(rng.standard_normal((256, 256)).astype(np.float32), (0, 0), 4)
    low_res = (field + 0.15 * noise / noise.std() - 0.45) * 20.0
    # SamOnnxModel.postprocess_masks: 256 -> 1024 bilinear, crop the un-padded input, -> original bilinear.
    scale = 1024 / max(HEIGHT, WIDTH)
    input_h, input_w = round(HEIGHT * scale), round(WIDTH * scale)
    upscaled = cv2.resize(low_res, (1024, 1024), interpolation=cv2.INTER_LINEAR)[:input_h, :input_w]
    logits = cv2.resize(upscaled, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    return low_res.astype(np.float32), logits.astype(np.float32)


def median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up; its result is what we size
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, result


def polygon_rasterio(mask: np.ndarray) -> list[list[float]]:
    """The alternative to OpenCV: vectorise with rasterio, pick the largest by shapely area."""
    best, best_area = None, -1.0
    for geometry, _value in rasterio.features.shapes(mask.view(np.uint8), mask=mask):
        polygon = shapely.geometry.shape(geometry)
        if polygon.area > best_area:
            best, best_area = polygon, polygon.area
    return [] if best is None else [list(p) for p in best.exterior.coords]


def polygon_opencv_none(mask: np.ndarray) -> list[list[int]]:
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return []
    # asarray (no copy): OpenCV's stubs type a contour int-or-float; it is an int32 (N, 1, 2) array.
    polygon: list[list[int]] = np.asarray(max(contours, key=cv2.contourArea), np.int32).reshape(-1, 2).tolist()
    return polygon


def png_pil(mask: np.ndarray, level: int) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(mask).save(stream, format="PNG", compress_level=level)  # bool -> mode "1"
    return stream.getvalue()


def png_cv2(mask: np.ndarray, level: int, bilevel: bool) -> bytes:
    params = [cv2.IMWRITE_PNG_COMPRESSION, level, cv2.IMWRITE_PNG_BILEVEL, int(bilevel)]
    return cv2.imencode(".png", mask.view(np.uint8) * np.uint8(255), params)[1].tobytes()


def npz(compressed: bool, **arrays: np.ndarray) -> bytes:
    stream = io.BytesIO()
    # Callable[..., None]: numpy's stubs would match **arrays against savez's `allow_pickle: bool`.
    save: Callable[..., None] = np.savez_compressed if compressed else np.savez
    save(stream, **arrays)
    return stream.getvalue()


def png_cv2_load(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a PNG"
    return image > 0


def npz_load(data: bytes) -> None:
    with np.load(io.BytesIO(data)) as archive:
        for key in archive.files:
            archive[key]


def json_size(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    repeats = args.repeats
    rng = np.random.default_rng(args.seed)
    low_res, logits = sam_like_logits(rng)
    mask = logits > 0
    n_contours = len(cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0])
    print(
        f"mask {HEIGHT}x{WIDTH}: {mask.mean():.1%} foreground, {n_contours} external contours, "
        f"median of {repeats} runs, {os.cpu_count()} CPUs\n"
    )

    seed_npz = npz(True, masks=logits[None], low_res_masks=low_res[None])
    ours_npz = sam_npy.segment_to_npz(mask[None], low_res[None])
    plain_npz = npz(False, masks=mask[None], low_res_masks=low_res[None])
    ours_npz_z = npz(True, masks=mask[None], low_res_masks=low_res[None])
    rle = sam_masks.encode_rle(mask)
    png_ours = sam_masks.encode_png(mask)
    polygon = sam_masks.mask_to_polygon(mask)

    mask_rows: list[tuple[str, Callable[[], object], Callable[[], object] | None]] = [
        (
            "seed: npz_compressed float32 logits",
            lambda: npz(True, masks=logits[None], low_res_masks=low_res[None]),
            lambda: npz_load(seed_npz),
        ),
        (
            "polygon json, OpenCV SIMPLE (ours)",
            lambda: json_size(sam_masks.mask_to_polygon(mask)),
            lambda: sam_masks.polygons_to_mask(polygon, (HEIGHT, WIDTH)),
        ),
        ("polygon json, OpenCV NONE", lambda: json_size(polygon_opencv_none(mask)), None),
        ("polygon json, rasterio shapes+shapely", lambda: json_size(polygon_rasterio(mask)), None),
        (
            "RLE json, pycocotools (ours)",
            lambda: json_size(sam_masks.encode_rle(mask)),
            lambda: coco_mask.decode({**rle, "counts": str(rle["counts"]).encode()}),
        ),
        (
            "PNG cv2 1-bit Z_RLE, up filter (ours)",
            lambda: sam_masks.encode_png(mask),
            lambda: png_cv2_load(png_ours),
        ),
        ("PNG cv2 1-bit level 1", lambda: png_cv2(mask, 1, True), None),
        ("PNG cv2 1-bit level 9", lambda: png_cv2(mask, 9, True), None),
        ("PNG cv2 8-bit level 1", lambda: png_cv2(mask, 1, False), None),
        ("PNG cv2 8-bit level 9", lambda: png_cv2(mask, 9, False), None),
        ("PNG PIL 1-bit level 1", lambda: png_pil(mask, 1), None),
        ("PNG PIL 1-bit level 6 (PIL default)", lambda: png_pil(mask, 6), None),
        ("PNG PIL 1-bit level 9", lambda: png_pil(mask, 9), None),
        (
            "npz bool deflate-1 + logits stored (ours)",
            lambda: sam_npy.segment_to_npz(mask[None], low_res[None]),
            lambda: sam_npy.npz_to_segment(ours_npz),
        ),
        (
            "npz bool + logits, np.savez",
            lambda: npz(False, masks=mask[None], low_res_masks=low_res[None]),
            lambda: npz_load(plain_npz),
        ),
        (
            "npz bool + logits, np.savez_compressed",
            lambda: npz(True, masks=mask[None], low_res_masks=low_res[None]),
            lambda: npz_load(ours_npz_z),
        ),
    ]
    table(mask_rows, repeats, seed_label=mask_rows[0][0])

    embedding = (rng.standard_normal((1, 256, 64, 64)) * 0.1).astype(np.float32)
    npy = sam_npy.embedding_to_npy(embedding)
    json_body = json_size(embedding.tolist())
    npy_b64 = base64.b64encode(npy).decode()
    orjson_body = orjson.dumps(embedding, option=orjson.OPT_SERIALIZE_NUMPY)
    rounded = round_to_storage(embedding)
    rounded_body = orjson.dumps(rounded, option=orjson.OPT_SERIALIZE_NUMPY)
    # The JSON list reads back as the same float32 values, exactly.
    assert np.array_equal(np.asarray(orjson.loads(orjson_body), dtype=np.float32), embedding)
    fp16 = embedding.astype(np.float16).tobytes()
    embedding_rows: list[tuple[str, Callable[[], object], Callable[[], object] | None]] = [
        (
            "seed: embedding JSON list",
            lambda: json_size(embedding.tolist()),
            lambda: np.asarray(json.loads(json_body), dtype=np.float32),
        ),
        (
            "embedding JSON list, orjson (ours, json)",
            lambda: orjson.dumps(embedding, option=orjson.OPT_SERIALIZE_NUMPY),
            lambda: np.asarray(orjson.loads(orjson_body), dtype=np.float32),
        ),
        (
            "same, fp16-rounded values (what we serve)",
            lambda: orjson.dumps(rounded, option=orjson.OPT_SERIALIZE_NUMPY),
            lambda: np.asarray(orjson.loads(rounded_body), dtype=np.float32),
        ),
        (
            "embedding .npy float32 (seed binary, ours)",
            lambda: sam_npy.embedding_to_npy(embedding),
            lambda: sam_npy.npy_to_embedding(npy),
        ),
        (
            "embedding .npy base64 (in a JSON body)",
            lambda: base64.b64encode(sam_npy.embedding_to_npy(embedding)),
            lambda: sam_npy.decode_npy_base64(npy_b64, field="embeddings", expected_shape=(1, 256, 64, 64)),
        ),
        (
            "embedding fp16 raw bytes (cache value)",
            lambda: embedding.astype(np.float16).tobytes(),
            lambda: np.frombuffer(fp16, np.float16).astype(np.float32),
        ),
    ]
    print()
    table(embedding_rows, max(1, repeats // 2), seed_label=embedding_rows[0][0])


def table(
    rows: list[tuple[str, Callable[[], object], Callable[[], object] | None]], repeats: int, seed_label: str
) -> None:
    print(f"{'encoding':44} {'encode ms':>10} {'decode ms':>10} {'bytes':>12} {'x seed bytes':>13} {'x seed ms':>10}")
    seed_ms = seed_bytes = None
    for label, encode, decode in rows:
        encode_ms, encoded = median_ms(encode, repeats)
        decode_ms = median_ms(decode, repeats)[0] if decode else None
        size = len(encoded) if isinstance(encoded, (bytes, bytearray)) else len(json_size(encoded))
        if label == seed_label:
            seed_ms, seed_bytes = encode_ms, size
        assert seed_ms is not None
        assert seed_bytes is not None
        decode_text = f"{decode_ms:10.2f}" if decode_ms is not None else f"{'-':>10}"
        print(
            f"{label:44} {encode_ms:10.2f} {decode_text} {size:12,d} "
            f"{size / seed_bytes:13.4f} {encode_ms / seed_ms:10.4f}"
        )


if __name__ == "__main__":
    main()
