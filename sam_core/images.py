"""Client images in, RGB uint8 arrays out: base64, URL and .npy payloads decoded under `ImageLimits`.

Every check that can run before pixels are decoded does (bytes, format, header size), so a hostile payload
costs a header parse, not gigabytes; every refusal is a typed error naming the request field at fault.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
from PIL import Image, ImageOps

from sam_core.embedding import EncoderInput
from sam_core.errors import (
    ImageDecodeError,
    ImageTooLarge,
    InvalidInput,
    UnsupportedImageFormat,
    URLFetchError,
    URLInputRefused,
)
from sam_core.frames import preprocess_shape
from sam_core.settings import ImageLimits

__all__ = [
    "EncodedImage",
    "LoadedImage",
    "check_image_size",
    "decode_base64_image",
    "decode_image",
    "decode_image_bytes",
    "decode_numpy_payload",
    "encoder_input",
    "fetch_image_url",
    "fetch_url_bytes",
    "load_image",
    "read_image",
    "resize_to_input_frame",
]

NPY_FORMAT = "NPY"
"""`LoadedImage.format` of an image that arrived as a numpy array rather than an encoded file."""

MAX_REDIRECTS = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Cloud metadata endpoints: already link-local / unique-local, listed so the refusal says what they are.
_METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_DATA_URL_PREFIX = "data:"
_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class LoadedImage:
    """One decoded client image.

    Attributes:
        pixels: (H, W, 3) uint8 array, RGB, C-contiguous, in the original image frame (EXIF orientation
            already applied, so H and W are what a viewer shows and point prompts refer to).
        content_sha256: hex sha256 of the encoded bytes as received (after base64 decoding), the key for
            content-hash caching when the client sends no image id.
        format: PIL format name ("PNG", "JPEG", ...) or "NPY" for numpy payloads.
    """

    pixels: np.ndarray
    content_sha256: str
    format: str

    def __post_init__(self) -> None:
        assert self.pixels.ndim == 3 and self.pixels.shape[2] == 3, f"pixels shape {self.pixels.shape}"
        assert self.pixels.dtype == np.uint8, f"pixels dtype {self.pixels.dtype}"

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels: the original frame's size, as `orig_im_size` expects it."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


# ---- encoded image bytes -------------------------------------------------------------------------------


def decode_image_bytes(data: bytes, limits: ImageLimits, *, field: str = "image.value") -> LoadedImage:
    """Decode an encoded image (PNG, JPEG, ...) into RGB pixels, refusing anything outside `limits`.

    Conversions to RGB: alpha (RGBA, LA, PA, transparent palettes) is composited on black; 16-bit
    integer images (I;16*) are scaled by their container range (v / 257, so 65535 -> 255); 32-bit integer
    (I) and float (F) images, whose range is unknown, are stretched min..max to 0..255; CMYK, YCbCr, 1, L
    and P convert through PIL (embedded ICC profiles are ignored). Animated images give their first frame.
    """
    _check_byte_count(len(data), limits, field)
    if not data:
        raise ImageDecodeError("the image is empty (0 bytes)", field=field)
    try:
        with _open_header(data, limits, field) as image:
            _check_dimensions(image.width, image.height, limits, field)
            image_format = image.format or "unknown"
            # Image.open is lazy: load() inside the try is what turns truncation and corruption into our
            # error instead of an OSError somewhere downstream.
            image.load()
            _apply_exif_orientation(image)
            pixels = _to_rgb_array(image, field)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's own bomb guard (global MAX_IMAGE_PIXELS) can fire before our header check when the
        # configured max_pixels is above it; the warning arrives as an exception only under -W error.
        raise ImageTooLarge(f"image refused as a decompression bomb: {exc}", field=field) from exc
    except InvalidInput:
        raise
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, struct.error, ... on bad data
        raise ImageDecodeError(f"the image could not be decoded ({_describe(exc)})", field=field) from exc
    return LoadedImage(pixels=pixels, content_sha256=_sha256(data), format=image_format)


def _open_header(data: bytes, limits: ImageLimits, field: str) -> Image.Image:
    """Open lazily (header only) with only the accepted format plugins tried, so others never parse it."""
    accepted = _accepted_formats(limits)
    try:
        return Image.open(io.BytesIO(data), formats=accepted)
    except Image.UnidentifiedImageError:
        pass
    # Not an accepted format: name the real one when PIL knows it, for a useful 415 instead of a 400.
    detected = _identify_format(data)
    if detected is not None:
        raise UnsupportedImageFormat(
            f"{detected} images are not accepted; send one of {', '.join(limits.formats)}", field=field
        )
    raise ImageDecodeError("the bytes are not a recognisable image", field=field)


def _accepted_formats(limits: ImageLimits) -> tuple[str, ...]:
    # Image.open raises KeyError for a format name with no plugin installed (e.g. HEIF without
    # pillow-heif): a configured but unavailable format is simply not accepted.
    Image.init()
    return tuple(name.upper() for name in limits.formats if name.upper() in Image.OPEN)


def _identify_format(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format
    except Exception:  # any failure here just means "not a format PIL can name"
        return None


def _apply_exif_orientation(image: Image.Image) -> None:
    """Rotate/flip as the EXIF Orientation tag says, so pixels match what viewers (and clicks) show."""
    # A corrupt EXIF block should not cost the user the whole image: keep it as stored.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)


def _to_rgb_array(image: Image.Image, field: str) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image)
        if values.dtype.kind == "u" and values.dtype.itemsize == 2:
            # The container's range is known: scale by it (round(v / 257)), not by the content, so a
            # value maps to the same grey in every image and a dark image stays dark.
            scaled = (values.astype(np.uint32) * 255 + 32767) // 65535
            return _gray_to_rgb(scaled.astype(np.uint8))
        # 32-bit integer and float images have no meaningful container range: stretch their content.
        return _gray_to_rgb(_stretch_to_uint8(values))
    if mode in _ALPHA_MODES or _has_transparency(image):
        return _composite_on_black(np.asarray(image.convert("RGBA")))
    if mode != "RGB":
        try:
            image = image.convert("RGB")
        except ValueError as exc:  # e.g. LAB, HSV: modes PIL cannot convert to RGB
            raise UnsupportedImageFormat(f"image mode {mode} is not supported", field=field) from exc
    # A private, writable copy (PIL's array view is read-only; torch.from_numpy warns on those).
    return np.array(image, dtype=np.uint8, order="C", copy=True)


_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _has_transparency(image: Image.Image) -> bool:
    """A tRNS colour key (L, RGB, P) or a palette carrying alpha: both mean some pixels are see-through."""
    if "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Min..max of the finite values to 0..255; non-finite values become 0; a flat image becomes 0."""
    as_float = values.astype(np.float64)
    finite = np.isfinite(as_float)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    low = float(as_float[finite].min())
    high = float(as_float[finite].max())
    span = high - low if high > low else 1.0
    scaled = np.where(finite, (as_float - low) * (255.0 / span), 0.0)
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """Premultiply colour by alpha: transparent areas become black, whatever colour they stored."""
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    rgb = (rgba[:, :, :3].astype(np.uint16) * alpha + 127) // 255
    return np.ascontiguousarray(rgb, dtype=np.uint8)


# ---- base64 ---------------------------------------------------------------------------------------------


def decode_base64_image(value: str, limits: ImageLimits, *, field: str = "image.value") -> LoadedImage:
    """Decode a base64 image, optionally as a `data:image/...;base64,` URL; whitespace is tolerated."""
    return decode_image_bytes(_decode_base64(value, limits, field), limits, field=field)


def _decode_base64(value: str, limits: ImageLimits, field: str) -> bytes:
    # Refuse an obviously oversized string before copying it: base64 is 4/3 of the bytes, plus line
    # breaks (at worst CRLF every 64 characters) and a data-URL prefix.
    encoded_max = 4 * -(-limits.max_bytes // 3)
    if len(value) > encoded_max + encoded_max // 32 + 1024:
        raise ImageTooLarge(
            f"the base64 string is {len(value)} characters, more than max_bytes={limits.max_bytes} allows",
            field=field,
        )
    payload = value.strip()
    if payload[: len(_DATA_URL_PREFIX)].lower() == _DATA_URL_PREFIX:
        header, comma, payload = payload.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise InvalidInput("a data URL must look like data:image/<type>;base64,<data>", field=field)
    compact = "".join(payload.split())
    if not compact:
        raise InvalidInput("the base64 string is empty", field=field)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters
        raise InvalidInput(f"not valid base64 ({exc})", field=field) from exc
    _check_byte_count(len(raw), limits, field)
    return raw


# ---- numpy ----------------------------------------------------------------------------------------------


def decode_numpy_payload(value: str, limits: ImageLimits, *, field: str = "image.value") -> LoadedImage:
    """Decode base64 of an `np.save`d uint8 array: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA.

    The .npy header is parsed and checked (dtype, shape, pixel limits) before any array data is read, and
    the data is read as raw uint8: a pickled payload or an object array is refused and never unpickled.
    Channels are taken as RGB; a 4th channel is alpha, composited on black.
    """
    raw = _decode_base64(value, limits, field)
    return LoadedImage(pixels=_npy_pixels(raw, limits, field), content_sha256=_sha256(raw), format=NPY_FORMAT)


def _npy_pixels(raw: bytes, limits: ImageLimits, field: str) -> np.ndarray:
    """The RGB pixels of `np.save` bytes of a uint8 image array, checked header-first (see above)."""
    stream = io.BytesIO(raw)
    if raw[: len(_NPY_MAGIC)] != _NPY_MAGIC:
        raise InvalidInput(
            "not an .npy payload (send base64 of np.save output; pickled data is never loaded)", field=field
        )
    try:
        version = np.lib.format.read_magic(stream)
        read_header: Callable[[io.BytesIO], tuple[tuple[int, ...], bool, np.dtype]] = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        shape, fortran_order, dtype = read_header(stream)
    except (KeyError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidInput(f"the .npy header is malformed ({_describe(exc)})", field=field) from exc
    if dtype.hasobject:
        raise InvalidInput("object arrays are refused: pickled data is never loaded", field=field)
    if dtype != np.uint8:
        raise InvalidInput(f"the array's dtype is {dtype}; send uint8", field=field)
    _check_array_shape(shape, limits, field)
    count = int(np.prod(shape))
    offset = stream.tell()
    if len(raw) - offset != count:
        raise InvalidInput(
            f"the .npy payload holds {len(raw) - offset} data bytes, its header declares {count}", field=field
        )
    array = np.frombuffer(raw, dtype=np.uint8, count=count, offset=offset)
    array = array.reshape(shape, order="F" if fortran_order else "C")
    return _array_to_rgb(array)


def _read_array(array: np.ndarray, limits: ImageLimits, field: str) -> EncodedImage:
    """An in-process uint8 array (a DeploymentHandle call, no JSON), checked by the rules of
    `decode_numpy_payload`; hashed as `np.save` of the C-ordered array, so it matches the same array sent
    as a base64 .npy payload over HTTP."""
    if array.dtype != np.uint8:
        raise InvalidInput(f"the array's dtype is {array.dtype}; send uint8", field=field)
    _check_array_shape(array.shape, limits, field)
    contiguous = np.ascontiguousarray(array)
    encoded = io.BytesIO()
    np.save(encoded, contiguous, allow_pickle=False)
    return EncodedImage(
        data=b"", content_sha256=_sha256(encoded.getvalue()), kind=NPY_FORMAT, field=field, array=contiguous
    )


def _check_array_shape(shape: tuple[int, ...], limits: ImageLimits, field: str) -> None:
    if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (3, 4))):
        raise InvalidInput(f"the array's shape is {shape}; send (H, W), (H, W, 3) or (H, W, 4)", field=field)
    height, width = shape[0], shape[1]
    _check_dimensions(width, height, limits, field)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return _gray_to_rgb(array)
    if array.shape[2] == 4:
        return _composite_on_black(array)
    # Always a private copy: the caller's array (or the request's buffer) may change after we return.
    return np.array(array, dtype=np.uint8, order="C", copy=True)


# ---- URL ------------------------------------------------------------------------------------------------


def fetch_image_url(url: str, limits: ImageLimits, *, field: str = "image.value") -> LoadedImage:
    """Fetch an http(s) image URL and decode it (see `fetch_url_bytes`)."""
    return decode_image_bytes(fetch_url_bytes(url, limits, field=field), limits, field=field)


def fetch_url_bytes(url: str, limits: ImageLimits, *, field: str = "image.value") -> bytes:
    """Fetch an http(s) image URL's bytes (at most `max_bytes`), guarding against SSRF.

    Each hop (at most 3 redirects, followed by hand) has its host resolved and every address checked:
    private, loopback, link-local, reserved and other non-global addresses are refused unless
    `limits.allow_private_urls`; cloud-metadata, multicast and unspecified addresses always are. The
    connection goes to a checked address (the URL's host is kept for the Host header and TLS SNI/certificate
    checks), so DNS cannot be rebound between check and connect. Environment proxies are ignored (they would
    bypass the address check). `url_timeout_s` bounds each network step and, roughly, the whole download;
    DNS resolution uses the system resolver's own timeout.
    """
    if not limits.allow_url:
        raise URLInputRefused(
            "URL input is disabled on this server (SAM_IMAGE_ALLOW_URL); send the image as base64",
            field=field,
        )
    deadline = time.monotonic() + limits.url_timeout_s
    current = url
    with httpx.Client(timeout=httpx.Timeout(limits.url_timeout_s), follow_redirects=False, trust_env=False) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            target = _checked_target(current, limits, field)
            outcome = _fetch_pinned(client, target, limits, field, deadline)
            if isinstance(outcome, bytes):
                return outcome
            current = urljoin(current, outcome)  # relative to the URL as named, not its address
    raise URLFetchError(f"gave up after {MAX_REDIRECTS} redirects", field=field)


@dataclass(frozen=True)
class _Target:
    """A URL whose host was resolved and checked: one URL per checked address, in resolver order."""

    host: str
    host_header: str
    pinned_urls: tuple[str, ...]


def _checked_target(url: str, limits: ImageLimits, field: str) -> _Target:
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:  # bad port, bad IPv6 literal
        raise InvalidInput(f"not a valid URL ({exc})", field=field) from exc
    if scheme not in ("http", "https"):
        raise URLInputRefused(f"only http and https URLs are fetched, not {scheme or 'none'!r}", field=field)
    host = parts.hostname
    if not host:
        raise InvalidInput("the URL has no host", field=field)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    except (OSError, UnicodeError, ValueError) as exc:  # gaierror is an OSError
        raise URLFetchError(f"could not resolve host {host!r}", field=field) from exc
    if not addresses:
        raise URLFetchError(f"host {host!r} has no address", field=field)
    # Refuse if any address is off limits: which one the connection would use is not ours to trust.
    for address in addresses:
        problem = _refused_address_kind(address, allow_private=limits.allow_private_urls)
        if problem:
            raise URLInputRefused(f"host {host!r} resolves to {problem} address {address}", field=field)
    pinned_urls = tuple(
        parts._replace(netloc=f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}").geturl()
        for address in dict.fromkeys(addresses)
    )
    bare_host = f"[{host}]" if ":" in host else host
    default_port = port == (443 if scheme == "https" else 80)
    return _Target(host=host, host_header=bare_host if default_port else f"{bare_host}:{port}", pinned_urls=pinned_urls)


def _refused_address_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> str | None:
    """Why an address is off limits for server-side fetches, or None when it may be fetched.

    Metadata, multicast and unspecified addresses are refused even with `allow_private`: no image lives
    there, and the metadata service is the classic SSRF prize.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    always = (
        (address in _METADATA_ADDRESSES, "a cloud metadata"),
        (address.is_multicast, "a multicast"),
        (address.is_unspecified, "an unspecified"),
    )
    unless_private_allowed = (
        (address.is_loopback, "a loopback"),
        (address.is_link_local, "a link-local"),
        (address.is_reserved, "a reserved"),
        (address.is_private, "a private"),
        (not address.is_global, "a non-global"),  # shared 100.64/10 and the like
    )
    checks = always if allow_private else always + unless_private_allowed
    return next((kind for refused, kind in checks if refused), None)


def _fetch_pinned(
    client: httpx.Client, target: _Target, limits: ImageLimits, field: str, deadline: float
) -> bytes | str:
    """Try the checked addresses in order (dual-stack hosts); only a failed connect moves to the next."""
    for index, pinned_url in enumerate(target.pinned_urls):
        try:
            return _fetch_once(client, pinned_url, target, limits, field, deadline)
        except httpx.ConnectError as exc:
            if index == len(target.pinned_urls) - 1:
                raise URLFetchError(f"could not connect to {target.host!r} ({exc})", field=field) from exc
    raise AssertionError("a _Target always has at least one address")


def _fetch_once(
    client: httpx.Client, pinned_url: str, target: _Target, limits: ImageLimits, field: str, deadline: float
) -> bytes | str:
    """The body of a 2xx response, or the Location of a redirect; anything else raises.

    The connection goes to the checked address in `pinned_url`; the Host header and TLS SNI (which also
    drives certificate verification) keep the URL's host name, so DNS cannot change between check and use.
    """
    headers = {"Host": target.host_header, "Accept": "image/*", "Accept-Encoding": "identity"}
    try:
        with client.stream("GET", pinned_url, headers=headers, extensions={"sni_hostname": target.host}) as response:
            if response.status_code in _REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise URLFetchError(f"HTTP {response.status_code} redirect without a Location", field=field)
                return location
            if not 200 <= response.status_code < 300:
                raise URLFetchError(
                    f"the URL answered HTTP {response.status_code} {response.reason_phrase}".rstrip(),
                    field=field,
                )
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit():
                _check_byte_count(int(declared), limits, field)
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                # Stop as soon as the limit is passed: a lying or absent Content-Length must not make us
                # buffer an unbounded body.
                _check_byte_count(len(body), limits, field)
                if time.monotonic() > deadline:
                    raise URLFetchError(f"the download took longer than {limits.url_timeout_s} s", field=field)
            return bytes(body)
    except httpx.ConnectError:
        raise  # the caller may try the host's next address
    except httpx.TimeoutException as exc:
        raise URLFetchError(f"timed out after {limits.url_timeout_s} s", field=field) from exc
    except httpx.HTTPError as exc:
        raise URLFetchError(f"could not fetch the URL ({_describe(exc)})", field=field) from exc


# ---- dispatch -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedImage:
    """A client image as received, before any pixel is decoded: what its content hash is taken of.

    Attributes:
        data: the encoded file (PNG, JPEG, ...) or the `np.save` bytes, after base64 decoding or download.
        content_sha256: hex sha256 of `data` (for an in-process array: of its `np.save` bytes).
        kind: "FILE" for an encoded image file, "NPY" for a numpy payload.
        field: the request field its errors name.
        array: an in-process uint8 array (a handle call), already checked; `data` is then empty.
    """

    data: bytes
    content_sha256: str
    kind: str
    field: str
    array: np.ndarray | None = None


FILE_KIND = "FILE"


def read_image(kind: str, value: object, limits: ImageLimits, *, field: str = "image") -> EncodedImage:
    """The bytes of the request's `image = {"type": kind, "value": value}` and their hash, without decoding.

    Cheap next to a decode (base64 and sha256 run at hundreds of MB/s), so a repeat image is found in the
    cache by its hash before any pixel is decoded. Kinds: "base64" (str), "url" (str: fetched here, when
    enabled), "numpy" (str: base64 of an .npy; or an np.ndarray from an in-process handle call). "file" is
    refused (no server paths are read); "pil" and "multipart" are not supported over this API. Errors name
    `<field>.type` or `<field>.value`.
    """
    type_field, value_field = f"{field}.type", f"{field}.value"
    if kind == "file":
        raise URLInputRefused("reading server files is not allowed; send the image as base64", field=type_field)
    if kind in ("pil", "multipart"):
        raise InvalidInput(
            f"image type {kind!r} is not supported over this API; use base64, url or numpy", field=type_field
        )
    if kind == "numpy" and isinstance(value, np.ndarray):
        return _read_array(value, limits, value_field)
    if not isinstance(kind, str) or kind not in ("base64", "url", "numpy"):
        raise InvalidInput(f"unknown image type {kind!r}; use base64, url or numpy", field=type_field)
    if not isinstance(value, str):
        raise InvalidInput(
            f"an image of type {kind!r} needs a string value, got {type(value).__name__}", field=value_field
        )
    if kind == "url":
        data = fetch_url_bytes(value, limits, field=value_field)
    else:
        data = _decode_base64(value, limits, value_field)
    return EncodedImage(
        data=data, content_sha256=_sha256(data), kind=NPY_FORMAT if kind == "numpy" else FILE_KIND, field=value_field
    )


def decode_image(encoded: EncodedImage, limits: ImageLimits) -> LoadedImage:
    """The pixels of an image `read_image` returned, under `limits` (the CPU-heavy half of loading)."""
    if encoded.array is not None:
        pixels = _array_to_rgb(encoded.array)
        return LoadedImage(pixels=pixels, content_sha256=encoded.content_sha256, format=NPY_FORMAT)
    if encoded.kind == NPY_FORMAT:
        pixels = _npy_pixels(encoded.data, limits, encoded.field)
        return LoadedImage(pixels=pixels, content_sha256=encoded.content_sha256, format=NPY_FORMAT)
    return decode_image_bytes(encoded.data, limits, field=encoded.field)


def resize_to_input_frame(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels resized so the longest side is 1024: SAM's input frame, before padding.

    Exactly what `SamPredictor.set_image` does (`ResizeLongestSide.apply_image`: torchvision's resize of a PIL
    image, which is PIL's bilinear resize, antialiased, to `preprocess_shape`), without torch.
    """
    height, width = preprocess_shape((int(pixels.shape[0]), int(pixels.shape[1])))
    if (height, width) == pixels.shape[:2]:
        return pixels
    return np.array(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))


def encoder_input(encoded: EncodedImage, limits: ImageLimits) -> EncoderInput:
    """Decode an image and resize it to the encoder's input frame: the CPU-heavy work of a new image, done
    where it arrives so that only the ~3 MB resized pixels travel on to the encoder."""
    image = decode_image(encoded, limits)
    return EncoderInput(pixels=resize_to_input_frame(image.pixels), original_size=image.size)


def load_image(kind: str, value: object, limits: ImageLimits, *, field: str = "image") -> LoadedImage:
    """`read_image` then `decode_image`: the request's image as RGB pixels."""
    return decode_image(read_image(kind, value, limits, field=field), limits)


# ---- shared checks --------------------------------------------------------------------------------------


def _check_byte_count(count: int, limits: ImageLimits, field: str) -> None:
    if count > limits.max_bytes:
        raise ImageTooLarge(f"the image is over {limits.max_bytes} bytes (max_bytes)", field=field)


def check_image_size(size: tuple[int, int], limits: ImageLimits, *, field: str) -> None:
    """Refuse an image size (height, width) outside `limits` (ImageTooLarge, 413), e.g. a client's `orig_im_size`.

    The decoder upsamples its masks to this size, so no size that an image could not have is ever decoded.
    """
    height, width = size
    if height <= 0 or width <= 0:
        raise InvalidInput(f"must be two positive integers [height, width], got [{height}, {width}]", field=field)
    _check_dimensions(width, height, limits, field)


def _check_dimensions(width: int, height: int, limits: ImageLimits, field: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"the image has no pixels ({width}x{height})", field=field)
    if max(width, height) > limits.max_side:
        raise ImageTooLarge(
            f"the image is {width}x{height}; its longest side may be at most {limits.max_side} pixels",
            field=field,
        )
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels, over max_pixels={limits.max_pixels}",
            field=field,
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
