"""Composite guidance: its gradient step lowers the recomposition error; the slot-order search; the maths."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from cobl.codec import SpaceToDepthCodec, encode_condition
from cobl.configs import tiny_config
from cobl.factory import build
from cobl.parametrization import output_from_x0, predict_x0
from cobl.slots import permute_slots
from core.layers import composite
from infer import guidance
from infer.guidance import (
    GuidanceConfig,
    best_slot_order,
    decoded_error,
    guide_x0,
    normalised_step,
)
from infer.pipeline import CObLPipeline
from tests.shardmaker import make_scene

torch.set_num_threads(1)
RES = 32


@pytest.fixture(scope="module")
def scene():
    sc = make_scene(np.random.default_rng(3), RES, 3)
    return {k: torch.from_numpy(np.asarray(v, np.float32))[None] for k, v in sc.items() if k != "ids"}


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    model, codec, scheduler = build(tiny_config(num_objects=3, resolution=RES))
    p = CObLPipeline.from_parts(model.eval(), DDIMScheduler.from_config(scheduler.config), codec)
    p.set_progress_bar_config(disable=True)
    return p


def test_x0_guidance_step_lowers_recomposition_error(scene):
    codec = SpaceToDepthCodec(4)
    x_true = codec.encode_layers(scene["layers"], scene["background"])
    x0 = x_true + 0.5 * torch.randn(x_true.shape, generator=torch.Generator().manual_seed(0))
    before = decoded_error(codec.decode_layers, x0, scene["photo"])
    after = decoded_error(codec.decode_layers, guide_x0(x0, codec, scene["photo"], 0.5), scene["photo"])
    assert float(after) < 0.6 * float(before)
    assert torch.allclose(
        decoded_error(codec.decode_layers, x_true, scene["photo"]), torch.zeros(1), atol=1e-10
    )


def test_one_guided_sampler_step_beats_unguided_from_same_latents(pipe, scene):
    photo = scene["photo"]
    noise = torch.randn((1, 4, 64, RES // 4, RES // 4), generator=torch.Generator().manual_seed(1))
    errors = {}
    for scale in (0.0, 1.0):
        out = pipe(photo, num_inference_steps=1, guidance_scale=scale, latents=noise.clone())
        errors[scale] = float(((composite(out.layers, out.background) - photo) ** 2).mean())
    assert errors[1.0] < errors[0.0]


def test_latent_gradient_through_denoiser_lowers_error(pipe, scene):
    """Mode "latents": a normalised step on x_t along -dL/dx_t lowers the error of the re-predicted layers."""
    photo = scene["photo"]
    latents = torch.randn((1, 4, 64, RES // 4, RES // 4), generator=torch.Generator().manual_seed(2))
    photo_latents = encode_condition(pipe.codec, photo, None)
    t = torch.tensor([500])
    alpha_bar = pipe.scheduler.alphas_cumprod[t]

    def error_at(x):
        out = pipe.unet(x, t, photo_latents)
        return decoded_error(pipe.codec.decode_layers, predict_x0(out, x, alpha_bar, "sample"), photo)

    x = latents.clone().requires_grad_(True)
    err = error_at(x)
    (grad,) = torch.autograd.grad(err.sum(), x)
    with torch.no_grad():
        moved = error_at(latents + normalised_step(grad, err, 0.05))
    assert float(moved) < float(err.detach())


def test_guidance_off_computes_no_gradient(pipe, scene, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a gradient was computed with guidance off")

    monkeypatch.setattr(torch.autograd, "grad", boom)
    out = pipe(
        scene["photo"], num_inference_steps=2, guidance_scale=0.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(out.layers).all()
    with pytest.raises(AssertionError, match="gradient"):
        pipe(
            scene["photo"],
            num_inference_steps=1,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0),
        )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_type_round_trip(prediction_type):
    g = torch.Generator().manual_seed(0)
    out, sample = torch.randn(2, 3, 4, 2, 2, generator=g), torch.randn(2, 3, 4, 2, 2, generator=g)
    alpha_bar = torch.tensor([0.3, 0.9])
    x0 = predict_x0(out, sample, alpha_bar, prediction_type)
    assert torch.allclose(output_from_x0(x0, sample, alpha_bar, prediction_type), out, atol=1e-5)


def test_epsilon_x0_matches_the_forward_process():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(1, 2, 3, 2, 2, generator=g), torch.randn(1, 2, 3, 2, 2, generator=g)
    alpha_bar = torch.tensor([0.4])
    xt = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    assert torch.allclose(predict_x0(eps, xt, alpha_bar, "epsilon"), x0, atol=1e-5)


def test_best_slot_order_recovers_swapped_slots(scene):
    layers, bg, photo = scene["layers"], scene["background"], scene["photo"]
    swapped = layers[:, [1, 0, 2]]
    perm = best_slot_order(swapped, bg, photo)
    assert perm.tolist() == [[1, 0, 2]]
    # With an empty slot in front, occupied slots come first, the empty one last.
    empty = torch.zeros_like(layers[:, :1])
    perm = best_slot_order(torch.cat([empty, layers], 1), bg, photo)
    assert perm.tolist() == [[1, 2, 3, 0]]
    # The true order is left alone.
    assert best_slot_order(layers, bg, photo).tolist() == [[0, 1, 2]]
    # Big images are searched downsampled, with the same answer.
    big = [x.repeat_interleave(4, -1).repeat_interleave(4, -2) for x in (swapped, bg, photo)]
    assert best_slot_order(*big).tolist() == [[1, 0, 2]]


def test_permute_slots_keeps_background_slot():
    latents = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1, 1, 1)
    perm = torch.tensor([[2, 0, 1], [0, 1, 2]])
    out = permute_slots(latents, perm)
    assert out.flatten(1).tolist() == [[2, 0, 1, 3], [4, 5, 6, 7]]


def test_reordering_permutes_multistep_history(pipe):
    sched = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    p = CObLPipeline.from_parts(pipe.unet, sched, pipe.codec)
    a = torch.arange(4, dtype=torch.float32).view(1, 4, 1, 1, 1)
    sched.model_outputs = [None, a.clone()]
    p._permute_history(torch.tensor([[1, 2, 0]]))
    assert sched.model_outputs[0] is None and sched.model_outputs[1].flatten().tolist() == [1, 2, 0, 3]


def test_dpm_solver_with_reordering_runs(pipe, scene):
    p = CObLPipeline.from_parts(pipe.unet, pipe.scheduler, pipe.codec)
    p.set_progress_bar_config(disable=True)
    p.use_sampler("dpm")
    out = p(
        scene["photo"],
        num_inference_steps=4,
        guidance_scale=1.0,
        reorder_every=1,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.layers.shape == (1, 3, 4, RES, RES) and torch.isfinite(out.layers).all()


def test_weight_schedules():
    lin = GuidanceConfig(schedule="linear", start_weight=0.25)
    assert lin.weight(0, 5) == 0.25 and lin.weight(4, 5) == 1.0 and lin.weight(2, 5) == pytest.approx(0.625)
    late = GuidanceConfig(schedule="late")
    assert late.weight(0, 5) == 0.0 and late.weight(4, 5) == 1.0
    assert GuidanceConfig(schedule="constant").weight(1, 5) == 1.0
    assert not GuidanceConfig(scale=0).enabled
    with pytest.raises(ValueError):
        GuidanceConfig(mode="nope")


@pytest.mark.parametrize(
    "mode,gradients,steps", [("x0", 2, [0, 0, 1, 1]), ("latents", 2, [0, 0, 1, 1]), ("both", 2, [0, 0, 2, 1])]
)
def test_guidance_start_skips_early_gradients(pipe, scene, monkeypatch, mode, gradients, steps):
    """No decoder gradient before ``guidance_start``; mode "both" takes its two steps at a step from one
    decoder gradient (the x0 step reuses the one the denoiser gradient took at the same prediction)."""
    real, count = guidance.decoder_gradient, []

    def counting(*args, **kwargs):
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(guidance, "decoder_gradient", counting)
    out = pipe(
        scene["photo"],
        num_inference_steps=4,  # progress 0, 1/3, 2/3, 1: the last two are guided
        guidance_scale=1.0,
        guidance_mode=mode,
        guidance_start=0.5,
        denoiser_gradient_until=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(count) == gradients and pipe.guidance_steps == steps
    assert torch.isfinite(out.layers).all()


def test_authors_preset_takes_one_guidance_step_per_step_and_removes_an_empty_slot_mid_run(pipe, scene):
    """Preset "authors": 20 DDIM steps, one normalised guidance step each, pruning and reordering every 5
    steps. Slot 1 is made to predict an empty layer (alpha 0): it is reset to the empty layer at step 5
    (not before: step 0 is not a pruning step), and again every 5 steps."""
    alpha = slice(-pipe.codec.factor**2, None)  # the alpha channels of a space-to-depth slot latent
    real_forward = pipe.unet.forward

    def emptying(noisy, t, cond):
        out = real_forward(noisy, t, cond).clone()
        out[:, 1, alpha] = -1.0  # sample prediction: alpha 0 after decoding
        return out

    real_prior = pipe.unet.prior

    def emptying_prior(noisy, t):  # tiny's plain UNet models the alpha channels too: empty there as well
        out = real_prior(noisy, t).clone()
        out[:, 1, alpha] = -1.0
        return out

    pipe.unet.forward, pipe.unet.prior = emptying, emptying_prior
    try:
        out = pipe(scene["photo"], preset="authors", generator=torch.Generator().manual_seed(0))
    finally:
        del pipe.unet.forward, pipe.unet.prior
        pipe.use_sampler("ddim")
    assert pipe.guidance_steps == [1] * 20
    steps = sorted({step for step, b, k in out.pruned if (b, k) == (0, 1)})
    assert steps and steps[0] == 5 and set(steps) <= {5, 10, 15}
    assert torch.isfinite(out.layers).all()
