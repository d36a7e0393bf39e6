"""The decoder's ONNX files: SAM's prompt encoder + mask decoder exported (single- and multi-mask graphs),
optionally quantized, and cached by model identity so that replicas of the same model share one export.

Two kinds of each: the low-res graphs the server decodes with (scores and 256x256 logits only: the masks to
return are upscaled outside ONNX, `sam_core.model.decoder.upscale_logits`, so a multimask graph no longer
upscales a fourth mask that is thrown away), and the full graphs with SAM's upscaling inside. `GET
/sam/decoder.onnx` serves either (`low_res=true`: the server's own, which the labelling page decodes with)."""

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


def decoder_filename(identity: ModelIdentity, *, multimask: bool, quantized: bool, low_res: bool = False) -> str:
    """File name of an exported decoder: model id, variant, precision and opset."""
    variant = ("multi" if multimask else "single") + ("-lowres" if low_res else "")
    precision = "int8" if quantized else "fp32"
    return f"decoder-{identity.model_id}-{variant}-{precision}-op{ONNX_OPSET}-v{EXPORT_VERSION}.onnx"


DECODER_VARIANTS = ((False, True), (True, True), (False, False), (True, False))
"""(multimask, low_res) of every file a model's decoders need: the low-res graphs they run, the full ones served."""


def _low_res_module(sam: Sam, *, multimask: bool) -> torch.nn.Module:
    """SamOnnxModel without its mask postprocessing: (scores, low-res logits) from the prompt encoder and mask
    decoder, as `SamPredictor.predict_torch` has them before `postprocess_masks` (no `orig_im_size` input)."""
    from segment_anything.utils.onnx import SamOnnxModel

    class LowResSamOnnxModel(SamOnnxModel):
        def forward(
            self,
            image_embeddings: torch.Tensor,
            point_coords: torch.Tensor,
            point_labels: torch.Tensor,
            mask_input: torch.Tensor,
            has_mask_input: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            masks, scores = self.model.mask_decoder.predict_masks(
                image_embeddings=image_embeddings,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=self._embed_points(point_coords, point_labels),
                dense_prompt_embeddings=self._embed_masks(mask_input, has_mask_input),
            )
            if self.return_single_mask:
                masks, scores = self.select_masks(masks, scores, point_coords.shape[1])
            return scores, masks

    module: torch.nn.Module = LowResSamOnnxModel(sam.cpu().eval(), return_single_mask=not multimask)
    return module


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


def export_decoder(sam: Sam, path: Path, *, multimask: bool, low_res: bool = False, prompt_batch: bool = False) -> Path:
    """Export SAM's prompt encoder + mask decoder (+ upscaling unless `low_res`) to ONNX at `path` (atomically).

    The TorchScript exporter is used (`dynamo=False`): torch's dynamo exporter fails on SamOnnxModel's
    data-dependent post-processing. The number of prompt rows is a dynamic axis; with `prompt_batch` (low-res
    graphs only) so is the number of prompts, one image's embedding for all (SAM's mask decoder repeats it per
    prompt): `point_coords` (B, N, 2), `point_labels` (B, N), `mask_input` (B, 1, 256, 256). No file the service
    serves or runs is exported so (on the CPU a batch is no faster per prompt: `bench/report.py --only batch`).
    """
    import torch

    onnx_model = _low_res_module(sam, multimask=multimask) if low_res else _onnx_module(sam, multimask=multimask)
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
    outputs = ["masks", "iou_predictions", "low_res_masks"]
    dynamic_axes: dict[str, dict[int, str]] = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    if low_res:
        del dummy_inputs["orig_im_size"]
        outputs = ["iou_predictions", "low_res_masks"]
    if prompt_batch:
        if not low_res:
            raise ValueError("a batch of prompts is exported for low-res graphs only")
        for name in ("point_coords", "point_labels", "mask_input"):
            dummy_inputs[name] = torch.cat([dummy_inputs[name]] * 2)
        dynamic_axes = {
            "point_coords": {0: "prompts", 1: "num_points"},
            "point_labels": {0: "prompts", 1: "num_points"},
            "mask_input": {0: "prompts"},
            "iou_predictions": {0: "prompts"},
            "low_res_masks": {0: "prompts"},
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
            output_names=outputs,
            dynamic_axes=dynamic_axes,
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
    sam: Sam | None,
    identity: ModelIdentity,
    cache_dir: Path,
    *,
    multimask: bool,
    quantized: bool,
    low_res: bool = False,
) -> Path:
    """The exported decoder for this model and variant, exporting it (and quantising) on first use.

    `sam` may be None when the file is known to exist already (a replica that never loads torch weights).
    """
    path = cache_dir / decoder_filename(identity, multimask=multimask, quantized=quantized, low_res=low_res)
    if path.exists():
        return path
    if sam is None:
        raise ConfigurationError(f"no exported decoder at {path} and no model to export it from")
    if quantized:
        fp32 = ensure_decoder_file(sam, identity, cache_dir, multimask=multimask, quantized=False, low_res=low_res)
        log.info("quantising decoder %s", path.name)
        return quantize_decoder(fp32, path)
    log.info("exporting decoder %s", path.name)
    return export_decoder(sam, path, multimask=multimask, low_res=low_res)


def ensure_decoder_files(
    sam: Sam | None, identity: ModelIdentity, cache_dir: Path, *, quantized: bool
) -> dict[tuple[bool, bool], Path]:
    """Every file of `DECODER_VARIANTS`, by (multimask, low_res), exported on first use."""
    return {
        (multimask, low_res): ensure_decoder_file(
            sam, identity, cache_dir, multimask=multimask, quantized=quantized, low_res=low_res
        )
        for multimask, low_res in DECODER_VARIANTS
    }


def decoder_files_exist(identity: ModelIdentity, cache_dir: Path, *, quantized: bool) -> bool:
    """Whether every decoder file of this model is exported already (no torch weights needed to open them)."""
    return all(
        (cache_dir / decoder_filename(identity, multimask=m, quantized=quantized, low_res=low)).exists()
        for m, low in DECODER_VARIANTS
    )
