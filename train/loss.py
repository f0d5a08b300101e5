"""The CObL diffusion loss: all slots of a scene noised at ONE shared timestep, MSE on the schedule's target.

Noise, timestep and condition dropout are drawn per sample from a generator seeded by (seed, step, sample
key): the loss of a sample does not depend on which batch, rank or worker it landed in. That is what makes a
2-process DDP run equal a 1-process run with the doubled batch, and a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch

from cobl.data import sample_seed


def per_sample_noise(
    keys: list[str],
    step: int,
    seed: int,
    latent_shape: tuple[int, ...],
    num_timesteps: int,
    cond_dropout: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noise [B, *latent_shape], timesteps [B] long, drop_condition [B] bool), on the CPU, deterministic."""
    noises, steps, drops = [], [], []
    for key in keys:
        g = torch.Generator().manual_seed(sample_seed(key, seed, step))
        steps.append(torch.randint(0, num_timesteps, (1,), generator=g))
        drops.append(torch.rand(1, generator=g) < cond_dropout)
        noises.append(torch.randn(latent_shape, generator=g))
    return torch.stack(noises), torch.cat(steps), torch.cat(drops)


def diffusion_loss(
    model: Any,
    codec: Any,
    scheduler: Any,
    batch: dict[str, Any],
    step: int,
    seed: int = 0,
    snr_gamma: float | None = None,
    cond_dropout: float = 0.0,
    object_weight: float = 0.0,
) -> torch.Tensor:
    """Mean over scenes of the (optionally min-SNR weighted) MSE over all slots, channels and pixels.

    ``object_weight`` W > 0 weighs latent pixels under any object (the union of the amodal alphas, pooled to
    the latent grid) by 1 + W: objects cover a few per cent of a tabletop photo, so a plain mean is dominated
    by empty slots and the background and the layers are learnt last.
    """
    device = batch["photo"].device
    with torch.no_grad():
        codec_dtype = next(iter(codec.parameters()), torch.empty(0)).dtype
        latents = codec.encode_layers(batch["layers"].to(codec_dtype), batch["background"].to(codec_dtype))
        photo_latents = codec.encode_photo(batch["photo"].to(codec_dtype))
    latents, photo_latents = latents.float(), photo_latents.float()
    noise, timesteps, drop = per_sample_noise(
        batch["key"], step, seed, tuple(latents.shape[1:]), scheduler.config.num_train_timesteps, cond_dropout
    )
    noise, timesteps, drop = noise.to(device), timesteps.to(device), drop.to(device)
    photo_latents = torch.where(drop[:, None, None, None], torch.zeros_like(photo_latents), photo_latents)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = latents
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unknown prediction type {prediction_type}")
    pred = model(noisy, timesteps, photo_latents)
    squared = (pred.float() - target.float()) ** 2
    if object_weight > 0:
        union = batch["layers"][:, :, 3].amax(dim=1, keepdim=True).float().to(device)  # [B, 1, H, W]
        union = torch.nn.functional.adaptive_avg_pool2d(union, squared.shape[-2:])[:, :, None]
        weight = 1 + object_weight * union  # [B, 1, 1, h, w], broadcast over slots and channels
        per_scene = (squared * weight).mean(dim=tuple(range(1, pred.ndim))) / weight.mean(dim=(1, 2, 3, 4))
    else:
        per_scene = squared.mean(dim=tuple(range(1, pred.ndim)))
    if snr_gamma:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(scheduler, timesteps)
        clipped = torch.clamp(snr, max=snr_gamma)
        weight = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}
        per_scene = per_scene * weight[prediction_type]
    return per_scene.mean()
