"""Composite guidance: nudge the sampler so the predicted layers composite back to the photo.

At a sampler step the denoiser's output gives a prediction of the clean latents ``x0`` of every slot. The
codec decodes them (differentiably) into object layers and a background, ``core.layers.composite`` stacks
them, and the recomposition error ``L = mean(valid * (composite - photo)^2)`` is differentiated, and
normalised gradient steps are taken with a weight that follows a schedule over the sampling progress. The
authors take one such step per sampler step (modes ``"x0"`` and ``"latents"`` do; the ``"authors"`` preset of
``infer.settings`` uses ``"latents"``); our default mode ``"both"`` takes two per step while the denoiser
gradient is on (the first quarter of the sampling) and one afterwards.

Three ways to get the gradient (``mode``):
  * ``"x0"``: ``dL/dx0`` through the decoder only, applied to the clean prediction, which the
    scheduler step then turns into the next latents. This is the latent gradient with the denoiser's Jacobian
    replaced by its skip path; it costs one decoder forward and backward per step and no denoiser backward.
  * ``"latents"``: ``dL/dx_t`` through the denoiser as well (exact, about twice the denoiser's cost), applied
    to the latents after the scheduler step (as in diffusion posterior sampling), except at the last step,
    whose output is the result itself: there the decoder-only step on the clean prediction is taken instead.
  * ``"both"`` (default): the two steps together, the denoiser gradient only in the first ``denoiser_until``
    of the sampling (0.25), where it shapes which slot holds which object, so the cost stays near 1.5x
    unguided (``bench/bench_guidance.py``).
Measured on a briefly trained tiny model (600 steps; 24 held-out toy scenes, 32 px, 20 DDIM steps), as amodal
mIoU / recomposition PSNR: unguided 0.27 / 18 dB; x0 0.29 / 33 dB; latents 0.44 / 22 dB; both with the
denoiser gradient throughout 0.48 / 33 dB; the default 0.44 / 34 dB. The gradient through the denoiser moves
objects between slots; the decoder-only one mostly repaints the frontmost slot.

Memory (docs/training.md, "Inference memory"): the gradient is exact but holds the decoder's activations
for one pass of the codec's decoder at a time (``codec.decoder_pass``: one image at 512²).
``decoder_gradient`` decodes every slot without a graph but the last pass, differentiates the composite with
respect to the decoded images (cheap, pixel-sized), then pulls that image gradient back through the decoder a
pass at a time, re-running each pass but the last: a decoder forward more (less the last pass) than holding
every slot's activations at once, for 1/14 of them at K = 6 and 512² (14 images, one a pass). The
denoiser gradient recomputes the UNet's blocks in its backward pass (``recomputing``) when its activations
would be large (``RECOMPUTE_DENOISER_ABOVE``), and takes the decoder part from ``decoder_gradient``; in mode
``"both"`` the decoder step on the same clean prediction reuses that gradient instead of taking it again.

Normalised step: the gradient is divided by its RMS (per sample), and scaled per element to ``scale *
weight(progress) * rms(residual)`` (step kind "residual", our default), so the step shrinks as the
recomposition converges instead of overshooting a good fit; "noise" scales it with the noise level instead,
and "unit_norm" is the authors' step of a fixed L2 norm over the whole sample (``normalised_step``).


Slot reordering (optional, ``reorder_every``): the authors periodically search the orderings of the object
slots for the best recomposition. Here the search runs on the decoded prediction in the same [0, 1] range as
the photo, over the occupied slots only (empty ones go to the back, as in the training data), and the
permutation is applied to the latents, the current prediction and the scheduler's history together, so every
later index is fresh.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cobl.codec import LayerCodec, split_stack
from cobl.parametrization import per_sample
from cobl.slots import occupied_slots, slot_orders
from core.layers import ALPHA_CHANNEL, composite
from core.policy import MIN_OBJECT_AREA
from infer.settings import MODES, SCHEDULES, STEP_KINDS, GuidanceConfig

SEARCH_RESOLUTION = 64  # the order search compares composites at most this big (area-averaged): ranking only


def recomposition_error(
    layers: torch.Tensor, background: torch.Tensor, photo: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample mean squared error ``[B]`` between the composite and the photo, over valid pixels."""
    diff = (composite(layers, background) - photo) ** 2
    if valid is None:
        return diff.flatten(1).mean(1)
    valid = valid.expand_as(diff)
    return (diff * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)


def decoded_error(
    decode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x0: torch.Tensor,
    photo: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``recomposition_error`` of latents ``x0 [B, S, C, h, w]`` decoded by ``decode`` (values clamped to
    [0, 1] as in the output)."""
    layers, background = decode(x0)
    return recomposition_error(layers.clamp(0, 1), background.clamp(0, 1), photo, valid)


class DecoderGradient(NamedTuple):
    """The recomposition error ``L [B]`` of clean latents ``x0`` and its gradient ``dL/dx0``."""

    x0: torch.Tensor
    grad: torch.Tensor
    error: torch.Tensor


def decoder_gradient_at_once(
    codec: LayerCodec, x0: torch.Tensor, photo: torch.Tensor, valid: torch.Tensor | None = None
) -> DecoderGradient:
    """``dL/dx0`` through the decoder with every slot in one graph: for a codec whose decoder keeps no
    activations (``decoder_pass_pixels`` None), and the reference ``decoder_gradient`` is checked against."""
    with torch.enable_grad():
        x = x0.detach().requires_grad_(True)
        error = decoded_error(codec.decode_layers, x, photo, valid)
        (grad,) = torch.autograd.grad(error.sum(), x)
    return DecoderGradient(x0, grad, error.detach())


def decoder_gradient(
    codec: LayerCodec, x0: torch.Tensor, photo: torch.Tensor, valid: torch.Tensor | None = None
) -> DecoderGradient:
    """``dL/dx0`` of ``decoded_error`` for ``x0 [B, S, C, h, w]``, exactly, holding the decoder's activations
    for one pass (``codec.decoder_pass``) at a time (the module docstring)."""
    if codec.decoder_pass_pixels is None:
        return decoder_gradient_at_once(codec, x0, photo, valid)
    b, s = x0.shape[:2]
    with torch.enable_grad():
        flat = x0.detach().flatten(0, 1).requires_grad_(True)
        inputs = codec.decoder_inputs(flat)  # a reshuffle of the latents: a cheap graph
    size = codec.decoder_pass(inputs)
    parts = inputs.detach().split(size)
    with torch.no_grad():
        decoded = [codec.run_decoder(part) for part in parts[:-1]]
    with torch.enable_grad():
        last_in = parts[-1].clone().requires_grad_(True)
        last_out = codec.run_decoder(last_in)  # its graph is kept: the backward starts with it
        images = torch.cat([*decoded, last_out.detach()]).requires_grad_(True)
        slots = codec.decoder_outputs(images, b * s)
        layers, background = split_stack(slots.view(b, s, *slots.shape[1:]))
        error = recomposition_error(layers.clamp(0, 1), background.clamp(0, 1), photo, valid)
        (d_images,) = torch.autograd.grad(error.sum(), images)
        d_parts = d_images.split(size)
        (d_last,) = torch.autograd.grad(last_out, last_in, d_parts[-1])
        del last_out
        pairs = zip(parts[:-1], d_parts[:-1], strict=True)
        d_inputs = torch.cat([*(_pull_back(codec.run_decoder, part, d) for part, d in pairs), d_last])
        (grad,) = torch.autograd.grad(inputs, flat, d_inputs)
    return DecoderGradient(x0, grad.view_as(x0), error.detach())


def _pull_back(
    fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, d_outputs: torch.Tensor
) -> torch.Tensor:
    """The vector-Jacobian product ``d_outputs^T dfn/dinputs``, its graph freed on return."""
    x = inputs.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(x), x, d_outputs)
    return grad


def normalised_step(
    grad: torch.Tensor,
    error: torch.Tensor,
    size: float,
    kind: str = "residual",
    noise_level: torch.Tensor | None = None,
) -> torch.Tensor:
    """The update ``-length * grad / rms(grad)`` per sample (zero where the gradient is 0), its per-element
    length (RMS) set by ``kind`` (``infer.settings.STEP_KINDS``): ``size * rms(residual)`` ("residual"),
    ``size * noise_level`` ("noise": ``noise_level [B]`` = sqrt(1 - alpha_bar_t)), or a step of L2 norm
    ``size`` over the whole sample ("unit_norm", the authors' ``guidance_weight * grad / ||grad||``)."""
    flat = grad.flatten(1)
    rms_grad = flat.pow(2).mean(1).sqrt()
    if kind == "residual":
        length = size * error.detach().clamp_min(0).sqrt()
    elif kind == "noise":
        if noise_level is None:
            raise ValueError("step kind 'noise' needs the noise level")
        length = size * noise_level.to(grad.dtype).expand(grad.shape[0])
    elif kind == "unit_norm":
        length = torch.full_like(rms_grad, size / flat.shape[1] ** 0.5)
    else:
        raise ValueError(f"guidance step must be one of {STEP_KINDS}, got {kind!r}")
    scale = length / rms_grad.clamp_min(1e-12)
    scale = torch.where(rms_grad > 0, scale, torch.zeros_like(scale))
    return -per_sample(scale, grad) * grad


def guide_x0(
    x0: torch.Tensor,
    codec: LayerCodec,
    photo: torch.Tensor,
    size: float,
    valid: torch.Tensor | None = None,
    known: DecoderGradient | None = None,
    kind: str = "residual",
    noise_level: torch.Tensor | None = None,
) -> torch.Tensor:
    """One normalised gradient step on the clean prediction ``x0`` (mode ``"x0"``); ``known``, a gradient
    already taken (by ``denoiser_gradient``), is used when it was taken at this very ``x0``."""
    if known is None or not torch.equal(known.x0, x0):
        known = decoder_gradient(codec, x0, photo, valid)
    return x0 + normalised_step(known.grad, known.error, size, kind, noise_level)


# The denoiser gradient recomputes the UNet's blocks in backward (one forward more) once a block's
# activations pass this many elements (batch x slots x latent pixels x the first level's channels): SD's UNet
# over 7 slots at 512² (9.2 M) keeps GiBs of them, the demo's tiny model (40 K) a few MiB.
RECOMPUTE_DENOISER_ABOVE = 2**21


def activation_elements(model: nn.Module, latents: torch.Tensor) -> int:
    """The size of one activation at the denoiser's first level for ``latents [B, S, C, h, w]``."""
    b, s, _, h, w = latents.shape
    return b * s * h * w * int(model.unet.config.block_out_channels[0])


@contextlib.contextmanager
def recomputing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within: diffusers' gradient checkpointing of ``model`` (each block's activations are recomputed in the
    backward pass instead of kept); the model's own setting is restored after."""
    if not enabled or model.is_gradient_checkpointing:
        yield
        return
    model.enable_gradient_checkpointing()
    try:
        yield
    finally:
        model.disable_gradient_checkpointing()


def denoiser_gradient(
    predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    model: nn.Module,
    codec: LayerCodec,
    latents: torch.Tensor,
    photo: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, DecoderGradient]:
    """``dL/dx_t`` through the denoiser (mode ``"latents"``): ``predict(x) -> (model output, x0)`` runs
    ``model``. Returns (the output, detached; ``dL/dx_t``; the decoder gradient at its ``x0``)."""
    recompute = activation_elements(model, latents) > RECOMPUTE_DENOISER_ABOVE
    with torch.enable_grad(), recomputing(model, recompute):
        x = latents.detach().requires_grad_(True)
        out, x0 = predict(x)
        at_x0 = decoder_gradient(codec, x0.detach(), photo, valid)
        (grad,) = torch.autograd.grad(x0, x, at_x0.grad)
    return out.detach(), grad, at_x0


def slot_order_error(
    layers: torch.Tensor,
    background: torch.Tensor,
    photo: torch.Tensor,
    valid: torch.Tensor | None,
    order: list[int],
) -> torch.Tensor:
    """Recomposition error ``[B]`` with the object slots taken in ``order`` (front to back)."""
    return recomposition_error(layers[:, order], background, photo, valid)


def best_slot_order(
    layers: torch.Tensor,
    background: torch.Tensor,
    photo: torch.Tensor,
    valid: torch.Tensor | None = None,
    min_area: float = MIN_OBJECT_AREA,
) -> torch.Tensor:
    """Per sample, the permutation ``[B, K]`` of object slots whose composite best matches the photo.

    Occupied slots (``cobl.slots.occupied_slots``) are tried in every order (``slot_orders``: up to
    ``MAX_ORDER_SEARCH_SLOTS`` of them, else kept as they are) and put first; empty slots follow in their old
    order.
    The current order wins ties, so a converged stack is left alone. Images larger than ``SEARCH_RESOLUTION``
    are compared area-downsampled (the search only ranks orders). ``layers`` and ``photo`` must be in the
    same [0, 1] range.
    """
    layers, background, photo, valid = _shrink(SEARCH_RESOLUTION, layers, background, photo, valid)
    b, k = layers.shape[:2]
    perms = []
    for i in range(b):
        is_occupied = occupied_slots(layers[i, :, ALPHA_CHANNEL], min_area)
        occupied = [j for j in range(k) if bool(is_occupied[j])]
        empty = [j for j in range(k) if j not in occupied]
        best, best_err = occupied + empty, None
        vi = None if valid is None else valid[i : i + 1]
        for cand in slot_orders(occupied):
            order = list(cand) + empty
            err = float(
                slot_order_error(layers[i : i + 1], background[i : i + 1], photo[i : i + 1], vi, order)[0]
            )
            if best_err is None or err < best_err - 1e-12:
                best, best_err = order, err
        perms.append(best)
    return torch.tensor(perms, dtype=torch.long, device=layers.device)


def _shrink(size: int, *images: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Area-downsample ``[..., C, H, W]`` images whose side exceeds ``size`` (None passes through)."""
    out = []
    for image in images:
        if image is None or max(image.shape[-2:]) <= size:
            out.append(image)
            continue
        h, w = image.shape[-2:]
        scale = size / max(h, w)
        flat = image.reshape(-1, *image.shape[-3:])
        small = F.interpolate(flat, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
        out.append(small.reshape(*image.shape[:-2], *small.shape[-2:]))
    return out


__all__ = [
    "MODES",
    "SCHEDULES",
    "DecoderGradient",
    "GuidanceConfig",
    "best_slot_order",
    "decoded_error",
    "decoder_gradient",
    "denoiser_gradient",
    "guide_x0",
]
