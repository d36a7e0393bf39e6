"""The mask decoder: SAM's prompt encoder + mask decoder run with ONNX Runtime (exported by `decoder_export`).

Exported files are cached by model identity, so replicas of the same model share one export. Two variants:
the single-mask model (SAM's demo behaviour: with one click or a box alone, the best of the three ambiguity-
aware masks; with more prompt rows, the single-output token) and the multi-mask model (three masks with their
predicted IoU, as `SamPredictor.predict(multimask_output=True)`). The graphs run are the low-res ones: only the
masks returned are upscaled, here (`upscale_logits`). Clients download either kind: the low-res graph answers a
click as the service does when its logits are upscaled as `upscale_logits` does (the labelling page); the full
graph (SAM's upscaling inside ONNX) differs from it in a handful of pixels of millions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sam_core.embedding import ImageEmbedding
from sam_core.errors import ConfigurationError, InvalidInput
from sam_core.frames import EMBEDDING_SHAPE, INPUT_SIZE, MASK_INPUT_SHAPE, preprocess_shape
from sam_core.model.decoder_export import ensure_decoder_files
from sam_core.model.prompts import Prompt, onnx_prompt_inputs

if TYPE_CHECKING:
    import onnxruntime
    from segment_anything.modeling import Sam

    from sam_core.model.build import ModelIdentity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecoderOutput:
    """What one prompt gives back.

    Attributes:
        mask_logits: (M, H, W) float32 logits in original-image pixels; a pixel is in the mask when > 0.
        iou_scores: (M,) float32 predicted IoU of each mask.
        low_res_logits: (M, 256, 256) float32 logits in the low-res frame (feed back as mask_input).
    """

    mask_logits: np.ndarray
    iou_scores: np.ndarray
    low_res_logits: np.ndarray

    @property
    def masks(self) -> np.ndarray:
        """(M, H, W) bool masks in original-image pixels."""
        return self.mask_logits > 0.0


@dataclass(frozen=True)
class DecoderGraph:
    """An exported decoder file as a client downloads it (to decode clicks itself, e.g. onnxruntime-web).

    Attributes:
        data: the .onnx file's bytes.
        sha256: their hex sha256 (the HTTP ETag).
        filename: the file's name in the cache dir (model id, variant, precision, opset).
        model_id: the model whose embeddings it decodes (`ModelIdentity.model_id`).
        checkpoint_sha256: that model's checkpoint hash.
    """

    data: bytes
    sha256: str
    filename: str
    model_id: str
    checkpoint_sha256: str


def make_session(
    path: Path, *, threads: int = 0, providers: tuple[str, ...] = ("CPUExecutionProvider",), spinning: bool = True
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session for a decoder file; `threads` = intra-op threads (0: ONNX Runtime decides).

    `spinning`: idle intra-op threads busy-wait for the next parallel section (ONNX Runtime's default, the
    fastest call on an idle machine); off, they sleep and leave the cores to the processes beside them.
    """
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    chosen = [p for p in providers if p in available]
    if not chosen:
        raise ConfigurationError(
            f"none of the decoder providers {providers} is available (have {sorted(available)})",
            field="decoder_providers",
        )
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    # One request runs at a time per session call; inter-op parallelism only adds thread contention.
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=chosen)


def upscale_logits(low_res: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """(M, 256, 256) low-res logits to (M, H, W) logits in original-image pixels, as `Sam.postprocess_masks` does:
    bilinear to the padded 1024 frame, the padding cropped, bilinear to the original size (OpenCV's INTER_LINEAR
    is torch's bilinear without corner alignment; a handful of pixels of millions differ in sign, tested)."""
    import cv2

    height, width = original_size
    input_h, input_w = preprocess_shape(original_size)
    out = np.empty((low_res.shape[0], height, width), dtype=np.float32)
    for index, logits in enumerate(low_res):
        padded = cv2.resize(
            np.asarray(logits, dtype=np.float32), (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR
        )
        cv2.resize(padded[:input_h, :input_w], (width, height), dst=out[index], interpolation=cv2.INTER_LINEAR)
    return out


class OnnxDecoder:
    """Runs prompts against cached embeddings with the exported single- and multi-mask decoders."""

    def __init__(
        self,
        files: dict[tuple[bool, bool], Path],
        *,
        threads: int = 0,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        spinning: bool = True,
    ) -> None:
        """`files`: the exported graphs by (multimask, low_res) (`decoder_export.ensure_decoder_files`)."""
        self.single = make_session(files[False, True], threads=threads, providers=providers, spinning=spinning)
        self.multi = make_session(files[True, True], threads=threads, providers=providers, spinning=spinning)
        self.paths = dict(files)
        """Every exported file, by (multimask, low_res): the low-res graphs run here, and each is a file clients
        may download (`GET /sam/decoder.onnx`)."""

    @classmethod
    def for_model(
        cls,
        sam: Sam | None,
        identity: ModelIdentity,
        cache_dir: Path,
        *,
        quantized: bool = False,
        threads: int = 0,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        spinning: bool = True,
    ) -> OnnxDecoder:
        """Export (or find) both decoder variants for this model and open them."""
        files = ensure_decoder_files(sam, identity, cache_dir, quantized=quantized)
        return cls(files, threads=threads, providers=providers, spinning=spinning)

    def decode(
        self,
        embedding: ImageEmbedding,
        prompt: Prompt,
        *,
        mask_input: np.ndarray | None = None,
        multimask: bool = False,
    ) -> DecoderOutput:
        """Masks for one prompt on one image.

        Args:
            embedding: the image's embedding and sizes.
            prompt: points/box in original-image pixels (see sam_core.model.prompts.build_prompt).
            mask_input: (1, 1, 256, 256) logits in the low-res frame from a previous prediction, or None.
            multimask: three masks (SamPredictor's multimask output) instead of one.

        Returns:
            DecoderOutput with M = 1 or 3 masks.
        """
        if embedding.embedding.shape != EMBEDDING_SHAPE:
            raise InvalidInput(f"embedding must have shape {EMBEDDING_SHAPE}", field="embeddings")
        point_coords, point_labels = onnx_prompt_inputs(prompt, embedding.original_size)
        if mask_input is None:
            mask = np.zeros(MASK_INPUT_SHAPE, dtype=np.float32)
            has_mask = np.zeros(1, dtype=np.float32)
        else:
            if mask_input.shape != MASK_INPUT_SHAPE:
                raise InvalidInput(f"must have shape {MASK_INPUT_SHAPE}, got {mask_input.shape}", field="mask_input")
            mask = np.ascontiguousarray(mask_input, dtype=np.float32)
            has_mask = np.ones(1, dtype=np.float32)
        masks, iou, low_res = self._run(embedding, point_coords, point_labels, mask, has_mask, multimask=multimask)
        return DecoderOutput(mask_logits=masks[0], iou_scores=iou[0], low_res_logits=low_res[0])

    def decode_click(self, embedding: ImageEmbedding, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The three masks' logits (3, H, W) and predicted IoU (3,) for one foreground click given in the 1024
        input frame, as `SamPredictor.predict_torch` answers it (what the automatic mask generator asks)."""
        coords = np.concatenate([np.asarray(point, dtype=np.float32).reshape(1, 2), np.zeros((1, 2), np.float32)])
        labels = np.array([[1.0, -1.0]], dtype=np.float32)
        no_mask, no_flag = np.zeros(MASK_INPUT_SHAPE, dtype=np.float32), np.zeros(1, dtype=np.float32)
        masks, iou, _ = self._run(embedding, coords[None], labels, no_mask, no_flag, multimask=True)
        return masks[0], iou[0]

    def _run(
        self,
        embedding: ImageEmbedding,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask: np.ndarray,
        has_mask: np.ndarray,
        *,
        multimask: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        session = self.multi if multimask else self.single
        iou, low_res = session.run(
            None,
            {
                "image_embeddings": np.ascontiguousarray(embedding.embedding, dtype=np.float32),
                "point_coords": point_coords,
                "point_labels": point_labels,
                "mask_input": mask,
                "has_mask_input": has_mask,
            },
        )
        if multimask:
            # The multi-mask graph returns all four mask tokens; token 0 is the single-output one, and
            # SamPredictor's multimask output (what clients expect) is tokens 1-3.
            iou, low_res = iou[:, 1:], low_res[:, 1:]
        masks = upscale_logits(low_res[0], embedding.original_size)[None]
        return masks, iou, low_res
