"""The modules CObL adds between the blocks of the shared, frozen UNet so the slots of a scene see each other.

The UNet runs the S slots of a scene as S batch elements (``[B*S, ...]``), so on its own no slot sees another.
Following the authors' design, three kinds of module are attached (``cobl.network`` attaches them):

  * ``SlotConv`` after every ResBlock: two ``GroupNorm -> SiLU -> Conv3d(kernel (3, 1, 1))`` over the slot
    axis only (each pixel mixes with the same pixel of the neighbouring slots);
  * ``SlotAttention`` after every transformer block: attention across the slots at each spatial position, with
    a sinusoidal encoding of the slot index (slot 0 frontmost, slot S-1 the background), bias-free q/k/v/o;
  * ``Gate``: a learnable scalar ``a`` clamped to [0, 1] and initialised to 1; each module returns
    ``a * x + (1 - a) * h`` (``x`` the frozen block's output, ``h`` the module's), so at initialisation the
    model is exactly the frozen UNet applied to every slot.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn


class Gate(nn.Module):
    """``mix(x, h) = a * x + (1 - a) * h`` with a learnable ``a`` clamped to [0, 1], initialised to 1 (so the
    output is exactly ``x`` at initialisation). ``clamp_()`` projects the stored value back into [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        a = self.value.clamp(0, 1).to(x.dtype)
        return a * x + (1 - a) * h.to(x.dtype)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.value.clamp_(0, 1)


def sinusoidal_encoding(num_positions: int, dim: int) -> torch.Tensor:
    """The transformer's sinusoidal position encoding ``[num_positions, dim]`` (sin on even, cos on odd)."""
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(num_positions, dim)
    out[:, 0::2] = torch.sin(position * freq)
    out[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return out


class SlotConv(nn.Module):
    """Convolution across the slot axis after a ResBlock: ``[B*S, C, h, w] -> [B*S, C, h, w]`` (gated)."""

    def __init__(self, channels: int, num_slots: int, groups: int = 32) -> None:
        super().__init__()
        self.num_slots = num_slots
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=(3, 1, 1), padding=(1, 0, 0))
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=(3, 1, 1), padding=(1, 0, 0))
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs, c, h, w = x.shape
        s = self.num_slots
        if bs % s:
            raise ValueError(f"slot convolution: batch {bs} is not a multiple of {s} slots")
        y = x.view(bs // s, s, c, h, w).transpose(1, 2)  # [B, C, S, h, w]: the slot axis is Conv3d's depth
        y = self.conv1(F.silu(self.norm1(y)))
        y = self.conv2(F.silu(self.norm2(y)))
        return self.gate(x, y.transpose(1, 2).reshape(bs, c, h, w))


class SlotAttention(nn.Module):
    """Attention across slots at each token position after a transformer block: ``[B*S, N, C]`` (gated).

    Each token attends to the tokens at the same position in the S slots of its scene; the slot index enters
    through a fixed sinusoidal encoding added to the (layer-normalised) input."""

    def __init__(self, dim: int, num_slots: int, heads: int = 8) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"slot attention: width {dim} is not a multiple of {heads} heads")
        self.num_slots = num_slots
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("slot_encoding", sinusoidal_encoding(num_slots, dim), persistent=False)
        self.attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False, out_bias=False)
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs, n, c = x.shape
        s = self.num_slots
        if bs % s:
            raise ValueError(f"slot attention: batch {bs} is not a multiple of {s} slots")
        b = bs // s
        y = self.norm(x).view(b, s, n, c) + self.slot_encoding.to(x.dtype)[None, :, None]
        y = self.attn(y.permute(0, 2, 1, 3).reshape(b * n, s, c))
        return self.gate(x, y.view(b, n, s, c).permute(0, 2, 1, 3).reshape(bs, n, c))
