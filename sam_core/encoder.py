"""The image encoder: SamPredictor's preprocessing and a batched embed, numpy in and numpy out.

The encoder is ~90 % of SAM's compute and runs once per image; batching several images into one forward pass
is what keeps a GPU busy. Images of any size are resized to a longest side of 1024 before they reach the
network, so memory per image is bounded whatever the client sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from sam_core.embedding import ImageEmbedding
from sam_core.errors import ConfigurationError, InvalidInput

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

_AUTOCAST_DTYPES = ("float32", "float16", "bfloat16")


class ImageEncoder:
    """Embeds RGB images with a SAM image encoder, several at a time.

    Args:
        sam: a SAM network (its image encoder and normalisation are used).
        device: where to run; the network is moved there.
        dtype: "float32" (exact), or "float16"/"bfloat16" autocast (reduced precision, for GPUs);
            embeddings are returned as float32 either way.
        max_batch_size: the most images per forward pass; longer lists are embedded in chunks.
    """

    def __init__(
        self,
        sam: Sam,
        *,
        device: torch.device | str = "cpu",
        dtype: str = "float32",
        max_batch_size: int = 8,
    ) -> None:
        import torch
        from segment_anything.utils.transforms import ResizeLongestSide

        if dtype not in _AUTOCAST_DTYPES:
            raise ConfigurationError(f"encoder dtype must be one of {_AUTOCAST_DTYPES}, got {dtype!r}")
        if max_batch_size < 1:
            raise ConfigurationError("max_batch_size must be >= 1", field="max_batch_size")
        self.device = torch.device(device)
        self.sam = sam.to(self.device).eval()
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.img_size: int = sam.image_encoder.img_size
        self.transform = ResizeLongestSide(self.img_size)

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Resize, normalise and pad one image exactly as `SamPredictor.set_image` does.

        Args:
            image: (H, W, 3) uint8 RGB array in original pixels.

        Returns:
            (tensor of shape (1, 3, 1024, 1024) on the device, original_size (H, W), input_size (h, w) of the
            resized image before padding).
        """
        import torch

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InvalidInput(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}", field="image")
        original_size = (int(image.shape[0]), int(image.shape[1]))
        resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None, :, :, :]
        input_size = (int(tensor.shape[-2]), int(tensor.shape[-1]))
        return self.sam.preprocess(tensor), original_size, input_size

    def embed_batch(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """Embed N images; returns N embeddings in the same order.

        Args:
            images: (H, W, 3) uint8 RGB arrays; sizes may differ (each is padded to 1024x1024).
        """
        results: list[ImageEmbedding] = []
        for start in range(0, len(images), self.max_batch_size):
            results.extend(self._embed_chunk(images[start : start + self.max_batch_size]))
        return results

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """Embed one image (a batch of one)."""
        return self.embed_batch([image])[0]

    def _embed_chunk(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        import torch

        prepared = [self.preprocess(image) for image in images]
        batch = torch.cat([tensor for tensor, _, _ in prepared], dim=0)
        with torch.inference_mode(), self._autocast():
            features = self.sam.image_encoder(batch)
        features_np = features.float().cpu().numpy()
        return [
            ImageEmbedding(
                embedding=np.ascontiguousarray(features_np[i : i + 1]),
                original_size=original_size,
                input_size=input_size,
            )
            for i, (_, original_size, input_size) in enumerate(prepared)
        ]

    def _autocast(self) -> torch.autocast:
        import torch

        enabled = self.dtype != "float32"
        target = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.dtype, torch.float32)
        return torch.autocast(device_type=self.device.type, dtype=target, enabled=enabled)
