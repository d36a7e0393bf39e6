"""Specification of sam_core.wire.images: what client images decode to, and what is refused before decoding."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.server
import io
import pickle
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from sam_core.errors import (
    ImageDecodeError,
    ImageTooLarge,
    InvalidInput,
    UnsupportedImageFormat,
    URLFetchError,
    URLInputRefused,
)
from sam_core.settings import ImageLimits
from sam_core.wire.image_checks import check_image_size
from sam_core.wire.images import (
    LoadedImage,
    check_encoder_input,
    decode_base64_image,
    decode_image,
    decode_image_bytes,
    decode_numpy_payload,
    encoded_file,
    encoder_input,
    fetch_image_url,
    load_image,
    read_image,
)
from tests.slow_http import serving

# ---- helpers --------------------------------------------------------------------------------------------


def limits(**overrides: Any) -> ImageLimits:
    return ImageLimits(**overrides)


def encode(image: Image.Image, image_format: str, **save_args: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **save_args)
    return buffer.getvalue()


def random_rgb(height: int, width: int, seed: int | None = None) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def handmade_png(width: int, height: int, *, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A grey PNG of zeros built chunk by chunk, so sizes PIL refuses to create (bombs, 0x0) can be made."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    row = b"\x00" * (1 + (width * bit_depth + 7) // 8)  # filter byte + packed samples
    compressor = zlib.compressobj(9)
    compressed = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", compressed) + png_chunk(b"IEND", b"")


# ---- encoded images: what they decode to ----------------------------------------------------------------


def test_png_decodes_to_identical_rgb_uint8_pixels() -> None:
    pixels = random_rgb(17, 23)
    data = encode(Image.fromarray(pixels), "PNG")

    loaded = decode_image_bytes(data, limits())

    assert loaded.pixels.dtype == np.uint8
    assert loaded.pixels.shape == (17, 23, 3)
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.format == "PNG"
    assert loaded.size == (17, 23)


def test_content_hash_is_sha256_of_the_encoded_bytes() -> None:
    data = encode(Image.fromarray(random_rgb(8, 8)), "PNG")

    assert decode_image_bytes(data, limits()).content_sha256 == hashlib.sha256(data).hexdigest()


def test_decoded_pixels_are_a_writable_private_array() -> None:
    loaded = decode_image_bytes(encode(Image.fromarray(random_rgb(4, 4)), "PNG"), limits())

    assert loaded.pixels.flags.writeable
    assert loaded.pixels.flags.c_contiguous


def test_jpeg_decodes_close_to_its_source_colour() -> None:
    data = encode(Image.new("RGB", (32, 24), (200, 40, 90)), "JPEG", quality=95)

    loaded = decode_image_bytes(data, limits())

    assert loaded.format == "JPEG"
    assert loaded.pixels.shape == (24, 32, 3)
    assert np.abs(loaded.pixels.astype(int) - [200, 40, 90]).max() <= 4


def test_lossless_webp_decodes_exactly() -> None:
    pixels = random_rgb(10, 12)
    data = encode(Image.fromarray(pixels), "WEBP", lossless=True)

    loaded = decode_image_bytes(data, limits())

    assert loaded.format == "WEBP"
    np.testing.assert_array_equal(loaded.pixels, pixels)


@pytest.mark.parametrize("image_format", ["PNG", "TIFF"])
def test_16_bit_grey_is_scaled_by_the_container_range(image_format: str) -> None:
    values = np.array([[0, 257 * 100, 65535, 128]], dtype=np.uint16)
    data = encode(Image.fromarray(values), image_format)

    loaded = decode_image_bytes(data, limits())

    assert loaded.pixels.shape == (1, 4, 3)
    np.testing.assert_array_equal(loaded.pixels[0, :, 0], [0, 100, 255, 0])
    np.testing.assert_array_equal(loaded.pixels[..., 0], loaded.pixels[..., 2])


def test_big_endian_16_bit_tiff_is_scaled_like_little_endian() -> None:
    values = np.array([[0, 257 * 7, 65535]], dtype=">u2")
    data = encode(Image.fromarray(values), "TIFF")

    loaded = decode_image_bytes(data, limits())

    np.testing.assert_array_equal(loaded.pixels[0, :, 1], [0, 7, 255])


def test_32_bit_integer_image_is_stretched_to_full_range() -> None:
    values = np.array([[1000, 2000, 3000]], dtype=np.int32)
    data = encode(Image.fromarray(values, mode="I"), "TIFF")

    loaded = decode_image_bytes(data, limits())

    np.testing.assert_array_equal(loaded.pixels[0, :, 0], [0, 128, 255])


def test_float_image_is_stretched_to_full_range() -> None:
    values = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    data = encode(Image.fromarray(values, mode="F"), "TIFF")

    loaded = decode_image_bytes(data, limits())

    np.testing.assert_array_equal(loaded.pixels[0, :, 2], [0, 128, 255])


def test_cmyk_jpeg_converts_to_rgb() -> None:
    # Pure cyan + full key off: C=0,M=255,Y=255,K=0 is red in RGB.
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)

    loaded = decode_image_bytes(data, limits())

    assert loaded.pixels.shape == (16, 16, 3)
    assert np.abs(loaded.pixels.astype(int) - [255, 0, 0]).max() <= 8


def test_rgba_is_composited_on_black() -> None:
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], dtype=np.uint8)
    data = encode(Image.fromarray(rgba, mode="RGBA"), "PNG")

    loaded = decode_image_bytes(data, limits())

    np.testing.assert_array_equal(loaded.pixels[0], [[200, 100, 50], [0, 0, 0], [100, 50, 25]])


def test_grey_with_alpha_is_composited_on_black() -> None:
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (255, 255))
    image.putpixel((1, 0), (255, 0))

    loaded = decode_image_bytes(encode(image, "PNG"), limits())

    np.testing.assert_array_equal(loaded.pixels[0], [[255, 255, 255], [0, 0, 0]])


def test_palette_image_decodes_to_its_palette_colours() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)

    loaded = decode_image_bytes(encode(image, "PNG"), limits())

    np.testing.assert_array_equal(loaded.pixels[0], [[255, 0, 0], [0, 0, 255]])


def test_transparent_palette_index_is_composited_on_black() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)

    loaded = decode_image_bytes(encode(image, "PNG", transparency=0), limits())

    np.testing.assert_array_equal(loaded.pixels[0], [[0, 0, 0], [0, 255, 0]])


def test_grayscale_is_repeated_into_three_channels() -> None:
    values = np.array([[0, 77, 255]], dtype=np.uint8)

    loaded = decode_image_bytes(encode(Image.fromarray(values, mode="L"), "PNG"), limits())

    np.testing.assert_array_equal(loaded.pixels[0], [[0, 0, 0], [77, 77, 77], [255, 255, 255]])


def test_one_bit_image_becomes_black_and_white() -> None:
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)

    loaded = decode_image_bytes(encode(image, "PNG"), limits())

    np.testing.assert_array_equal(loaded.pixels[0], [[0, 0, 0], [255, 255, 255]])


def test_exif_orientation_is_applied() -> None:
    # Stored 40 wide x 20 tall, top half red, bottom half blue. Orientation 6 says "rotate 90° clockwise
    # to display": shown 20 wide x 40 tall with the stored top (red) on the right.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:10] = (255, 0, 0)
    stored[10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())

    loaded = decode_image_bytes(data, limits())

    assert loaded.pixels.shape == (40, 20, 3)
    assert np.abs(loaded.pixels[20, 16].astype(int) - [255, 0, 0]).max() <= 10
    assert np.abs(loaded.pixels[20, 3].astype(int) - [0, 0, 255]).max() <= 10


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)

    loaded = decode_image_bytes(data, limits())

    assert loaded.format == "GIF"
    np.testing.assert_array_equal(loaded.pixels[4, 4], [255, 0, 0])


# ---- encoded images: what is refused --------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_truncated_image_raises_image_decode_error(image_format: str) -> None:
    data = encode(Image.fromarray(random_rgb(64, 64, seed=1)), image_format)

    with pytest.raises(ImageDecodeError) as raised:
        decode_image_bytes(data[: len(data) // 2], limits())

    assert raised.value.field == "image.value"


def test_corrupt_png_data_raises_image_decode_error() -> None:
    data = bytearray(encode(Image.fromarray(random_rgb(32, 32, seed=2)), "PNG"))
    data[60:80] = b"\xff" * 20  # inside the first IDAT chunk: its CRC and zlib stream no longer agree

    with pytest.raises(ImageDecodeError):
        decode_image_bytes(bytes(data), limits())


def test_non_image_bytes_raise_image_decode_error() -> None:
    with pytest.raises(ImageDecodeError, match="not a recognisable image"):
        decode_image_bytes(b"%PDF-1.7 this is not an image at all", limits())


def test_empty_bytes_raise_image_decode_error() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image_bytes(b"", limits())


def test_bytes_over_max_bytes_raise_image_too_large() -> None:
    data = encode(Image.fromarray(random_rgb(32, 32)), "PNG")

    with pytest.raises(ImageTooLarge, match="max_bytes"):
        decode_image_bytes(data, limits(max_bytes=len(data) - 1))


def test_format_outside_the_accepted_list_raises_unsupported_format_naming_it() -> None:
    data = encode(Image.new("RGB", (4, 4)), "BMP")

    with pytest.raises(UnsupportedImageFormat, match="BMP") as raised:
        decode_image_bytes(data, limits(formats=("PNG", "JPEG")))

    assert raised.value.http_status == 415


def test_configured_format_without_a_pil_plugin_is_simply_not_accepted() -> None:
    data = encode(Image.new("RGB", (4, 4)), "PNG")

    assert decode_image_bytes(data, limits(formats=("PNG", "NO_SUCH_FORMAT"))).format == "PNG"


def test_decompression_bomb_beyond_pils_own_guard_raises_image_too_large() -> None:
    bomb = handmade_png(20_000, 20_000)  # 400 Mpx of zeros in a few tens of kilobytes
    assert len(bomb) < 200_000

    with pytest.raises(ImageTooLarge):
        decode_image_bytes(bomb, limits())


def test_image_over_max_pixels_is_refused_from_its_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 8000x8000 = 64 Mpx: over our default 50 Mpx but under PIL's own 89 Mpx guard, so ours must catch it.
    bomb = handmade_png(8_000, 8_000)
    loads: list[object] = []
    original_load = ImageFile.ImageFile.load

    def recording_load(self: ImageFile.ImageFile) -> Any:
        loads.append(self)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)

    with pytest.raises(ImageTooLarge, match="max_pixels"):
        decode_image_bytes(bomb, limits())

    assert loads == []


def test_pil_global_pixel_guard_is_left_untouched() -> None:
    before = Image.MAX_IMAGE_PIXELS

    with pytest.raises(ImageTooLarge):
        decode_image_bytes(handmade_png(8_000, 8_000), limits())
    decode_image_bytes(encode(Image.new("RGB", (2, 2)), "PNG"), limits())

    assert before == Image.MAX_IMAGE_PIXELS


def test_zero_sized_image_is_refused() -> None:
    with pytest.raises(ImageDecodeError):
        decode_image_bytes(handmade_png(0, 0), limits())


def test_one_by_100000_image_passes_when_max_side_allows_it() -> None:
    data = encode(Image.new("L", (1, 100_000), 9), "PNG")

    loaded = decode_image_bytes(data, limits(max_side=100_000))

    assert loaded.pixels.shape == (100_000, 1, 3)


def test_one_by_100000_image_is_refused_when_longer_than_max_side() -> None:
    data = encode(Image.new("L", (1, 100_000), 9), "PNG")

    with pytest.raises(ImageTooLarge, match="longest side"):
        decode_image_bytes(data, limits(max_side=16_384))


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the broken TIFF tags we make
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(min_value=0, max_value=10_000), noise=st.binary(min_size=1, max_size=16))
def test_corrupted_images_raise_only_typed_input_errors(position: int, noise: bytes) -> None:
    source = _FUZZ_SOURCES[position % len(_FUZZ_SOURCES)]
    cut = position % len(source)
    data = source[:cut] + noise + source[cut + len(noise) :]

    try:
        loaded = decode_image_bytes(data, limits())
    except InvalidInput:
        return
    assert loaded.pixels.dtype == np.uint8
    assert loaded.pixels.shape[2] == 3


_FUZZ_SOURCES = [
    encode(Image.fromarray(random_rgb(16, 16, seed=3)), image_format)
    for image_format in ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP")
]


# ---- base64 ---------------------------------------------------------------------------------------------


def test_base64_image_decodes_and_hashes_the_decoded_bytes() -> None:
    data = encode(Image.fromarray(random_rgb(5, 6)), "PNG")

    loaded = decode_base64_image(b64(data), limits())

    assert loaded.pixels.shape == (5, 6, 3)
    assert loaded.content_sha256 == hashlib.sha256(data).hexdigest()


def test_data_url_prefix_is_accepted() -> None:
    data = encode(Image.fromarray(random_rgb(5, 6)), "PNG")

    loaded = decode_base64_image("data:image/png;base64," + b64(data), limits())

    assert loaded.content_sha256 == hashlib.sha256(data).hexdigest()


def test_base64_with_line_breaks_and_spaces_is_accepted() -> None:
    data = encode(Image.fromarray(random_rgb(20, 20)), "PNG")
    text = b64(data)
    wrapped = "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))

    assert decode_base64_image(f"  {wrapped}\n", limits()).pixels.shape == (20, 20, 3)


@pytest.mark.parametrize(
    "bad_value",
    ["not*base64!", "iVBORw0KGgo", "aGVsbG8=aGVsbG8=", "é"],
    ids=["bad-characters", "bad-padding", "padding-in-the-middle", "non-ascii"],
)
def test_invalid_base64_raises_invalid_input(bad_value: str) -> None:
    with pytest.raises(InvalidInput, match="base64") as raised:
        decode_base64_image(bad_value, limits())

    assert raised.value.field == "image.value"


def test_data_url_that_is_not_base64_is_refused() -> None:
    with pytest.raises(InvalidInput, match="data URL"):
        decode_base64_image("data:image/png,%89PNG", limits())


def test_empty_base64_is_refused() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        decode_base64_image("  \n", limits())


def test_base64_string_far_over_the_limit_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("an oversized string must not be decoded")

    monkeypatch.setattr(base64, "b64decode", no_decoding)

    with pytest.raises(ImageTooLarge, match="characters"):
        decode_base64_image("A" * 100_000, limits(max_bytes=1_000))


def test_base64_decoding_to_more_than_max_bytes_is_refused() -> None:
    data = encode(Image.fromarray(random_rgb(32, 32)), "PNG")

    with pytest.raises(ImageTooLarge, match="max_bytes"):
        decode_base64_image(b64(data), limits(max_bytes=len(data) - 10))


# ---- numpy payloads -------------------------------------------------------------------------------------

UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    UNPICKLED.append("unpickled")
    return "payload"


class UnpickleTripwire:
    """Unpickling this object calls `_record_unpickling`: proof that a payload was (wrongly) unpickled."""

    def __reduce__(self) -> tuple[Callable[[], str], tuple[()]]:
        return _record_unpickling, ()


@pytest.fixture
def tripwire() -> Iterator[list[str]]:
    UNPICKLED.clear()
    yield UNPICKLED
    UNPICKLED.clear()


def test_tripwire_fires_when_unpickled(tripwire: list[str]) -> None:
    pickle.loads(pickle.dumps(UnpickleTripwire()))

    assert tripwire == ["unpickled"]


def test_numpy_rgb_payload_decodes_to_the_same_pixels() -> None:
    pixels = random_rgb(7, 9)
    raw = npy_bytes(pixels)

    loaded = decode_numpy_payload(b64(raw), limits())

    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.format == "NPY"
    assert loaded.content_sha256 == hashlib.sha256(raw).hexdigest()
    assert loaded.pixels.flags.writeable


def test_numpy_fortran_ordered_payload_keeps_its_layout() -> None:
    pixels = np.asfortranarray(random_rgb(4, 6))

    loaded = decode_numpy_payload(b64(npy_bytes(pixels)), limits())

    np.testing.assert_array_equal(loaded.pixels, pixels)


def test_numpy_grayscale_payload_is_repeated_into_three_channels() -> None:
    gray = np.array([[0, 128], [255, 7]], dtype=np.uint8)

    loaded = decode_numpy_payload(b64(npy_bytes(gray)), limits())

    np.testing.assert_array_equal(loaded.pixels[..., 1], gray)
    assert loaded.pixels.shape == (2, 2, 3)


def test_numpy_rgba_payload_is_composited_on_black() -> None:
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255]]], dtype=np.uint8)

    loaded = decode_numpy_payload(b64(npy_bytes(rgba)), limits())

    np.testing.assert_array_equal(loaded.pixels[0], [[0, 0, 0], [10, 20, 30]])


def test_numpy_object_array_is_refused_without_unpickling(tripwire: list[str]) -> None:
    raw = npy_bytes(np.array([UnpickleTripwire()], dtype=object), allow_pickle=True)

    with pytest.raises(InvalidInput, match="never loaded"):
        decode_numpy_payload(b64(raw), limits())

    assert tripwire == []


def test_plain_pickle_payload_is_refused_without_unpickling(tripwire: list[str]) -> None:
    raw = pickle.dumps(UnpickleTripwire())

    with pytest.raises(InvalidInput, match="never loaded"):
        decode_numpy_payload(b64(raw), limits())

    assert tripwire == []


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4, 3), dtype=np.float32),
        np.zeros((4, 4, 3), dtype=np.uint16),
        np.zeros((4, 4, 2), dtype=np.uint8),
        np.zeros((1, 4, 4, 3), dtype=np.uint8),
        np.zeros((12,), dtype=np.uint8),
        np.zeros((0, 4, 3), dtype=np.uint8),
    ],
    ids=["float32", "uint16", "two-channels", "batched", "flat", "zero-height"],
)
def test_numpy_payload_of_another_dtype_or_shape_is_refused(array: np.ndarray) -> None:
    with pytest.raises(InvalidInput):
        decode_numpy_payload(b64(npy_bytes(array)), limits())


def test_numpy_payload_over_max_pixels_is_refused() -> None:
    with pytest.raises(ImageTooLarge):
        decode_numpy_payload(b64(npy_bytes(np.zeros((20, 20, 3), dtype=np.uint8))), limits(max_pixels=100))


def test_numpy_payload_shorter_than_its_header_declares_is_refused() -> None:
    raw = npy_bytes(random_rgb(8, 8))

    with pytest.raises(InvalidInput, match="declares"):
        decode_numpy_payload(b64(raw[:-5]), limits())


def test_numpy_array_from_a_handle_call_hashes_like_the_same_array_sent_as_npy() -> None:
    pixels = random_rgb(6, 5)

    direct = load_image("numpy", pixels, limits())
    over_http = load_image("numpy", b64(npy_bytes(pixels)), limits())

    np.testing.assert_array_equal(direct.pixels, pixels)
    assert direct.content_sha256 == over_http.content_sha256


# ---- URLs -----------------------------------------------------------------------------------------------

PNG_FOR_URLS = encode(Image.fromarray(random_rgb(6, 4, seed=4)), "PNG")


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /image.png, /redirect/<n> (n hops then the image), /to-metadata, /big, /missing."""

    seen_hosts: list[str] = []  # noqa: RUF012 - test server state shared with the tests

    def do_GET(self) -> None:
        _Handler.seen_hosts.append(self.headers.get("Host", ""))
        if self.path == "/image.png":
            self._send(200, PNG_FOR_URLS, {"Content-Type": "image/png"})
        elif self.path.startswith("/redirect/"):
            hops = int(self.path.rsplit("/", 1)[1])
            target = "/image.png" if hops <= 1 else f"/redirect/{hops - 1}"
            self._send(302, b"", {"Location": target})
        elif self.path == "/to-metadata":
            self._send(302, b"", {"Location": "http://169.254.169.254/latest/meta-data/"})
        elif self.path == "/big-undeclared":
            # No Content-Length: the body ends when the connection closes, so only our counter stops it.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for _ in range(64):
                    self.wfile.write(b"\x00" * 16_384)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading at its limit, as it should
        elif self.path == "/big-declared":
            self._send(200, b"\x00" * 200_000, {"Content-Type": "image/png"})
        else:
            self._send(404, b"not here", {"Content-Type": "text/plain"})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    with serving(_Handler) as url:
        yield url


LOCAL_URLS = {"allow_url": True, "allow_private_urls": True, "url_timeout_s": 5.0}


def test_url_input_is_disabled_by_default() -> None:
    with pytest.raises(URLInputRefused, match="disabled") as raised:
        fetch_image_url("https://example.com/cat.png", limits())

    assert raised.value.field == "image.value"


def test_loopback_url_is_refused_without_allow_private_urls(image_server: str) -> None:
    with pytest.raises(URLInputRefused, match="loopback"):
        fetch_image_url(f"{image_server}/image.png", limits(allow_url=True))


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://10.1.2.3/x.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/latest/", "metadata"),
        ("http://[::ffff:127.0.0.1]/x.png", "loopback"),
        ("http://0.0.0.0/x.png", "unspecified"),
        ("http://224.0.0.1/x.png", "multicast"),
        ("http://2130706433/x.png", "loopback"),  # 127.0.0.1 as one decimal number
    ],
)
def test_internal_addresses_are_refused(url: str, kind: str) -> None:
    with pytest.raises(URLInputRefused, match=kind):
        fetch_image_url(url, limits(allow_url=True))


def test_metadata_address_is_refused_even_with_allow_private_urls() -> None:
    with pytest.raises(URLInputRefused, match="metadata"):
        fetch_image_url("http://169.254.169.254/latest/meta-data/", limits(**LOCAL_URLS))


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://x/"])
def test_non_http_schemes_are_refused(url: str) -> None:
    with pytest.raises(URLInputRefused, match="http"):
        fetch_image_url(url, limits(**LOCAL_URLS))


def test_url_image_is_fetched_and_decoded(image_server: str) -> None:
    loaded = fetch_image_url(f"{image_server}/image.png", limits(**LOCAL_URLS))

    assert loaded.pixels.shape == (6, 4, 3)
    assert loaded.content_sha256 == hashlib.sha256(PNG_FOR_URLS).hexdigest()


def test_url_request_keeps_the_host_name_in_the_host_header(image_server: str) -> None:
    port = image_server.rsplit(":", 1)[1]
    _Handler.seen_hosts.clear()

    fetch_image_url(f"http://localhost:{port}/image.png", limits(**LOCAL_URLS))

    assert _Handler.seen_hosts[-1] == f"localhost:{port}"


def test_redirects_within_the_limit_are_followed(image_server: str) -> None:
    loaded = fetch_image_url(f"{image_server}/redirect/3", limits(**LOCAL_URLS))

    assert loaded.content_sha256 == hashlib.sha256(PNG_FOR_URLS).hexdigest()


def test_more_than_three_redirects_are_refused(image_server: str) -> None:
    with pytest.raises(URLFetchError, match="redirects"):
        fetch_image_url(f"{image_server}/redirect/4", limits(**LOCAL_URLS))


def test_redirect_to_a_refused_address_is_refused(image_server: str) -> None:
    with pytest.raises(URLInputRefused, match="metadata"):
        fetch_image_url(f"{image_server}/to-metadata", limits(**LOCAL_URLS))


def test_streamed_body_over_max_bytes_is_refused(image_server: str) -> None:
    with pytest.raises(ImageTooLarge, match="max_bytes"):
        fetch_image_url(f"{image_server}/big-undeclared", limits(max_bytes=50_000, **LOCAL_URLS))


def test_declared_content_length_over_max_bytes_is_refused(image_server: str) -> None:
    with pytest.raises(ImageTooLarge, match="max_bytes"):
        fetch_image_url(f"{image_server}/big-declared", limits(max_bytes=50_000, **LOCAL_URLS))


def test_http_error_status_raises_url_fetch_error(image_server: str) -> None:
    with pytest.raises(URLFetchError, match="404"):
        fetch_image_url(f"{image_server}/missing", limits(**LOCAL_URLS))


def test_unreachable_url_raises_url_fetch_error() -> None:
    probe = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    closed_port = probe.server_address[1]
    probe.server_close()  # nothing listens there now

    with pytest.raises(URLFetchError):
        fetch_image_url(f"http://127.0.0.1:{closed_port}/x.png", limits(**LOCAL_URLS))


# ---- dispatch on the request's image type ---------------------------------------------------------------


def test_load_image_dispatches_base64() -> None:
    data = encode(Image.fromarray(random_rgb(3, 3)), "PNG")

    loaded = load_image("base64", b64(data), limits())

    assert isinstance(loaded, LoadedImage)
    assert loaded.content_sha256 == hashlib.sha256(data).hexdigest()


def test_load_image_dispatches_url(image_server: str) -> None:
    loaded = load_image("url", f"{image_server}/image.png", limits(**LOCAL_URLS))

    assert loaded.pixels.shape == (6, 4, 3)


def test_load_image_reports_decoder_errors_on_the_value_field() -> None:
    with pytest.raises(InvalidInput) as raised:
        load_image("base64", "not*base64", limits())

    assert raised.value.field == "image.value"


def test_file_type_is_refused_without_reading_anything() -> None:
    with pytest.raises(URLInputRefused, match="server files") as raised:
        load_image("file", "/etc/passwd", limits())

    assert raised.value.field == "image.type"


@pytest.mark.parametrize("kind", ["pil", "multipart"])
def test_pil_and_multipart_types_are_not_supported_over_this_api(kind: str) -> None:
    with pytest.raises(InvalidInput, match="not supported") as raised:
        load_image(kind, "anything", limits())

    assert raised.value.field == "image.type"


def test_unknown_image_type_names_the_type_field() -> None:
    with pytest.raises(InvalidInput, match="unknown image type") as raised:
        load_image("jpeg", "abc", limits())

    assert raised.value.field == "image.type"


@pytest.mark.parametrize("value", [123, None, b"bytes", ["list"]])
def test_value_of_the_wrong_python_type_names_the_value_field(value: object) -> None:
    with pytest.raises(InvalidInput, match="string") as raised:
        load_image("base64", value, limits())

    assert raised.value.field == "image.value"


def test_error_field_follows_the_callers_prefix() -> None:
    with pytest.raises(InvalidInput) as raised:
        load_image("bogus", "x", limits(), field="images[2]")

    assert raised.value.field == "images[2].type"


# ---- read (bytes and hash) before decode ------------------------------------------------------------------


def test_read_image_hashes_the_bytes_without_decoding_them() -> None:
    data = encode(Image.fromarray(random_rgb(40, 60)), "JPEG")
    truncated = data[: len(data) // 2]  # undecodable: only a decode would notice

    encoded = read_image("base64", b64(truncated), limits())

    assert encoded.content_sha256 == hashlib.sha256(truncated).hexdigest()
    with pytest.raises(ImageDecodeError):
        decode_image(encoded, limits())


@pytest.mark.parametrize("kind", ["base64", "numpy"])
def test_read_then_decode_is_load_image(kind: str) -> None:
    pixels = random_rgb(30, 50)
    value = b64(npy_bytes(pixels) if kind == "numpy" else encode(Image.fromarray(pixels), "PNG"))

    encoded = read_image(kind, value, limits())
    loaded = decode_image(encoded, limits())

    assert loaded.content_sha256 == encoded.content_sha256 == load_image(kind, value, limits()).content_sha256
    assert np.array_equal(loaded.pixels, pixels)


def test_an_in_process_array_hashes_as_its_npy_payload() -> None:
    pixels = random_rgb(30, 50)
    encoded = read_image("numpy", pixels, limits())
    assert encoded.content_sha256 == read_image("numpy", b64(npy_bytes(pixels)), limits()).content_sha256
    assert np.array_equal(decode_image(encoded, limits()).pixels, pixels)


@pytest.mark.parametrize(
    ("size", "error"),
    [((60000, 60000), ImageTooLarge), ((8000, 8000), ImageTooLarge), ((0, 5), InvalidInput)],
    ids=["side", "pixels", "zero"],
)
def test_check_image_size_refuses_sizes_outside_the_limits(size: tuple[int, int], error: type[Exception]) -> None:
    with pytest.raises(error) as raised:
        check_image_size(size, limits(), field="orig_im_size")
    assert getattr(raised.value, "field", None) == "orig_im_size"


# ---- encoder inputs a handle caller prepared (sam-serve warm's workers) --------------------------------------


def test_an_encoder_input_prepared_elsewhere_is_held_to_its_frame_and_id() -> None:
    prepared = encoder_input(encoded_file(encode(Image.fromarray(random_rgb(300, 500, 1)), "PNG"), "image"), limits())
    assert prepared.pixels.shape == (614, 1024, 3)
    assert check_encoder_input(prepared, limits()) is prepared

    def refused(field: str, **changes: Any) -> None:
        with pytest.raises((InvalidInput, ImageTooLarge)) as caught:
            check_encoder_input(dataclasses.replace(prepared, **changes), limits(max_pixels=1_000_000))
        assert caught.value.field == field

    refused("pixels.content_id", content_id="")
    refused("pixels.content_id", content_id="sha256:" + "G" * 64)
    refused("pixels.content_id", content_id=prepared.content_id + "0")
    refused("pixels.original_size", original_size=(0, 500))
    refused("pixels.original_size", original_size=(2000, 1000))  # over max_pixels
    refused("pixels", original_size=(500, 300))  # the frame of another size
    refused("pixels", pixels=prepared.pixels.astype(np.float32))
    refused("pixels", pixels=prepared.pixels[:, :, :2])
    refused("pixels", pixels=prepared.pixels.tolist())
