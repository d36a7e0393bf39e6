"""The decoder's ONNX files: SAM's prompt encoder + mask decoder exported (single- and multi-mask graphs),
optionally quantized, and cached by model identity so that replicas of the same model share one export."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sam_core.errors import ConfigurationError

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

    from sam_core.model.build import ModelIdentity

log = logging.getLogger(__name__)

ONNX_OPSET = 17
EXPORT_VERSION = 2
"""Bumped when the exported graph changes, so stale cached files are not reused."""

ONNX_OPSET = 17
EXPORT_VERSION = 2
"""Bumped when the exported graph changes, so stale cached files are not reused."""


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
