"""The mask decoder: export SAM's prompt encoder + mask decoder to ONNX and run it with ONNX Runtime.

Exported files are cached by model identity, so replicas of the same model share one export. Two variants:
the single-mask model (SAM's demo behaviour: with one click or a box alone, the best of the three ambiguity-
aware masks; with more prompt rows, the single-output token) and the multi-mask model (three masks with their
predicted IoU, as `SamPredictor.predict(multimask_output=True)`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sam_core.embedding import ImageEmbedding
from sam_core.errors import ConfigurationError, InvalidInput
from sam_core.frames import EMBEDDING_SHAPE, MASK_INPUT_SHAPE
from sam_core.model.prompts import Prompt, onnx_prompt_inputs

if TYPE_CHECKING:
    import onnxruntime
    import torch
    from segment_anything.modeling import Sam

    from sam_core.model.build import ModelIdentity

log = logging.getLogger(__name__)

ONNX_OPSET = 17
EXPORT_VERSION = 2
"""Bumped when the exported graph changes, so stale cached files are not reused."""


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


def decoder_filename(identity: ModelIdentity, *, multimask: bool, quantized: bool) -> str:
    """File name of an exported decoder: model id, variant, precision and opset."""
    variant = "multi" if multimask else "single"
    precision = "int8" if quantized else "fp32"
    return f"decoder-{identity.model_id}-{variant}-{precision}-op{ONNX_OPSET}-v{EXPORT_VERSION}.onnx"


def _onnx_module(sam: Sam, *, multimask: bool) -> torch.nn.Module:
    """segment-anything's SamOnnxModel with a crop that stays dynamic in `orig_im_size` when traced.

    SamOnnxModel crops the upscaled masks with `int(prepadded_size[0])`, which the TorchScript tracer records
    as a constant: the exported graph is then right only for images of the dummy input's size (measured
    here: relative L2 error ~1.0 at other sizes). Cropping with index_select over `arange(size)` keeps the
    size a graph value; the arithmetic is otherwise the same.
    """
    import torch
    from segment_anything.utils.onnx import SamOnnxModel
    from torch.nn import functional

    class DynamicSizeSamOnnxModel(SamOnnxModel):
        def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
            masks = functional.interpolate(
                masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
            )
            prepadded_size = self.resize_longest_image_size(orig_im_size, self.img_size)
            rows = torch.arange(prepadded_size[0], device=masks.device)
            cols = torch.arange(prepadded_size[1], device=masks.device)
            masks = masks.index_select(2, rows).index_select(3, cols)
            orig_im_size = orig_im_size.to(torch.int64)
            # Tensor sizes (not ints) keep the output size a graph input when traced.
            size = (orig_im_size[0], orig_im_size[1])
            return functional.interpolate(masks, size=size, mode="bilinear", align_corners=False)  # type: ignore[arg-type]

    module: torch.nn.Module = DynamicSizeSamOnnxModel(sam.cpu().eval(), return_single_mask=not multimask)
    return module


def export_decoder(sam: Sam, path: Path, *, multimask: bool) -> Path:
    """Export SAM's prompt encoder + mask decoder + upscaling to ONNX at `path` (atomically).

    The TorchScript exporter is used (`dynamo=False`): torch's dynamo exporter fails on SamOnnxModel's
    data-dependent post-processing. The number of prompt rows is a dynamic axis.
    """
    import torch

    onnx_model = _onnx_module(sam, multimask=multimask)
    embed_dim = sam.prompt_encoder.embed_dim
    embed_size = sam.prompt_encoder.image_embedding_size
    low_res_size = [4 * side for side in embed_size]
    generator = torch.Generator().manual_seed(0)
    dummy_inputs = {
        "image_embeddings": torch.randn(1, embed_dim, *embed_size, generator=generator),
        "point_coords": torch.randint(0, 1024, (1, 5, 2), generator=generator).float(),
        "point_labels": torch.randint(0, 4, (1, 5), generator=generator).float(),
        "mask_input": torch.randn(1, 1, *low_res_size, generator=generator),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([1500.0, 2250.0]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.onnx.export(
            onnx_model,
            tuple(dummy_inputs.values()),
            tmp_name,
            export_params=True,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            input_names=list(dummy_inputs),
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            dynamo=False,
        )
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def quantize_decoder(source: Path, destination: Path) -> Path:
    """int8 dynamic quantisation of an exported decoder (weights int8, activations quantised at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, tmp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    os.close(fd)
    try:
        quantize_dynamic(Path(source), Path(tmp_name), weight_type=QuantType.QUInt8)
        os.replace(tmp_name, destination)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return destination


def ensure_decoder_file(
    sam: Sam | None, identity: ModelIdentity, cache_dir: Path, *, multimask: bool, quantized: bool
) -> Path:
    """The exported decoder for this model and variant, exporting it (and quantising) on first use.

    `sam` may be None when the file is known to exist already (a replica that never loads torch weights).
    """
    path = cache_dir / decoder_filename(identity, multimask=multimask, quantized=quantized)
    if path.exists():
        return path
    if sam is None:
        raise ConfigurationError(f"no exported decoder at {path} and no model to export it from")
    if quantized:
        fp32 = ensure_decoder_file(sam, identity, cache_dir, multimask=multimask, quantized=False)
        log.info("quantising decoder %s", path.name)
        return quantize_decoder(fp32, path)
    log.info("exporting decoder %s", path.name)
    return export_decoder(sam, path, multimask=multimask)


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


class OnnxDecoder:
    """Runs prompts against cached embeddings with the exported single- and multi-mask decoders."""

    def __init__(
        self,
        single_mask_path: Path,
        multimask_path: Path,
        *,
        threads: int = 0,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        spinning: bool = True,
    ) -> None:
        self.single = make_session(single_mask_path, threads=threads, providers=providers, spinning=spinning)
        self.multi = make_session(multimask_path, threads=threads, providers=providers, spinning=spinning)
        self.paths = {False: single_mask_path, True: multimask_path}
        """The exported files, by `multimask`."""

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
        single = ensure_decoder_file(sam, identity, cache_dir, multimask=False, quantized=quantized)
        multi = ensure_decoder_file(sam, identity, cache_dir, multimask=True, quantized=quantized)
        return cls(single, multi, threads=threads, providers=providers, spinning=spinning)

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
        masks, iou, low_res = session.run(
            None,
            {
                "image_embeddings": np.ascontiguousarray(embedding.embedding, dtype=np.float32),
                "point_coords": point_coords,
                "point_labels": point_labels,
                "mask_input": mask,
                "has_mask_input": has_mask,
                "orig_im_size": np.array(embedding.original_size, dtype=np.float32),
            },
        )
        if multimask:
            # The multi-mask graph returns all four mask tokens; token 0 is the single-output one, and
            # SamPredictor's multimask output (what clients expect) is tokens 1-3.
            masks, iou, low_res = masks[:, 1:], iou[:, 1:], low_res[:, 1:]
        return masks, iou, low_res
