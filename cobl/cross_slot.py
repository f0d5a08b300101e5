"""Attention across the slots of one scene, inserted after every self-attention of the shared UNet.

The UNet runs the S slots of a scene as S batch elements, so on its own no slot sees another. Each
``BasicTransformerBlock.attn1`` is wrapped by ``SelfAttentionWithCrossSlot``: it calls the original
self-attention and adds a zero-initialised residual that attends across slots, so at initialisation the
wrapped UNet computes exactly what the base UNet computes. Learned slot-position embeddings are added to the
cross-slot module's input so slots are ordered (slot 0 frontmost, slot S-1 the background).

Two token layouts, chosen per block by the number of tokens N of one slot:
  * full: ``[B*S, N, C] -> [B, S*N, C]``, every token attends to every token of every slot (low resolutions);
  * per-pixel: ``[B*S, N, C] -> [B*N, S, C]``, each pixel attends across the slots at that pixel (cheap).
"""

from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from torch import nn


class CrossSlotAttention(nn.Module):
    """Zero-initialised residual attention over the slot axis (see module docstring)."""

    def __init__(self, dim: int, num_slots: int, head_dim: int = 64, full_attention_max_tokens: int = 1024):
        super().__init__()
        self.num_slots = num_slots
        self.full_attention_max_tokens = full_attention_max_tokens
        heads = max(1, dim // head_dim)
        self.norm = nn.LayerNorm(dim)
        self.slot_embedding = nn.Parameter(torch.randn(num_slots, dim) * 0.02)
        self.attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, out_bias=True)
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        bs, n, c = hidden_states.shape
        s = self.num_slots
        if bs % s:
            raise ValueError(f"cross-slot attention: batch {bs} is not a multiple of {s} slots")
        b = bs // s
        x = self.norm(hidden_states).view(b, s, n, c) + self.slot_embedding.to(hidden_states.dtype)[:, None]
        if n <= self.full_attention_max_tokens:
            out = self.attn(x.reshape(b, s * n, c)).view(b, s, n, c)
        else:
            x = x.permute(0, 2, 1, 3).reshape(b * n, s, c)
            out = self.attn(x).view(b, n, s, c).permute(0, 2, 1, 3)
        return out.reshape(bs, n, c)


class SelfAttentionWithCrossSlot(nn.Module):
    """Drop-in replacement of ``BasicTransformerBlock.attn1``: original self-attention + cross-slot residual.

    The cross-slot module sees the block's post-self-attention features (its input plus the attention output),
    the same place the paper puts its slot attention.
    """

    def __init__(self, attn: nn.Module, cross_slot: CrossSlotAttention):
        super().__init__()
        self.attn = attn
        self.cross_slot = cross_slot

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.attn(hidden_states, *args, **kwargs)
        return out + self.cross_slot(hidden_states + out)


def insert_cross_slot_attention(
    unet: nn.Module, num_slots: int, head_dim: int, full_attention_max_tokens: int
) -> list[CrossSlotAttention]:
    """Wrap every transformer block's ``attn1`` in ``unet`` in place; returns the new modules."""
    added = []
    for block in [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]:
        if isinstance(block.attn1, SelfAttentionWithCrossSlot):
            continue
        dim = block.attn1.query_dim
        cross = CrossSlotAttention(dim, num_slots, head_dim, full_attention_max_tokens)
        block.attn1 = SelfAttentionWithCrossSlot(block.attn1, cross)
        added.append(cross)
    return added
