"""Segment everything: `SamAutomaticMaskGenerator`'s own algorithm with its point prompts decoded by the ONNX
decoder from cached embeddings.

The generator (point grids, crops, IoU and stability filters, box NMS, small-region clean-up, RLE) is
segment-anything's class, run unchanged; only the predictor it asks is replaced. `PointPredictor` answers
`set_image` with the crop's embedding (computed before the run, by the encoder deployment) and
`predict_torch` with one ONNX multimask decode per point. Measured on vit_tiny, 2 cores: 106 ms a point at
1500x2250 with ONNX against 180-260 ms in torch's batched decoder, so the run stays on the CPU decoder
replicas and the encoder is only ever asked for one embedding at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from sam_core.embedding import ImageEmbedding
from sam_core.errors import ImageTooLarge, InvalidInput
from sam_core.generator_options import EverythingOptions

if TYPE_CHECKING:
    import torch

    from sam_core.model.decoder import OnnxDecoder

INPUT_FRAME = 1024
"""The encoder's input side (every SAM variant's `image_encoder.img_size`)."""

MAX_BATCH_LOGIT_BYTES = 4 * 1024**3
"""The default bound on one batch's float32 full-size logits (points_per_batch x 3 x H x W x 4; the setting
`everything_max_batch_bytes`): the generator's default 64 points fit a 2250x1500 image (2.6 GB); more is a 413
asking for a smaller batch."""


def crop_boxes(original_size: tuple[int, int], options: EverythingOptions) -> list[tuple[int, int, int, int]]:
    """The generator's crops (x0, y0, x1, y1) in the order it visits them; the first is the whole image."""
    from segment_anything.utils.amg import generate_crop_boxes

    boxes, _ = generate_crop_boxes(original_size, options.crop_n_layers, options.crop_overlap_ratio)
    return [(int(x0), int(y0), int(x1), int(y1)) for x0, y0, x1, y1 in boxes]


def total_points(original_size: tuple[int, int], options: EverythingOptions) -> int:
    """How many point prompts a run decodes (its progress counts up to this)."""
    from segment_anything.utils.amg import generate_crop_boxes

    _, layers = generate_crop_boxes(original_size, options.crop_n_layers, options.crop_overlap_ratio)
    per_layer = [options.points_per_side_at(layer) ** 2 for layer in range(options.crop_n_layers + 1)]
    return sum(per_layer[layer] for layer in layers)


def points_to_decode(options: EverythingOptions) -> int:
    """The point prompts a run decodes, known before the image: layer n has 4^n crops of points_per_side_at(n)^2
    points each (`generate_crop_boxes` splits layer n into 2^n x 2^n crops, whatever the image's size)."""
    return sum(4**layer * options.points_per_side_at(layer) ** 2 for layer in range(options.crop_n_layers + 1))


def check_work(options: EverythingOptions, max_points: int) -> None:
    """Refuse, before anything is embedded, a run of more than `max_points` decodes (points x crop layers)."""
    points = points_to_decode(options)
    if points > max_points:
        raise InvalidInput(
            f"points_per_side {options.points_per_side} over crop_n_layers {options.crop_n_layers} is {points} "
            f"decodes (at most {max_points}, everything_max_points): use fewer points or crop layers",
            field="points_per_side",
        )


def check_grid(options: EverythingOptions) -> None:
    """Refuse a crop layer left without points (before anything is embedded)."""
    if options.deepest_points_per_side() < 1:
        raise InvalidInput(options.no_points_reason(), field="crop_n_points_downscale_factor")


def check_options(
    original_size: tuple[int, int], options: EverythingOptions, *, max_batch_bytes: int = MAX_BATCH_LOGIT_BYTES
) -> None:
    """Refuse settings the generator cannot run on this image: a crop layer with no points left, or a batch
    whose full-size logits would be over `max_batch_bytes`."""
    check_grid(options)
    height, width = original_size
    batch_bytes = options.points_per_batch * 3 * height * width * 4
    if batch_bytes > max_batch_bytes:
        most = max(1, max_batch_bytes // (3 * height * width * 4))
        raise ImageTooLarge(
            f"{options.points_per_batch} points of 3 masks at {width}x{height} are {batch_bytes} bytes of logits "
            f"(at most {max_batch_bytes}): use points_per_batch <= {most}",
            field="points_per_batch",
        )


class GenerationCancelled(Exception):
    """Raised inside the generator when its caller has given up (the client went away)."""


class PointPredictor:
    """What `SamAutomaticMaskGenerator` asks of `SamPredictor`, answered from embeddings and the ONNX decoder.

    `set_image` takes the next crop's embedding (the generator visits the crops in `crop_boxes` order);
    `predict_torch` decodes each point of a batch, after checking `cancelled`, and reports the points done.
    """

    def __init__(
        self,
        decoder: OnnxDecoder,
        embeddings: Sequence[ImageEmbedding],
        *,
        cancelled: threading.Event,
        progress: Callable[[int], None],
    ) -> None:
        import torch
        from segment_anything.utils.transforms import ResizeLongestSide

        self.decoder = decoder
        self._crops: Iterator[ImageEmbedding] = iter(embeddings)
        self.embedding: ImageEmbedding | None = None
        self.cancelled = cancelled
        self.progress = progress
        self.transform = ResizeLongestSide(INPUT_FRAME)
        self.device = torch.device("cpu")
        # Sam.mask_threshold: logits above it are in the mask.
        self.model = SimpleNamespace(mask_threshold=0.0)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        embedding = next(self._crops)
        assert image.shape[:2] == embedding.original_size, "crop embeddings come in the generator's crop order"
        self.embedding = embedding

    def reset_image(self) -> None:
        self.embedding = None

    def predict_torch(
        self,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, None]:
        import torch

        assert self.embedding is not None, "set_image comes first"
        assert boxes is None, "the generator sends no boxes"
        assert mask_input is None, "the generator sends no mask inputs"
        assert multimask_output, "the generator asks for three masks"
        assert return_logits, "the generator thresholds the logits itself"
        assert bool((point_labels == 1).all()), "the generator sends one foreground click per prompt"
        if self.cancelled.is_set():
            raise GenerationCancelled
        points = point_coords[:, 0].numpy()
        height, width = self.embedding.original_size
        logits = np.empty((len(points), 3, height, width), dtype=np.float32)
        scores = np.empty((len(points), 3), dtype=np.float32)
        for index, point in enumerate(points):
            logits[index], scores[index] = self.decoder.decode_click(self.embedding, point)
        self.progress(len(points))
        return torch.from_numpy(logits), torch.from_numpy(scores), None


def generate_everything(
    decoder: OnnxDecoder,
    embeddings: Sequence[ImageEmbedding],
    options: EverythingOptions,
    *,
    cancelled: threading.Event | None = None,
    progress: Callable[[int], None] = lambda points: None,
    max_batch_bytes: int = MAX_BATCH_LOGIT_BYTES,
) -> list[dict[str, Any]]:
    """`SamAutomaticMaskGenerator(...).generate(image)`'s records, `segmentation` as uncompressed RLE
    (`{"size": [h, w], "counts": [...]}`), decoded from `embeddings`: one per crop of
    `crop_boxes(original_size, options)`, the whole image first.

    CPU bound (a worker thread); raises GenerationCancelled between batches once `cancelled` is set.
    """
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    original_size = embeddings[0].original_size
    check_options(original_size, options, max_batch_bytes=max_batch_bytes)
    assert len(embeddings) == len(crop_boxes(original_size, options)), "one embedding per crop"
    # The generator builds a SamPredictor from its model, reading only the input frame's side; the predictor
    # is then replaced, so no torch network is needed here.
    frame = SimpleNamespace(image_encoder=SimpleNamespace(img_size=INPUT_FRAME), mask_threshold=0.0)
    generator = SamAutomaticMaskGenerator(frame, output_mode="uncompressed_rle", **options.as_kwargs())
    generator.predictor = PointPredictor(
        decoder, embeddings, cancelled=cancelled or threading.Event(), progress=progress
    )
    # The generator crops the image only to hand the crop to set_image, which needs its size alone: a
    # zero-stride view of the image's shape costs no memory.
    shape = (*original_size, 3)
    placeholder = np.lib.stride_tricks.as_strided(np.zeros(3, dtype=np.uint8), shape=shape, strides=(0, 0, 1))
    with torch.inference_mode():
        records: list[dict[str, Any]] = generator.generate(placeholder)
    return records
