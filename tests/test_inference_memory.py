"""Inference memory: the guidance gradient taken one decoder pass at a time, and with the denoiser's
blocks recomputed, equals the all-at-once one (fp32, max abs diff <= 1e-4) and holds a fraction of its
activations."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from bench.bench_infer import SavedActivations
from cobl.codec import VAECodec
from cobl.configs import sd_config
from cobl.factory import build
from infer import guidance, pipeline
from infer.guidance import decoder_gradient, decoder_gradient_at_once, denoiser_gradient, normalised_step
from infer.pipeline import CObLPipeline
from tests.sdfolder import sd_like_vae, write_sd_folder

torch.set_num_threads(1)
RES, K = 32, 3


@pytest.fixture(scope="module")
def vae_codec():
    codec = VAECodec(sd_like_vae())
    codec.decoder_pass_pixels = RES * RES  # one image per pass, as the SD VAE at 256² and up
    return codec


@pytest.fixture(scope="module")
def stack(vae_codec):
    g = torch.Generator().manual_seed(0)
    h = RES // vae_codec.downsample
    x0 = torch.randn(2, K + 1, vae_codec.latent_channels, h, h, generator=g)
    photo = torch.rand(2, 3, RES, RES, generator=g)
    valid = torch.ones(1, 1, RES, RES)
    valid[..., : RES // 4, :] = 0  # letterbox padding: left out of the loss
    return x0, photo, valid


@pytest.mark.parametrize("per_pass", [1, 6])  # 16 images: 16 passes, or 6 + 6 + 4 (a last pass that matters)
def test_decoder_gradient_a_pass_at_a_time_equals_all_at_once(vae_codec, stack, monkeypatch, per_pass):
    x0, photo, valid = stack
    monkeypatch.setattr(vae_codec, "decoder_pass_pixels", per_pass * RES * RES)
    assert vae_codec.decoder_pass(torch.zeros(16, 4, RES // 2, RES // 2)) == per_pass
    bounded = decoder_gradient(vae_codec, x0, photo, valid)
    reference = decoder_gradient_at_once(vae_codec, x0, photo, valid)
    # What the sampler applies: the step normalised to the residual's RMS (values of order 1).
    step, step_ref = (normalised_step(g.grad, g.error, 1.0) for g in (bounded, reference))
    assert float(step_ref.abs().max()) > 0.5
    assert float((step - step_ref).abs().max()) <= 1e-4
    scale = float(reference.grad.abs().max())
    assert float((bounded.grad - reference.grad).abs().max()) <= 1e-4 * scale
    assert float((bounded.error - reference.error).abs().max()) <= 1e-6


def test_decoder_gradient_holds_one_image_of_activations_at_a_time(vae_codec, stack):
    x0, photo, valid = stack
    weights = list(vae_codec.parameters())
    peaks = {}
    for name, fn in (("bounded", decoder_gradient), ("at_once", decoder_gradient_at_once)):
        counter = SavedActivations(weights)
        with counter.hooks():
            fn(vae_codec, x0, photo, valid)
        peaks[name] = counter.peak
    images = 2 * x0.shape[0] * x0.shape[1]  # RGB and alpha of every slot of both samples: 16
    assert peaks["bounded"] * images / 2 < peaks["at_once"], peaks  # ~1/16, allowing the pixel-sized rest


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory):
    folder = write_sd_folder(tmp_path_factory.mktemp("sd") / "sd")
    config = sd_config(num_objects=K, resolution=RES)
    torch.manual_seed(0)
    model, codec, scheduler = build(config, pretrained=folder)
    with torch.no_grad():  # the added modules start as identities: give them something to differentiate
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    codec.decoder_pass_pixels = RES * RES  # one image per pass, as the SD VAE at 256² and up
    pipe = CObLPipeline.from_parts(model.eval(), DDIMScheduler.from_config(scheduler.config), codec, config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_denoiser_gradient_with_recomputed_blocks_equals_the_plain_one(sd_pipe, stack, monkeypatch):
    _, photo, valid = stack
    pipe = sd_pipe
    g = torch.Generator().manual_seed(1)
    h = RES // pipe.codec.downsample
    latents = torch.randn(2, K + 1, pipe.codec.latent_channels, h, h, generator=g)
    t = pipe.scheduler.timesteps[0] if len(pipe.scheduler.timesteps) else torch.tensor(500)
    t = torch.as_tensor(t)
    alpha_bar = pipe.scheduler.alphas_cumprod[t].expand(2)
    predict = lambda x: pipe._predict(x, t, photo * 2 - 1, alpha_bar)  # noqa: E731
    weights = list(pipe.unet.parameters()) + list(pipe.codec.parameters())
    results, peaks = {}, {}
    for name, above in (("recomputed", -1), ("plain", float("inf"))):
        monkeypatch.setattr(guidance, "RECOMPUTE_DENOISER_ABOVE", above)
        counter = SavedActivations(weights)
        with counter.hooks():
            results[name] = denoiser_gradient(predict, pipe.unet, pipe.codec, latents, photo, valid)
        peaks[name] = counter.peak
    assert not pipe.unet.is_gradient_checkpointing  # the model's own setting is back
    (out, grad, at), (out_ref, grad_ref, at_ref) = results["recomputed"], results["plain"]
    assert torch.equal(out, out_ref)
    for g, g_ref in ((grad, grad_ref), (at.grad, at_ref.grad)):  # relative to the gradients' size
        assert float((g - g_ref).abs().max()) <= 1e-4 * float(g_ref.abs().max())
    step, step_ref = (normalised_step(g, at.error, 1.0) for g in (grad, grad_ref))
    assert float(step_ref.abs().max()) > 0.5 and float((step - step_ref).abs().max()) <= 1e-4
    assert peaks["recomputed"] < peaks["plain"], peaks


def _all_at_once(pipe: CObLPipeline, monkeypatch) -> None:
    """The reference path (bench/bench_infer.py's ``use_all_at_once``): one graph, no reuse."""
    monkeypatch.setattr(pipe.codec, "decoder_pass_pixels", None)
    monkeypatch.setattr(guidance, "RECOMPUTE_DENOISER_ABOVE", float("inf"))
    bounded = pipeline.guide_x0
    monkeypatch.setattr(
        pipeline, "guide_x0", lambda x0, codec, photo, size, valid=None, known=None, *step: bounded(
            x0, codec, photo, size, valid, None, *step
        )
    )  # the same step (kind, noise level), never reusing a known gradient


@pytest.mark.parametrize(
    "setting",
    [
        dict(guidance_mode="x0", num_inference_steps=3),
        dict(guidance_mode="latents", num_inference_steps=3),
        dict(guidance_mode="both", num_inference_steps=3, denoiser_gradient_until=0.5, reorder_every=1),
        dict(preset="authors"),
    ],
    ids=["x0", "latents", "both", "authors"],
)
def test_sampling_equals_the_all_at_once_path(sd_pipe, stack, monkeypatch, setting):
    photo = stack[1][:1]
    runs = {}
    for name in ("bounded", "reference"):
        with monkeypatch.context() as m:
            m.setattr(guidance, "RECOMPUTE_DENOISER_ABOVE", -1)  # recompute even at this size
            if name == "reference":
                _all_at_once(sd_pipe, m)
            runs[name] = sd_pipe(photo, generator=torch.Generator().manual_seed(0), **setting)
            steps = list(sd_pipe.guidance_steps)
            sd_pipe.use_sampler("ddim")
        runs[name + "_steps"] = steps
    bounded, reference = runs["bounded"], runs["reference"]
    assert runs["bounded_steps"] == runs["reference_steps"] and sum(runs["bounded_steps"]) > 0
    assert float((bounded.latents - reference.latents).abs().max()) <= 1e-4
    assert float((bounded.layers - reference.layers).abs().max()) <= 1e-4
    unguided = sd_pipe(photo, generator=torch.Generator().manual_seed(0), guidance_scale=0.0, **setting)
    assert float((unguided.latents - reference.latents).abs().max()) > 1e-3  # guidance did move them
