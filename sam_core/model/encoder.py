"""The image encoder: SamPredictor's preprocessing and a batched embed, numpy in and numpy out.

The encoder is ~90 % of SAM's compute and runs once per image; batching several images into one forward pass
is what keeps a GPU busy. Images of any size are resized to a longest side of 1024 before they reach the
network, so memory per image is bounded whatever the client sends.

Speed options (off in this class by default, which is then the exact segment_anything forward; the service's
settings turn fused attention and channels-last on) are applied to a copy of the image encoder's module tree
that shares its weights, so the caller's model is never changed: fused attention
(`scaled_dot_product_attention` with SAM's relative-position bias as its mask), channels-last convolutions,
and `torch.compile`. bench/bench_encoder.py measures each against fp32 for speed and fidelity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from sam_core.embedding import EncoderInput, ImageEmbedding
from sam_core.errors import ConfigurationError, InvalidInput
from sam_core.model.attention import fast_image_encoder

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

_AUTOCAST_DTYPES = ("float32", "float16", "bfloat16")

DEFAULT_MAX_BATCH_SIZE = 4
"""Most images in one forward pass unless configured (the encoder deployment's `user_config` changes it at
run time): enough to fill a GPU with ViT-H's 1024x1024 inputs without making one image wait for many."""


class ImageEncoder:
    """Embeds RGB images with a SAM image encoder, several at a time.

    Args:
        sam: a SAM network (its image encoder and normalisation are used).
        device: where to run; the network is moved there.
        dtype: "float32" (exact), or "float16"/"bfloat16" autocast (reduced precision, for GPUs);
            embeddings are returned as float32 either way.
        max_batch_size: the most images per forward pass; longer lists are embedded in chunks.
        fused_attention: run the ViT blocks' attention through `scaled_dot_product_attention`, with the
            decomposed relative-position bias as a float mask: the same math (fp32 rounding differences only)
            in a fused kernel. The (B, heads, N, N) bias is still built, but the logits and softmax copies
            are not (vit_b, 2 images, fp32: peak memory 5.1 -> 3.5 GB).
        channels_last: convolutions (patch embedding, neck) and the input batch in channels-last layout. The
            patch embedding's output then permutes to a contiguous (B, H, W, C) token grid; in the standard
            layout it is a strided view that `x + pos_embed` and every residual add carry through all blocks.
        compile: `torch.compile` the image encoder; compiled lazily on the first embed of each batch
            size (slow, and needs a C++ compiler on the CPU), faster afterwards where inductor helps.
    """

    def __init__(
        self,
        sam: Sam,
        *,
        device: torch.device | str = "cpu",
        dtype: str = "float32",
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        fused_attention: bool = False,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        import torch
        from segment_anything.utils.transforms import ResizeLongestSide

        if dtype not in _AUTOCAST_DTYPES:
            raise ConfigurationError(f"encoder dtype must be one of {_AUTOCAST_DTYPES}, got {dtype!r}")
        if max_batch_size < 1:
            raise ConfigurationError("max_batch_size must be >= 1", field="max_batch_size")
        options = {"fused_attention": fused_attention, "channels_last": channels_last, "compile": compile}
        for name, value in options.items():
            # A YAML or env string such as "false" is truthy: refuse it rather than switch the option on.
            if not isinstance(value, bool):
                raise ConfigurationError(f"must be true or false, got {value!r}", field=name)
        self.device = torch.device(device)
        self.sam = sam.to(self.device).eval()
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.channels_last = channels_last
        self.image_encoder = fast_image_encoder(
            sam.image_encoder, fused_attention=fused_attention, channels_last=channels_last, compile=compile
        )
        self.img_size: int = sam.image_encoder.img_size
        self.transform = ResizeLongestSide(self.img_size)

    def preprocess(self, image: np.ndarray | EncoderInput) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Resize, normalise and pad one image exactly as `SamPredictor.set_image` does.

        Args:
            image: (H, W, 3) uint8 RGB array in original pixels, or an `EncoderInput` already resized to the
                1024 input frame (by the same resize) where it was decoded.

        Returns:
            (tensor of shape (1, 3, 1024, 1024) on the device, original_size (H, W), input_size (h, w) of the
            resized image before padding).
        """
        import torch

        pixels = image.pixels if isinstance(image, EncoderInput) else image
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise InvalidInput(
                f"expected an (H, W, 3) uint8 RGB image, got {pixels.shape} {pixels.dtype}", field="image"
            )
        if isinstance(image, EncoderInput):
            original_size = image.original_size
            # Arrays that came through Ray's object store are read-only views; torch wants its own memory.
            resized = image.pixels if image.pixels.flags.writeable else image.pixels.copy()
            expected = self.transform.get_preprocess_shape(*original_size, self.img_size)
            assert resized.shape[:2] == expected, f"input-frame pixels {resized.shape[:2]}, expected {expected}"
        else:
            original_size = (int(image.shape[0]), int(image.shape[1]))
            resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None, :, :, :]
        input_size = (int(tensor.shape[-2]), int(tensor.shape[-1]))
        return self.sam.preprocess(tensor), original_size, input_size

    def embed_batch(self, images: Sequence[np.ndarray | EncoderInput]) -> list[ImageEmbedding]:
        """Embed N images; returns N embeddings in the same order.

        Args:
            images: (H, W, 3) uint8 RGB arrays, or `EncoderInput`s; sizes may differ (each is padded to 1024x1024).
        """
        results: list[ImageEmbedding] = []
        for start in range(0, len(images), self.max_batch_size):
            results.extend(self._embed_chunk(images[start : start + self.max_batch_size]))
        return results

    def embed(self, image: np.ndarray | EncoderInput) -> ImageEmbedding:
        """Embed one image (a batch of one)."""
        return self.embed_batch([image])[0]

    def _embed_chunk(self, images: Sequence[np.ndarray | EncoderInput]) -> list[ImageEmbedding]:
        import torch

        prepared = [self.preprocess(image) for image in images]
        batch = torch.cat([tensor for tensor, _, _ in prepared], dim=0)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            features = self.image_encoder(batch)
        features_np = features.float().cpu().numpy()
        return [
            ImageEmbedding(
                embedding=np.ascontiguousarray(features_np[i : i + 1]),
                original_size=original_size,
                input_size=input_size,
                content_id=image.content_id if isinstance(image, EncoderInput) else "",
            )
            for i, ((_, original_size, input_size), image) in enumerate(zip(prepared, images, strict=True))
        ]

    def _autocast(self) -> torch.autocast:
        import torch

        enabled = self.dtype != "float32"
        target = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.dtype, torch.float32)
        return torch.autocast(device_type=self.device.type, dtype=target, enabled=enabled)
