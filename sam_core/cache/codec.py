"""The bytes under a cache key: an 80-byte header (kind, shape, sizes, the image's content hash, a write tag) and
float16 values."""

from __future__ import annotations

import secrets
import struct
from typing import Final

import numpy as np

from sam_core.cache.keys import KIND_EMBEDDING, KIND_LOW_RES_LOGITS
from sam_core.embedding import STORED_DTYPE, ImageEmbedding, to_storage
from sam_core.frames import EMBEDDING_SHAPE, MASK_INPUT_SHAPE

_MAGIC: Final = b"SAMC"

_FORMAT_VERSION: Final = 3  # 2: the header ends in an 8-byte write tag; 3: the image's content hash before it

_KIND_CODES: Final = {KIND_EMBEDDING: 1, KIND_LOW_RES_LOGITS: 2}

_DTYPE_FLOAT16: Final = 1


# magic, format version, kind code, dtype code, ndim, shape[4], original (h, w), input (h, w), content hash,
# write tag; 80 bytes. The content hash is the sha256 of the image bytes the embedding came from (zeros when
# unknown): single-flight waiters read it to tell their image's run from another's under one image_id. The
# write tag is random per write: equal tags mean equal bytes, so a decoder replica can check its local copy of
# an embedding by reading the header alone (see `sam_core.cache.local_copies`).
_HEADER: Final = struct.Struct("<4sBBBB4I2I2I32s8s")

HEADER_BYTES: Final = _HEADER.size

_TAG_OFFSET: Final = HEADER_BYTES - 8

CONTENT_OFFSET: Final = _TAG_OFFSET - 32
"""Where the 32-byte content hash sits in the header (Redis scripts read it with GETRANGE)."""

_NO_CONTENT: Final = bytes(32)

_CONTENT_PREFIX: Final = "sha256:"


def content_digest(content_id: str) -> bytes:
    """The 32 header bytes for a content id (`sha256:` and 64 hex digits); zeros for "" or any other id."""
    hex_digits = content_id.removeprefix(_CONTENT_PREFIX)
    if content_id.startswith(_CONTENT_PREFIX) and len(hex_digits) == 64:
        try:
            return bytes.fromhex(hex_digits)
        except ValueError:
            pass
    return _NO_CONTENT


def _content_id(digest: bytes) -> str:
    return "" if digest == _NO_CONTENT else _CONTENT_PREFIX + digest.hex()


class CorruptCacheEntryError(ValueError):
    """Bytes under a cache key that are not a value this module wrote (or a different format version).

    Never leaves the cache's public methods: the getters log it and report a miss.
    """


def _encode(
    kind: str, array: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int], content_id: str = ""
) -> bytes:
    if array.ndim != 4:
        raise ValueError(f"{kind}: expected a 4-d array, got shape {array.shape}")
    try:
        header = _HEADER.pack(
            _MAGIC,
            _FORMAT_VERSION,
            _KIND_CODES[kind],
            _DTYPE_FLOAT16,
            array.ndim,
            *(int(n) for n in array.shape),
            *(int(n) for n in original_size),
            *(int(n) for n in input_size),
            content_digest(content_id),
            secrets.token_bytes(8),
        )
    except struct.error as exc:
        raise ValueError(f"{kind}: sizes do not fit the header ({exc})") from exc
    return header + to_storage(array).tobytes()


def _decode(kind: str, payload: bytes) -> tuple[np.ndarray, tuple[int, int], tuple[int, int], str]:
    if len(payload) < HEADER_BYTES:
        raise CorruptCacheEntryError(f"{kind}: {len(payload)} bytes is shorter than the {HEADER_BYTES}-byte header")
    magic, version, kind_code, dtype_code, ndim, *sizes, digest, _tag = _HEADER.unpack_from(payload)
    if magic != _MAGIC:
        raise CorruptCacheEntryError(f"{kind}: bad magic {magic!r}")
    if version != _FORMAT_VERSION:
        raise CorruptCacheEntryError(f"{kind}: format version {version}, this code reads {_FORMAT_VERSION}")
    if kind_code != _KIND_CODES[kind]:
        raise CorruptCacheEntryError(f"{kind}: entry holds kind code {kind_code}")
    if dtype_code != _DTYPE_FLOAT16 or ndim != 4:
        raise CorruptCacheEntryError(f"{kind}: unsupported dtype code {dtype_code} / ndim {ndim}")
    shape = tuple(sizes[0:4])
    original_size = (sizes[4], sizes[5])
    input_size = (sizes[6], sizes[7])
    body = memoryview(payload)[HEADER_BYTES:]
    expected = int(np.prod(shape)) * STORED_DTYPE.itemsize
    if len(body) != expected:
        raise CorruptCacheEntryError(f"{kind}: body is {len(body)} bytes, shape {shape} needs {expected}")
    array = np.frombuffer(body, dtype=STORED_DTYPE).astype(np.float32).reshape(shape)
    return array, original_size, input_size, _content_id(digest)


def write_tag(payload: bytes) -> bytes | None:
    """The 8-byte write tag of an encoded value (or of its first `HEADER_BYTES`), None if it is not one."""
    if len(payload) < HEADER_BYTES or payload[:4] != _MAGIC or payload[4] != _FORMAT_VERSION:
        return None
    return bytes(payload[_TAG_OFFSET:HEADER_BYTES])


def header_content_id(payload: bytes) -> str | None:
    """The content id in an encoded value's header (or its first `HEADER_BYTES`): "" when unknown, None when
    `payload` is not one this module wrote."""
    if write_tag(payload) is None:
        return None
    return _content_id(bytes(payload[CONTENT_OFFSET:_TAG_OFFSET]))


def encode_embedding(embedding: ImageEmbedding) -> bytes:
    """Serialise an embedding: the 80-byte header then the (1, 256, 64, 64) array as float16 (2 MiB).

    float16 keeps ~3 significant digits, far below the decoder's sensitivity, and halves Redis memory and
    transfer. Values beyond the float16 range (+-65504) are clipped rather than turned into inf.
    """
    return _encode(
        KIND_EMBEDDING, embedding.embedding, embedding.original_size, embedding.input_size, embedding.content_id
    )


def decode_embedding(payload: bytes) -> ImageEmbedding:
    """Inverse of `encode_embedding`; the array comes back as float32. Raises `CorruptCacheEntryError`."""
    array, original_size, input_size, content_id = _decode(KIND_EMBEDDING, payload)
    if array.shape != EMBEDDING_SHAPE:
        raise CorruptCacheEntryError(f"{KIND_EMBEDDING}: shape {array.shape}, expected {EMBEDDING_SHAPE}")
    return ImageEmbedding(embedding=array, original_size=original_size, input_size=input_size, content_id=content_id)


def encode_low_res_logits(logits: np.ndarray) -> bytes:
    """Serialise (1, 1, 256, 256) low-res mask logits (256 low-res frame) as header + float16 (128 KiB).

    SAM's low-res logits sit within about +-100 in practice, where float16 is exact to ~0.05 %; anything
    beyond +-65504 is clipped, which leaves the mask (the sign) and the saturated sigmoid unchanged.
    """
    if tuple(logits.shape) != MASK_INPUT_SHAPE:
        raise ValueError(f"low-res logits must have shape {MASK_INPUT_SHAPE}, got {logits.shape}")
    return _encode(KIND_LOW_RES_LOGITS, logits, (0, 0), (0, 0))


def decode_low_res_logits(payload: bytes) -> np.ndarray:
    """Inverse of `encode_low_res_logits`: float32 (1, 1, 256, 256). Raises `CorruptCacheEntryError`."""
    array, _, _, _ = _decode(KIND_LOW_RES_LOGITS, payload)
    if array.shape != MASK_INPUT_SHAPE:
        raise CorruptCacheEntryError(f"{KIND_LOW_RES_LOGITS}: shape {array.shape}, expected {MASK_INPUT_SHAPE}")
    return array
