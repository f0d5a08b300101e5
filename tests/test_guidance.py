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
from core.errors import UserError
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


def test_authors_preset_takes_one_guidance_step_per_step_and_prunes_every_5_steps(pipe, scene):
    """Preset "authors": 20 DDIM steps, one normalised guidance step each, the order search and the pruning
    every 5 steps. Slot 1 is made to predict an empty layer (alpha 0): a slot is reset at step 5 (not before:
    step 0 is not a pruning step), and only at steps 5, 10, 15."""
    alpha = slice(-pipe.codec.factor**2, None)  # the alpha channels of a space-to-depth slot latent
    real_forward = pipe.unet.forward

    def emptying(noisy, t, cond):
        out = real_forward(noisy, t, cond).clone()
        out[:, 1, alpha] = -1.0  # sample prediction: alpha 0 after decoding
        return out

    pipe.unet.forward = emptying
    try:
        out = pipe(scene["photo"], preset="authors", generator=torch.Generator().manual_seed(0))
    finally:
        del pipe.unet.forward
        pipe.use_sampler("ddim")
    assert pipe.guidance_steps == [1] * 20
    steps = sorted({step for step, _, _ in out.pruned})
    assert steps and steps[0] == 5 and set(steps) <= {5, 10, 15}
    assert torch.isfinite(out.layers).all()
    # tiny trains its base UNet: no prior to pull toward, and no condition dropout: the preset says so
    assert len(pipe.notes) == 2 and "prior" in pipe.notes[0] and "classifier-free" in pipe.notes[1]


def _red_in_front_of_green(res: int = RES):
    """A small red box in front of a large green one, stored with the slots swapped (green in slot 0)."""
    layers = torch.zeros(1, 3, 4, res, res)
    layers[:, :, :3] = 0.5  # every transparent pixel and empty slot holds the training data's grey
    layers[0, 0, :3, 6:26, 6:26] = torch.tensor([0.1, 0.8, 0.1])[:, None, None]
    layers[0, 0, 3, 6:26, 6:26] = 1.0
    layers[0, 1, :3, 12:18, 12:18] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    layers[0, 1, 3, 12:18, 12:18] = 1.0
    background = torch.full((1, 3, res, res), 0.3)
    photo = composite(layers[0, [1, 0, 2]], background[0])[None]
    return layers, background, photo


def test_order_search_runs_before_pruning_so_a_misordered_front_object_survives(pipe):
    """Judged in the stored (wrong) order the red box is fully hidden behind the green one and would be
    reset; the order search puts it in front first, so both objects stay, in the right order."""
    layers, background, photo = _red_in_front_of_green()
    x0 = pipe.codec.encode_layers(layers, background)
    alpha_bar = torch.tensor([0.5])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    state = dict(latents=alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise, x0=x0, out=x0.clone(),
                 grad=None, alpha_bar=alpha_bar, pruned=[])
    cfg = GuidanceConfig(reorder_every=5, prune_every=5)
    pipe._reorder_then_prune(state, photo, None, cfg, 5)
    assert {k for _, _, k in state["pruned"]} == {2}  # only the empty slot
    decoded, _ = pipe.codec.decode_layers(state["x0"])
    assert torch.allclose(decoded[0, 0], layers[0, 1], atol=1e-6)  # red now in front
    assert torch.allclose(decoded[0, 1], layers[0, 0], atol=1e-6)
    # Pruning alone, in the stored order, would have reset the red box.
    _, _, removed = pipe._prune(state["latents"], x0, alpha_bar, cfg, 5)
    assert {k for _, _, k in removed} == {1, 2}


def test_a_reset_slot_decodes_to_the_training_datas_empty_layer(pipe):
    layers, background, photo = _red_in_front_of_green()
    x0 = pipe.codec.encode_layers(layers[:, [1, 0, 2]], background)
    x0[:, 2] = torch.randn(x0[:, 2].shape, generator=torch.Generator().manual_seed(1)) * 0.3  # coloured ...
    x0[:, 2, -pipe.codec.factor**2 :] = -0.98  # ... and faint: alpha 0.01 everywhere, under the 2 % rule
    _, reset, removed = pipe._prune(x0.clone(), x0, torch.tensor([0.5]), GuidanceConfig(), 5)
    assert removed == [(5, 0, 2)]
    decoded, _ = pipe.codec.decode_layers(reset)
    assert torch.allclose(decoded[0, 2, :3], torch.full_like(decoded[0, 2, :3], 0.5), atol=1e-6)
    assert torch.allclose(decoded[0, 2, 3], torch.zeros_like(decoded[0, 2, 3]), atol=1e-6)


def test_prior_pull_on_a_trained_base_unet_is_refused(pipe, scene):
    assert pipe.unet.config.train_base
    with pytest.raises(UserError, match="train_base") as err:
        pipe(scene["photo"], num_inference_steps=2, prior_weight=0.05)
    assert err.value.option == "prior_weight"
    with pytest.raises(UserError) as err:
        pipe(scene["photo"], num_inference_steps=2, condition_scale=1.75)
    assert err.value.option == "condition_scale"


def test_min_area_reaches_the_in_loop_pruning(pipe):
    """The green box covers 400 of 1024 px (39 %): pruned under a 50 % rule, kept under the default."""
    layers, background, photo = _red_in_front_of_green()
    layers = layers[:, [1, 0, 2]]  # the true order, so only the area decides
    x0 = pipe.codec.encode_layers(layers, background)
    pruned = {}
    for min_area in (0.02, 0.5):
        cfg = GuidanceConfig(prune_every=5, min_area=min_area)
        _, _, removed = pipe._prune(x0.clone(), x0, torch.tensor([0.5]), cfg, 5)
        pruned[min_area] = {k for _, _, k in removed}
    assert pruned == {0.02: {2}, 0.5: {0, 1, 2}}
    # ... and the pipeline hands its min_area to them
    cfg, _, _ = pipe.guidance_settings("authors", min_area=0.07)
    assert cfg.min_area == 0.07 and cfg.prune_every == 5


def test_the_unguided_row_under_a_preset_runs_no_order_search(pipe, scene, monkeypatch):
    import infer.pipeline as pipeline_module

    calls = []
    real = pipeline_module.best_slot_order

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "best_slot_order", counting)
    g = torch.Generator().manual_seed(0)
    out = pipe(scene["photo"], preset="authors", guidance_scale=0.0, generator=g)
    pipe.use_sampler("ddim")
    assert calls == [] and out.pruned == [] and pipe.guidance_steps == [0] * 20
    pipe(scene["photo"], preset="authors", generator=torch.Generator().manual_seed(0))
    pipe.use_sampler("ddim")
    assert len(calls) == 3  # steps 5, 10, 15


@pytest.mark.parametrize("kind", ["residual", "noise", "unit_norm"])
def test_step_kinds_set_the_step_length(kind):
    grad = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    error, noise = torch.tensor([0.04, 0.25]), torch.tensor([0.3, 0.9])
    step = normalised_step(grad, error, 2.0, kind, noise)
    rms = step.flatten(1).pow(2).mean(1).sqrt()
    expected = {"residual": 2.0 * error.sqrt(), "noise": 2.0 * noise,
                "unit_norm": torch.full((2,), 2.0 / 60**0.5)}[kind]
    assert torch.allclose(rms, expected, atol=1e-6)
    assert torch.allclose(step.flatten(1).norm(dim=1), expected * 60**0.5, atol=1e-5)
    cos = torch.nn.functional.cosine_similarity(step.flatten(1), -grad.flatten(1))
    assert torch.allclose(cos, torch.ones(2), atol=1e-6)
