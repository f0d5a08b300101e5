"""Validation images during training: a short unguided DDIM run, shown as photo | layers | recomposition.

Deliberately minimal (no composite guidance): it shows how training is going; ``infer/`` is the real sampler.
"""

from __future__ import annotations

from typing import Any

import torch

from cobl.core.layers import ALPHA_CHANNEL, EMPTY_RGB, composite
from cobl.model.codec import encode_condition


@torch.no_grad()
def sample_layers(
    model: Any,
    codec: Any,
    scheduler_config: Any,
    photo: torch.Tensor,
    depth: torch.Tensor | None = None,
    steps: int = 10,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unguided DDIM sampling: photo [B,3,H,W] (+ depth [B,1,H,W]) -> (layers [B,K,4,H,W], background)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    photo_latents = encode_condition(codec, photo, depth)
    b = photo.shape[0]
    h, w = photo_latents.shape[-2:]
    shape = (b, model.config.num_slots, model.config.slot_channels, h, w)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(shape, generator=g).to(photo.device) * sched.init_noise_sigma
    for t in sched.timesteps:
        pred = model(latents, t.to(photo.device).expand(b), photo_latents.to(latents.dtype))
        latents = sched.step(pred, t, latents).prev_sample
    return codec.decode_layers(latents)


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
