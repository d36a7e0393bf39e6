"""The routes as a client calls them: request bodies built from the server's own pydantic models (a request the
schema refuses fails before it is sent); the answers are read by `sam_core.wire.answers`. httpx, pydantic and numpy
only, for the light client.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

import numpy as np
from pydantic import BaseModel

from sam_core.frames import EMBEDDING_SHAPE, MASK_INPUT_SHAPE
from sam_core.wire.generator_schemas import SegmentEverythingRequest
from sam_core.wire.schemas import (
    EmbedImageRequest,
    ImagePayload,
    SegmentImageRequest,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

ModelT = TypeVar("ModelT", bound=BaseModel)
BinaryT = TypeVar("BinaryT")

ImageLike: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | PILImage | np.ndarray"
"""An image for the API: a file path (or an http(s) URL, fetched by the server when it allows URLs), the
encoded file's bytes (PNG, JPEG, ...), a PIL image, or an (H, W, 3) RGB / (H, W) grey uint8 array. PIL images
and arrays are sent as lossless PNG."""

JsonFormat: TypeAlias = Literal["json", "rle", "png"]

DEFAULT_TIMEOUT_S = 300.0
"""Generous on purpose: the first request for an image runs the encoder (seconds to tens of seconds on CPU)."""

USER_AGENT = "sam-serve-client/0.1.0"


def client_headers(api_key: str | None) -> dict[str, str]:
    """Every client request's headers: the user agent, and the bearer token when the service needs one."""
    headers = {"User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _plain(value: Any) -> Any:
    """Numpy arrays and scalars (at any depth of lists/tuples) as plain Python lists and numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _npy_base64(array: np.ndarray) -> str:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)
    return base64.b64encode(stream.getvalue()).decode("ascii")


def _png_bytes(image: PILImage) -> bytes:
    # Modes PNG cannot hold (CMYK, YCbCr, F, ...) go to RGB; compress_level=1 trades ~10 % size for ~3x speed.
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGB")
    stream = io.BytesIO()
    image.save(stream, format="PNG", compress_level=1)
    return stream.getvalue()


def image_payload(image: ImageLike) -> ImagePayload:
    """The request's `image` field for any ImageLike (see `ImageLike`); arrays and PIL images become PNG.

    Raises:
        ValueError: an array that is not (H, W, 3) or (H, W) uint8.
        TypeError: anything else that is not an image.
        OSError: a path that cannot be read.
    """
    from PIL import Image

    if isinstance(image, str) and image.startswith(("http://", "https://")):
        return ImagePayload(type="url", value=image)
    if isinstance(image, str | os.PathLike):
        data = Path(image).read_bytes()
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    elif isinstance(image, Image.Image):
        data = _png_bytes(image)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"an image array must be (H, W, 3) RGB or (H, W) uint8, got {image.shape} {image.dtype}")
        data = _png_bytes(Image.fromarray(np.ascontiguousarray(image)))
    else:
        raise TypeError(f"not an image: {type(image).__name__} (use a path, bytes, a PIL image or a uint8 array)")
    return ImagePayload(type="base64", value=base64.b64encode(data).decode("ascii"))


def with_model(body: dict[str, Any], model: str | None) -> dict[str, Any]:
    """The body naming the client's served model (`model`; None: the service's default)."""
    return body if model is None else {**body, "model": model}


def embed_request_body(image: ImageLike | None, *, image_id: str | None, format: str) -> dict[str, Any]:
    """The JSON body of POST /sam/embed_image, validated by `EmbedImageRequest`."""
    request = EmbedImageRequest(
        image=None if image is None else image_payload(image),
        image_id=image_id,
        format=format,  # the Literal is checked by the model
    )
    return request.model_dump(mode="json", exclude_none=True)


def _mask_input_array(mask_input: np.ndarray) -> np.ndarray:
    array = np.asarray(mask_input, dtype=np.float32)
    if array.size != int(np.prod(MASK_INPUT_SHAPE)) or array.shape[-2:] != MASK_INPUT_SHAPE[-2:]:
        raise ValueError(f"mask_input must be one 256x256 low-res mask {MASK_INPUT_SHAPE}, got {array.shape}")
    return array.reshape(MASK_INPUT_SHAPE)


def segment_request_body(
    *,
    image: ImageLike | None,
    image_id: str | None,
    point_coords: Any,
    point_labels: Any,
    box: Any,
    multimask_output: bool,
    mask_input: Any,
    use_mask_input_cache: bool,
    has_mask_input: bool | None,
    embeddings: Any,
    orig_im_size: Any,
    format: str,
    prompts: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON body of POST /sam/segment_image, validated by `SegmentImageRequest` (see `segment_image`).

    With `prompts` (see `SamClient.segment_prompts`) the single-prompt arguments must be left unset.
    """
    fields: dict[str, Any] = {
        "image": None if image is None else image_payload(image),
        "image_id": image_id,
        "multimask_output": multimask_output,
        "format": format,
    }
    if prompts is not None:
        fields["prompts"] = [_prompt_fields(**prompt) for prompt in prompts]
    else:
        fields.update(_prompt_fields(point_coords, point_labels, box, mask_input))
        fields["use_mask_input_cache"] = use_mask_input_cache
        fields["has_mask_input"] = mask_input is not None if has_mask_input is None else has_mask_input
    if isinstance(embeddings, np.ndarray):
        array = np.asarray(embeddings, dtype=np.float32)
        if array.size == int(np.prod(EMBEDDING_SHAPE)):
            array = array.reshape(EMBEDDING_SHAPE)
        fields["embeddings"], fields["embeddings_format"] = _npy_base64(array), "binary"
    elif embeddings is not None:
        fields["embeddings"], fields["embeddings_format"] = _plain(embeddings), "json"
    if orig_im_size is not None:
        fields["orig_im_size"] = _plain(orig_im_size)
    request = SegmentImageRequest(**{name: value for name, value in fields.items() if value is not None})
    # With prompts, only what was given: the single-prompt defaults must not reach the server as if sent.
    return request.model_dump(mode="json", exclude_none=True, exclude_unset=prompts is not None)


def prompts_request_body(
    prompts: Sequence[Mapping[str, Any]],
    *,
    image: ImageLike | None = None,
    image_id: str | None = None,
    multimask_output: bool = False,
    embeddings: Any = None,
    orig_im_size: Any = None,
    format: str = "json",
) -> dict[str, Any]:
    """The JSON body of a several-prompts POST /sam/segment_image (see `SamClient.segment_prompts`)."""
    return segment_request_body(
        image=image, image_id=image_id, point_coords=None, point_labels=None, box=None,
        multimask_output=multimask_output, mask_input=None, use_mask_input_cache=False, has_mask_input=None,
        embeddings=embeddings, orig_im_size=orig_im_size, format=format, prompts=prompts,
    )  # fmt: skip


def everything_request_body(
    image: ImageLike | None = None, *, image_id: str | None = None, format: str = "rle", **options: Any
) -> dict[str, Any]:
    """The JSON body of POST /sam/segment_everything (see `SamClient.segment_everything`)."""
    payload = None if image is None else image_payload(image)
    request = SegmentEverythingRequest(image=payload, image_id=image_id, format=format, **options)
    return request.model_dump(mode="json", exclude_none=True)


def _prompt_fields(
    point_coords: Any = None, point_labels: Any = None, box: Any = None, mask_input: Any = None
) -> dict[str, Any]:
    """One prompt's fields: labels default to all foreground; a box alone gets empty point lists (no (0, 0)/-1
    padding row, so SAM sees just the two corners, as SamPredictor does); an array mask input goes as binary."""
    fields: dict[str, Any] = {"box": _plain(box)}
    if point_coords is not None:
        coords = _plain(point_coords)
        fields["point_coords"] = coords
        fields["point_labels"] = [1] * len(coords) if point_labels is None else _plain(point_labels)
    elif box is not None:
        fields["point_coords"], fields["point_labels"] = [], []
    elif point_labels is not None:
        fields["point_labels"] = _plain(point_labels)
    if isinstance(mask_input, np.ndarray):
        fields["mask_input"], fields["mask_input_format"] = _npy_base64(_mask_input_array(mask_input)), "binary"
    elif mask_input is not None:
        fields["mask_input"], fields["mask_input_format"] = _plain(mask_input), "json"
    return {name: value for name, value in fields.items() if value is not None}
