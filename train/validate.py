"""Validation images during training: a short unguided DDIM run of the ``CObLPipeline`` (as the diffusers
training scripts do), shown as photo | layers | background | recomposition.

No composite guidance: it shows how training is going, not the best the sampler can do (``cobl eval``).
"""

from __future__ import annotations

import torch

from core.layers import ALPHA_CHANNEL, EMPTY_RGB, composite
from infer.pipeline import CObLPipeline


def sample_layers(
    pipe: CObLPipeline,
    photo: torch.Tensor,
    depth: torch.Tensor | None = None,
    steps: int = 10,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unguided sampling with the pipeline: photo [B,3,H,W] (+ depth [B,1,H,W]) -> (layers [B,K,4,H,W],
    background [B,3,H,W])."""
    out = pipe(
        photo,
        depth,
        num_inference_steps=steps,
        guidance_scale=0.0,
        generator=torch.Generator().manual_seed(seed),
    )
    return out.layers, out.background


def layer_grid(photo: torch.Tensor, layers: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """One row per scene: photo | each layer over neutral grey | background | recomposition. [3, H', W']."""
    grey = torch.tensor(EMPTY_RGB, device=photo.device).view(3, 1, 1)
    rows = []
    for i in range(photo.shape[0]):
        shown = [
            layers[i, k, ALPHA_CHANNEL : ALPHA_CHANNEL + 1] * layers[i, k, :3]
            + (1 - layers[i, k, ALPHA_CHANNEL : ALPHA_CHANNEL + 1]) * grey
            for k in range(layers.shape[1])
        ]
        recomposed = composite(layers[i], background[i])
        rows.append(torch.cat([photo[i], *shown, background[i], recomposed], dim=-1))
    return torch.cat(rows, dim=-2).clamp(0, 1)
