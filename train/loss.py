"""The CObL diffusion loss: all slots of a scene noised at ONE shared timestep, MSE on the schedule's target.

Noise, timestep and condition dropout are drawn per sample from a generator seeded by (seed, step, sample
key): the loss of a sample does not depend on which batch, rank or worker it landed in. That is what makes a
2-process DDP run equal a 1-process run with the doubled batch, and a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch

from cobl.batch import Batch
from cobl.codec import encode_condition
from cobl.data import sample_seed
from cobl.examples import Examples, codec_dtype, prepare_examples
from cobl.parametrization import output_from_x0, predict_x0
from cobl.slots import orders_from_relations, permute_slots
from core.errors import UserError


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
    batch: Batch | Examples,
    step: int,
    seed: int = 0,
    snr_gamma: float | None = None,
    cond_dropout: float = 0.0,
    object_weight: float = 0.0,
    slot_matching: bool = False,
    hidden_weight: float = 0.0,
) -> torch.Tensor:
    """Mean over scenes of the (optionally min-SNR weighted) MSE over all slots, channels and pixels.

    ``batch``: decoded scenes (encoded here, every step: the streaming image path) or ``Examples`` prepared
    once (``cobl.cache``); the loss is the same function of the same numbers either way.

    ``object_weight`` W > 0 weighs latent pixels under any object (the union of the amodal alphas, pooled to
    the latent grid) by 1 + W: objects cover a few per cent of a tabletop photo, so a plain mean is dominated
    by empty slots and the background and the layers are learnt last.

    ``hidden_weight`` W_h > 0 adds W_h under the hidden parts of objects (amodal alpha minus visible weight,
    ``core.layers.visible_weights``, union over slots): the few pixels amodal completion is about.

    ``slot_matching`` compares the prediction with the closest of the target's interchangeable slot orders
    (``cobl.slots``: objects whose layers do not overlap composite the same in any order), as permutation-
    invariant training does in source separation. The data orders such objects by a depth tie-break the photo
    barely shows; forced to guess it, a small model averages the candidates and merges visible objects into
    one slot. The order is chosen on the implied clean latents (no gradient), and the target is re-derived
    from the chosen clean latents and the same noisy input, so it stays consistent with what the model saw:
    at low noise only the data's own order explains the input, at high noise any interchangeable one does.
    """
    examples = batch if isinstance(batch, Examples) else prepare_examples(codec, batch)
    device = examples.latents.device
    depth = examples.depth if _uses_depth(model) else None
    if _uses_depth(model) and depth is None:
        raise UserError(
            "the model is depth-conditioned (config depth_condition) but the batch has no depth: "
            "the shard samples need depth.npy",
            option="data",
        )
    with torch.no_grad():
        # encode_condition casts the depth to the photo's dtype
        photo_latents = encode_condition(codec, examples.photo.to(codec_dtype(codec)), depth)
    latents, photo_latents = examples.latents, photo_latents.float()
    timesteps_total = scheduler.config.num_train_timesteps
    noise, timesteps, drop = per_sample_noise(
        examples.keys, step, seed, tuple(latents.shape[1:]), timesteps_total, cond_dropout
    )
    noise, timesteps, drop = noise.to(device), timesteps.to(device), drop.to(device)
    photo_latents = torch.where(drop[:, None, None, None], torch.zeros_like(photo_latents), photo_latents)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction_type = scheduler.config.prediction_type
    pred = model(noisy, timesteps, photo_latents)
    weight = torch.ones(1, 1, 1, 1, 1, device=device)
    if object_weight > 0:  # [B, 1, 1, h, w], broadcast over slots and channels
        weight = weight + object_weight * examples.object_area[:, :, None]
    if hidden_weight > 0:
        weight = weight + hidden_weight * examples.hidden_area[:, :, None]
    if slot_matching:
        alpha_bar = scheduler.alphas_cumprod.to(device)[timesteps]
        latents = matched_latents(
            predict_x0(pred.detach().float(), noisy, alpha_bar, prediction_type),
            latents,
            orders_from_relations(examples.occupied, examples.overlap),
            weight,
        )
        target = output_from_x0(latents, noisy, alpha_bar, prediction_type)
    elif prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = latents
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unknown prediction type {prediction_type}")
    squared = (pred.float() - target.float()) ** 2
    dims = tuple(range(1, pred.ndim))
    per_scene = (squared * weight).mean(dim=dims) / weight.mean(dim=dims)
    if snr_gamma:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(scheduler, timesteps)
        clipped = torch.clamp(snr, max=snr_gamma)
        weight = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}
        per_scene = per_scene * weight[prediction_type]
    return per_scene.mean()


def matched_latents(
    x0_pred: torch.Tensor,
    latents: torch.Tensor,
    orders: list[list[tuple[int, ...]]],
    weight: torch.Tensor,
) -> torch.Tensor:
    """``latents [B, S, ...]`` with each sample's object slots put in the order (of ``orders``) closest to
    ``x0_pred`` in ``weight``-ed squared error; the first order (the identity) wins ties."""
    chosen = []
    for i, candidates in enumerate(orders):
        if len(candidates) == 1:
            chosen.append(candidates[0])
            continue
        perms = torch.tensor(candidates, dtype=torch.long, device=latents.device)
        options = permute_slots(latents[i : i + 1].expand(len(candidates), *latents.shape[1:]), perms)
        w = weight[i : i + 1] if weight.shape[0] > 1 else weight
        errors = (((options - x0_pred[i : i + 1]) ** 2) * w).flatten(1).mean(1)
        chosen.append(candidates[int(torch.argmin(errors))])
    return permute_slots(latents, torch.tensor(chosen, dtype=torch.long, device=latents.device))


def _uses_depth(model: Any) -> bool:
    """Whether the (possibly DDP-wrapped) CObL model takes a depth condition."""
    return bool(getattr(getattr(model, "module", model), "uses_depth", False))
