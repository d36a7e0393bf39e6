"""Request and response models shared by the HTTP ingress, handle calls and the Python client.

Field names and defaults follow Roboflow inference's SAM routes so its clients keep working; the
extensions (box, multimask_output, rle/png formats, content-hash caching) are additive. Unknown fields are
refused, so a misspelt prompt field never passes silently; Roboflow inference's bookkeeping fields are accepted and
ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

from sam_core.settings import MODEL_ID_PATTERN

EMBED_ROUTE = "/sam/embed_image"
SEGMENT_ROUTE = "/sam/segment_image"
DECODER_FILE_ROUTE = "/sam/decoder.onnx"
MODELS_ROUTE = "/sam/models"
"""Roboflow inference's two routes: the ingress serves them, the client calls them."""

MAX_IMAGE_ID_LENGTH = 256

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

_COORDINATE_LIMIT = 1e9
Coordinate = (
    Annotated[StrictInt, Field(ge=-_COORDINATE_LIMIT, le=_COORDINATE_LIMIT)]
    | Annotated[StrictFloat, Field(allow_inf_nan=False, ge=-_COORDINATE_LIMIT, le=_COORDINATE_LIMIT)]
)
"""A finite number of sane size; strings and booleans are refused rather than coerced (and an integer of 400
digits is refused before anything tries to make it a float)."""


class ImagePayload(BaseModel):
    """An image as Roboflow inference sends it: `{"type": "base64"|"url"|"numpy", "value": ...}`."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(default="base64", description="base64 (default), url (when enabled), numpy (.npy, base64)")
    value: Any = Field(description="base64 string (a data: URL prefix is allowed), URL, or base64 .npy")


class _RoboflowFields(BaseModel):
    """Fields both routes share, including Roboflow inference's bookkeeping fields (accepted, ignored)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, description="ignored (Roboflow bookkeeping)")
    api_key: str | None = Field(default=None, description="ignored; use the Authorization header")
    usage_billable: bool | None = Field(default=None, description="ignored (Roboflow bookkeeping)")
    start: float | None = Field(default=None, description="ignored (Roboflow bookkeeping)")
    source: str | None = Field(default=None, description="ignored (Roboflow bookkeeping)")
    source_info: str | None = Field(default=None, description="ignored (Roboflow bookkeeping)")
    disable_model_monitoring: bool | None = Field(default=None, description="ignored (Roboflow bookkeeping)")
    model_id: str | None = Field(default=None, description="ignored (Roboflow bookkeeping)")
    model: str | None = Field(
        default=None,
        pattern=MODEL_ID_PATTERN,
        description="the served model's id (GET /sam/models); unset: the default model",
    )
    sam_version_id: str | None = Field(
        default=None, description="Roboflow inference's model choice: a served model's id or type (unset: the default)"
    )
    image: ImagePayload | None = Field(default=None, description="the image (not needed when cached)")
    image_id: str | None = Field(
        default=None,
        description="the client's id for the image; its embedding is cached under it. Without one, the "
        "image's content hash is used.",
    )

    @field_validator("image_id")
    @classmethod
    def _image_id_is_printable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must not be empty")
        if len(value) > MAX_IMAGE_ID_LENGTH:
            raise ValueError(f"at most {MAX_IMAGE_ID_LENGTH} characters, got {len(value)}")
        if _CONTROL_CHARACTERS.search(value):
            raise ValueError("must not contain control characters")
        return value


class EmbedImageRequest(_RoboflowFields):
    """POST /sam/embed_image: embed an image and cache the embedding under `image_id`."""

    format: Literal["json", "binary", "metadata"] = Field(
        default="json",
        description="json: Roboflow inference's answer, the float32 (1, 256, 64, 64) embedding as nested lists "
        "(`embeddings`, ~12.5 MB) with image_id, original_size, cached and time; binary: the embedding's .npy "
        "bytes (4 MB); metadata: the json answer without `embeddings` (to warm the cache)",
    )


MAX_PROMPTS = 256
"""Most prompts one `segment_image` request may carry in `prompts`."""

SINGLE_PROMPT_FIELDS = frozenset({"point_coords", "point_labels", "box", "has_mask_input", "mask_input"})
"""Roboflow inference's one-prompt fields: a request gives these or `prompts`, never both."""


class SegmentPrompt(BaseModel):
    """One prompt of a `prompts` list: points and/or a box on the image, optionally with its own mask input."""

    model_config = ConfigDict(extra="forbid")

    point_coords: list[list[Coordinate]] = Field(default_factory=list, description="[[x, y], ...], original pixels")
    point_labels: list[Coordinate] = Field(default_factory=list, description="one label per point (1, 0, -1)")
    box: list[Coordinate] | None = Field(default=None, description="[x0, y0, x1, y1] in original-image pixels")
    mask_input: str | list[Any] | None = Field(
        default=None, description="this prompt's low-res mask: json polygons (256 frame) or base64 .npy logits"
    )
    mask_input_format: Literal["json", "binary"] = "json"


class SegmentImageRequest(_RoboflowFields):
    """POST /sam/segment_image: masks for a prompt on an image (from its cached embedding when there is one).

    The prompt's source, in order: `embeddings` (+ `orig_im_size`), else the embedding cached under
    `image_id`, else `image` (embedded and cached). Points and boxes are (x, y) in original-image pixels.
    """

    embeddings: str | list[Any] | None = Field(
        default=None, description="a client-held embedding: base64 .npy (binary) of float32 (1, 256, 64, 64)"
    )
    embeddings_format: Literal["json", "binary"] = "json"
    orig_im_size: Annotated[list[Annotated[StrictInt, Field(ge=1)]], Field(min_length=2, max_length=2)] | None = Field(
        default=None,
        description="[height, width] of the original image; required with `embeddings`; within the image "
        "limits (images.max_side, images.max_pixels)",
    )
    point_coords: list[list[Coordinate]] = Field(
        default_factory=lambda: [[0.0, 0.0]], description="[[x, y], ...] in original-image pixels"
    )
    point_labels: list[Coordinate] = Field(
        default_factory=lambda: [-1.0], description="1 foreground, 0 background, -1 padding, 2/3 box corners"
    )
    box: list[Coordinate] | None = Field(default=None, description="[x0, y0, x1, y1] in original-image pixels")
    has_mask_input: bool = False
    mask_input: str | list[Any] | None = Field(
        default=None,
        description="previous low-res mask: json polygons in the 256x256 low-res frame, or base64 .npy "
        "(1, 1, 256, 256) logits (binary)",
    )
    mask_input_format: Literal["json", "binary"] = "json"
    use_mask_input_cache: bool = Field(
        default=True,
        description="with has_mask_input and no mask_input, use this image's last low-res logits",
    )
    prompts: Annotated[list[SegmentPrompt], Field(min_length=1, max_length=MAX_PROMPTS)] | None = Field(
        default=None,
        description=f"several prompts on the image (at most {MAX_PROMPTS}), answered in order under `results`; "
        "instead of the single-prompt fields (point_coords, point_labels, box, has_mask_input, mask_input). "
        "use_mask_input_cache does not apply: the cached low-res logits are a single-prompt feature",
    )
    multimask_output: bool = Field(
        default=False, description="three masks with their predicted IoU (for every prompt of `prompts`)"
    )
    format: Literal["json", "binary", "rle", "png"] = Field(
        default="json",
        description="json: polygons; binary: npz with bool masks (1, H, W) and low_res_masks logits "
        "(1, 256, 256) (with prompts: masks (P, M, H, W), low_res_masks (P, M, 256, 256), scores (P, M)); "
        "rle: COCO RLE; png: base64 1-bit PNGs",
    )


class ServedModelInfo(BaseModel):
    """One served model, as `GET /sam/models` lists it."""

    id: str = Field(description="what a request names in `model`")
    model_type: str = Field(description="architecture (vit_h, vit_l, vit_b, vit_tiny)")
    default: bool = Field(description="what a request that names no model gets")
    checkpoint_sha256: str | None = Field(
        description="the checkpoint's sha256: resolved by a decoder, else the configured or official value, else null"
    )
    model_id: str | None = Field(description="the weights' identity in cache keys (type + sha256 prefix), once known")
    loaded: dict[str, int] | None = Field(
        description="replicas holding it loaded, by deployment (encoder, decoder); null without a shared cache"
    )


class ServedModelsResponse(BaseModel):
    models: list[ServedModelInfo]


class ErrorResponse(BaseModel):
    """Every error answer: which field is at fault (None when not one field) and why. Never a traceback."""

    error: str = Field(description="the error kind, e.g. InvalidInput, CacheMiss, ImageTooLarge, Overloaded")
    field: str | None = Field(description="the request field at fault, as a dotted path")
    reason: str


class EmbedImageResponse(BaseModel):
    """The json and metadata answers of /sam/embed_image (binary answers are the raw .npy bytes)."""

    image_id: str
    original_size: tuple[int, int]
    cached: bool = Field(description="the embedding was already cached (the encoder did not run)")
    time: float
    embeddings: list[Any] | None = Field(
        default=None,
        description="format json: the float32 (1, 256, 64, 64) embedding as nested lists, as Roboflow answers; "
        "send it back as `embeddings` with `orig_im_size`",
    )


class SegmentImageResponse(BaseModel):
    """The json/rle/png answer of /sam/segment_image (binary answers are npz bytes)."""

    masks: list[Any] = Field(description="one entry per mask: polygon [[x, y], ...], RLE dict or base64 PNG")
    low_res_masks: list[Any] = Field(description="the same for the 256x256 low-res logits > 0")
    scores: list[float] = Field(description="predicted IoU of each mask")
    image_id: str | None = None
    time: float


class PromptResult(BaseModel):
    """One prompt's answer inside `results`."""

    masks: list[Any] = Field(description="one entry per mask: polygon [[x, y], ...], RLE dict or base64 PNG")
    low_res_masks: list[Any] = Field(description="the same for the 256x256 low-res logits > 0")
    scores: list[float] = Field(description="predicted IoU of each mask")


class SegmentPromptsResponse(BaseModel):
    """The json/rle/png answer of /sam/segment_image for a request with `prompts`: one result per prompt."""

    results: list[PromptResult]
    image_id: str | None = None
    time: float
