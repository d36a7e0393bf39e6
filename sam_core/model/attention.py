"""The image encoder's speed options: fused attention (SDPA with SAM's relative-position bias as its mask),
channels-last convolutions and `torch.compile`, applied to a copy of the module tree that shares the weights.
"""

from __future__ import annotations

import copy
import itertools
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling.image_encoder import Attention


def fast_image_encoder(
    encoder: torch.nn.Module, *, fused_attention: bool, channels_last: bool, compile: bool
) -> torch.nn.Module:
    """`encoder` itself when no option is on; else a copy of its module tree with the options applied.

    The copy shares every parameter tensor with `encoder` (no second set of weights), so the caller's model,
    which a SamPredictor or another ImageEncoder may also use, keeps its exact fp32 forward.
    """
    import torch

    if not (fused_attention or channels_last or compile):
        return encoder
    shared = {id(tensor): tensor for tensor in itertools.chain(encoder.parameters(), encoder.buffers())}
    fast = copy.deepcopy(encoder, memo=shared)
    if fused_attention:
        from segment_anything.modeling.image_encoder import Attention

        for module in fast.modules():
            if isinstance(module, Attention):
                # Bound to this instance only: segment_anything's Attention class is left alone.
                module.forward = types.MethodType(_sdpa_attention_forward, module)
    if channels_last:
        for module in fast.modules():
            if isinstance(module, torch.nn.Conv2d):
                # A new Parameter on the copy; `.to(memory_format=...)` would re-layout the shared tensor too.
                weight = module.weight.detach().contiguous(memory_format=torch.channels_last)
                module.weight = torch.nn.Parameter(weight, requires_grad=False)
    if compile:
        compiled: torch.nn.Module = torch.compile(fast)  # type: ignore[assignment]
        return compiled
    return fast


def _sdpa_attention_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """`segment_anything`'s `Attention.forward` through `scaled_dot_product_attention`.

    Args:
        x: (B, H, W, C) tokens; B counts windows for windowed blocks, H = W = 14 (vit_*) there, and the
            64x64 token grid of the 1024 input frame for global blocks.

    Returns:
        (B, H, W, C), equal to the original forward up to fp32 rounding.
    """
    from torch.nn.functional import scaled_dot_product_attention

    batch, height, width, _ = x.shape
    qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.unbind(0)  # each (B, heads, H*W, head_dim)
    bias = _decomposed_rel_pos_bias(self, query, height, width) if self.use_rel_pos else None
    out = scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=self.scale)
    out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    result: torch.Tensor = self.proj(out)
    return result


def _decomposed_rel_pos_bias(attention: Attention, query: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """SAM's decomposed relative-position term as an additive attention mask.

    The original adds `rel_h[q, k_row] + rel_w[q, k_col]` to the (query, key) logits; here the same sum is
    built as a (B, heads, H*W, H*W) float mask for `scaled_dot_product_attention` (in the query's dtype,
    which is what SDPA accepts under autocast).
    """
    import torch
    from segment_anything.modeling.image_encoder import get_rel_pos

    rows = get_rel_pos(height, height, attention.rel_pos_h)  # (query row, key row, head_dim)
    cols = get_rel_pos(width, width, attention.rel_pos_w)  # (query col, key col, head_dim)
    batch, heads, tokens, head_dim = query.shape
    grid = query.reshape(batch, heads, height, width, head_dim)
    rel_rows = torch.einsum("bnhwc,hkc->bnhwk", grid, rows)  # (B, heads, H, W, key row)
    rel_cols = torch.einsum("bnhwc,wkc->bnhwk", grid, cols)  # (B, heads, H, W, key col)
    bias = rel_rows[..., :, None] + rel_cols[..., None, :]  # (B, heads, H, W, key row, key col)
    return bias.reshape(batch, heads, tokens, tokens).to(query.dtype)
