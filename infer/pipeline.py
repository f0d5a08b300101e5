"""CObLPipeline: photo -> occlusion-ordered RGBA object layers + background, by guided diffusion sampling.

Reads top to bottom as the algorithm: encode the photo, draw noise for every slot, loop over the scheduler's
timesteps (denoise all slots at once, optionally reorder the object slots, apply composite guidance, step),
decode. ``decompose`` wraps it for one photo of any size: letterbox to the model's square, sample, map back,
and keep the slots that hold an object.

The one on-disk model format (what ``cobl train`` writes to ``RUN/final/``, what ``cobl infer``/``cobl eval``
and the demo read) is this pipeline's diffusers layout, written by ``save_pretrained(dir)`` and read by
``from_pretrained(dir)``::

    DIR/model_index.json   components + config: codec_kind, codec_factor, cobl_config (the CObLConfig the
                           model was built from, as a dict), training (global_step, ema, skipped, ...)
    DIR/unet/              CObLModel (config.json + diffusion_pytorch_model.safetensors)
    DIR/scheduler/         the sampler (DDIM, with the training noise schedule and prediction type)
    DIR/vae/               AutoencoderKL, only for the ``vae`` codec

The codec object is rebuilt from ``codec_kind``/``codec_factor`` (and the ``vae`` component). ``CObLModel``
lives outside diffusers, so its module must be imported before loading: this module imports it, which is
what diffusers' loader looks up (``sys.modules['cobl.network']``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from cobl.codec import SpaceToDepthCodec, VAECodec, encode_condition
from cobl.configs import CObLConfig
from cobl.network import CObLModel
from cobl.parametrization import output_from_x0, per_sample, predict_x0
from cobl.slots import occupied_slots, permute_slots
from core.errors import UserError
from core.layers import ALPHA_CHANNEL, EMPTY_RGB, visible_weights
from core.policy import MIN_OBJECT_AREA
from infer.guidance import best_slot_order, denoiser_gradient, guide_x0, normalised_step
from infer.io import Letterbox
from infer.settings import (
    DEFAULT_SAMPLING_STEPS,
    MIN_VISIBLE,
    SAMPLERS,
    GuidanceConfig,
    ModelTraits,
    adapt_preset,
    check_guidance,
    guidance_options,
)

_GUIDANCE = GuidanceConfig()  # the defaults of __call__'s guidance arguments


@dataclass
class CObLPipelineOutput(BaseOutput):
    """Decoded stack at the model's resolution, values in [0, 1]."""

    layers: torch.Tensor  # [B, K, 4, R, R], slot 0 frontmost, every slot (empty ones included)
    background: torch.Tensor  # [B, 3, R, R]
    latents: torch.Tensor  # [B, S, C, h, w], the final clean latents
    pruned: list | None = None  # (step, sample, slot) of every object slot reset to empty while sampling


class CObLPipeline(DiffusionPipeline):
    """Concurrent object layers from one photo (see the module docstring)."""

    _optional_components = ["vae"]
    model_cpu_offload_seq = "unet->vae"

    def __init__(
        self,
        unet: CObLModel,
        scheduler: Any,
        vae: Any = None,
        codec_kind: str = "space_to_depth",
        codec_factor: int = 4,
        cobl_config: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.register_to_config(
            codec_kind=codec_kind, codec_factor=codec_factor, cobl_config=cobl_config, training=training
        )
        if codec_kind == "space_to_depth":
            self.codec = SpaceToDepthCodec(codec_factor)
        elif codec_kind == "vae":
            if vae is None:
                raise ValueError("codec_kind 'vae' needs the vae component")
            self.codec = VAECodec(vae)
        else:
            raise ValueError(f"codec_kind must be 'space_to_depth' or 'vae', got {codec_kind!r}")

    @classmethod
    def from_parts(
        cls,
        unet: CObLModel,
        scheduler: Any,
        codec: Any,
        config: CObLConfig | None = None,
        **training: Any,
    ) -> CObLPipeline:
        """Assemble from a model, a scheduler and a ``cobl.codec`` codec (as the trainer holds them).

        A training scheduler (DDPM) is swapped for DDIM with the same noise schedule, the default sampler.
        ``config`` (the model's ``CObLConfig``) and ``training`` (step, EMA, ...) are saved with the model."""
        if isinstance(scheduler, DDPMScheduler):
            scheduler = DDIMScheduler.from_config(scheduler.config)
        extras = dict(
            cobl_config=None if config is None else json.loads(config.to_json()),
            training=training or None,
        )
        if isinstance(codec, VAECodec):
            return cls(unet=unet, scheduler=scheduler, vae=codec.vae, codec_kind="vae", **extras)
        return cls(
            unet=unet,
            scheduler=scheduler,
            vae=None,
            codec_kind=codec.kind,
            codec_factor=codec.factor,
            **extras,
        )

    @property
    def cobl_config(self) -> CObLConfig | None:
        """The config the model was built from (None for a pipeline assembled without one)."""
        saved = self.config.cobl_config
        return None if saved is None else CObLConfig.from_dict(saved)

    @property
    def num_objects(self) -> int:
        return self.unet.config.num_slots - 1

    @property
    def uses_depth(self) -> bool:
        """Whether the model takes a depth map with the photo (``cobl.depth``)."""
        return self.unet.uses_depth

    @property
    def resolution(self) -> int:
        """Square input size: the resolution the model was trained at (its saved config). A pipeline
        assembled without a config (``from_parts(..., config=None)``: tests, benches) has none recorded and
        takes its UNet's sample size times the codec's downsampling."""
        saved = self.config.cobl_config
        if saved is not None:
            return int(saved["resolution"])
        sample = self.unet.unet.config.sample_size
        sample = sample[0] if isinstance(sample, (list, tuple)) else sample
        return int(sample) * int(self.codec.downsample)

    def use_sampler(self, name: str) -> None:
        """Swap the scheduler for DDIM or DPM-Solver++ with the same noise schedule and prediction type."""
        if name not in SAMPLERS:
            raise UserError(f"expected one of {SAMPLERS}, got {name!r}", option="sampler")
        kind = DDIMScheduler if name == "ddim" else DPMSolverMultistepScheduler
        if not isinstance(self.scheduler, kind):
            self.scheduler = kind.from_config(self.scheduler.config)

    def _decode(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.codec.decode_layers(latents)

    def _predict(
        self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor, alpha_bar: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's output for latents ``x`` at ``t`` and the clean prediction it implies."""
        out = self.unet(self.scheduler.scale_model_input(x, t), t.expand(x.shape[0]), condition)
        return out, predict_x0(out, x, alpha_bar, self.scheduler.config.prediction_type)

    def _permute_history(self, perm: torch.Tensor) -> None:
        """Multistep schedulers keep earlier predictions; they must follow a slot reordering."""
        outputs = getattr(self.scheduler, "model_outputs", None)
        if outputs is not None:
            self.scheduler.model_outputs = [None if o is None else permute_slots(o, perm) for o in outputs]
        last = getattr(self.scheduler, "last_sample", None)
        if isinstance(last, torch.Tensor) and last.dim() == 5:
            self.scheduler.last_sample = permute_slots(last, perm)

    @property
    def traits(self) -> ModelTraits:
        """What this model can take at sampling time: whether its base UNet is a frozen prior (a prior pull
        means something) and whether it was trained with condition dropout (classifier-free guidance does)."""
        training = self.config.training or {}
        return ModelTraits(
            frozen_base=not bool(self.unet.config.train_base),
            unconditional=float(training.get("cond_dropout") or 0.0) > 0,
        )

    def _empty_latent(self, like: torch.Tensor) -> torch.Tensor:
        """The latent ``[C, h, w]`` of the empty object layer exactly as the training data holds it: RGB
        ``EMPTY_RGB``, alpha 0 (``like``: latents ``[B, S, C, h, w]`` of the run, for size and dtype)."""
        h, w = (n * int(self.codec.downsample) for n in like.shape[-2:])
        empty = torch.zeros(1, 1, 4, h, w, device=like.device, dtype=like.dtype)
        grey = torch.tensor(EMPTY_RGB, device=like.device, dtype=like.dtype)
        empty[:, :, :ALPHA_CHANNEL] = grey[:, None, None]
        return self.codec.encode_layers(empty, empty[:, 0, :ALPHA_CHANNEL])[0, 0]

    def _prune(
        self, latents: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor, cfg: GuidanceConfig, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
        """Reset every object slot that holds no object (area <= ``cfg.min_area``) or is fully hidden behind
        the slots in front of it to the empty layer: its clean prediction becomes the empty latent and its
        noisy latent is re-formed from it with the slot's current noise estimate. Returns (latents, x0,
        [(step, sample, slot) reset])."""
        layers, _ = self._decode(x0)
        empty = self._empty_latent(x0)
        a = per_sample(alpha_bar.sqrt(), latents)[:, 0]
        sigma = per_sample((1 - alpha_bar).sqrt(), latents)[:, 0]
        latents, x0, removed = latents.clone(), x0.clone(), []
        for b in range(layers.shape[0]):
            kept = set(discover_objects(layers[b].float(), cfg.min_area, MIN_VISIBLE))
            for k in range(layers.shape[1]):
                if k in kept:
                    continue
                noise = (latents[b, k] - a[b] * x0[b, k]) / sigma[b].clamp_min(1e-8)
                x0[b, k] = empty
                latents[b, k] = a[b] * empty + sigma[b] * noise
                removed.append((step, b, k))
        return latents, x0, removed

    def guidance_settings(
        self,
        preset: str | None = None,
        min_area: float = MIN_OBJECT_AREA,
        unguided: bool = False,
        **options: Any,
    ) -> tuple[GuidanceConfig, int | None, list[str]]:
        """(guidance config, step count or None, notes) for ``preset`` (adapted to this model, notes saying
        what it turned off) or for the explicit ``options`` (``GuidanceConfig`` fields, checked against the
        model: a one-line UserError for what it cannot honour). ``unguided`` turns composite guidance, the
        order search, the pruning and the prior pull off (the baseline row)."""
        if preset is not None:
            chosen, notes = adapt_preset(preset, self.traits, min_area)
            self.use_sampler(chosen["sampler"])
            cfg, steps = chosen["guidance"], chosen["num_inference_steps"]
        else:
            cfg, steps, notes = GuidanceConfig(min_area=min_area, **options), None, []
            check_guidance(cfg, self.traits)
        return (cfg.unguided() if unguided else cfg), steps, notes

    def _denoise(
        self, latents: torch.Tensor, t: torch.Tensor, t_batch: torch.Tensor, condition: torch.Tensor,
        cfg: GuidanceConfig, conditional: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoiser's output for ``latents``, with classifier-free guidance over the condition when
        ``cfg.condition_scale != 1`` (the unconditional branch gets the zeroed condition, as training's
        dropout); ``conditional`` reuses an already computed conditional output."""
        scaled = self.scheduler.scale_model_input(latents, t)
        out = self.unet(scaled, t_batch, condition) if conditional is None else conditional
        if cfg.condition_scale != 1.0:
            uncond = self.unet(scaled, t_batch, torch.zeros_like(condition))
            out = uncond + cfg.condition_scale * (out - uncond)
        return out

    def _reorder_then_prune(self, state: dict[str, Any], photo, valid, cfg: GuidanceConfig, i: int) -> bool:
        """Every ``reorder_every`` steps the best order of the object slots (the latents, the prediction, the
        gradient and the scheduler history move together), then, judged in that order, every
        ``prune_every`` steps the reset of empty or fully hidden slots. Returns whether x0 changed."""
        changed = False
        if cfg.reorder_every and i % cfg.reorder_every == 0:
            layers, background = self._decode(state["x0"])
            perm = best_slot_order(layers, background, photo, valid, cfg.min_area)
            if not torch.equal(perm, torch.arange(perm.shape[1], device=perm.device).expand_as(perm)):
                for key in ("latents", "x0", "out", "grad"):
                    if state[key] is not None:
                        state[key] = permute_slots(state[key], perm)
                self._permute_history(perm)
        if cfg.prune_every and i % cfg.prune_every == 0:
            state["latents"], state["x0"], removed = self._prune(
                state["latents"], state["x0"], state["alpha_bar"], cfg, i
            )
            state["pruned"] += removed
            changed = bool(removed)
        return changed

    @torch.no_grad()
    def __call__(
        self,
        photo: torch.Tensor,
        depth: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float = _GUIDANCE.scale,
        generator: torch.Generator | None = None,
        *,
        guidance_schedule: str = _GUIDANCE.schedule,
        guidance_mode: str = _GUIDANCE.mode,
        guidance_start: float = _GUIDANCE.start,
        denoiser_gradient_until: float = _GUIDANCE.denoiser_until,
        reorder_every: int = _GUIDANCE.reorder_every,
        prune_every: int = _GUIDANCE.prune_every,
        prior_weight: float = _GUIDANCE.prior_weight,
        guidance_step: str = _GUIDANCE.step,
        condition_scale: float = _GUIDANCE.condition_scale,
        min_area: float = MIN_OBJECT_AREA,
        preset: str | None = None,
        valid_mask: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> CObLPipelineOutput | tuple:
        """Sample the layers of ``photo [B, 3, R, R]`` (values in [0, 1], R = ``self.resolution``).

        ``depth [B, 1, R, R]`` (relative disparity, ``cobl.depth``) is required by a depth-conditioned model
        (``self.uses_depth``) and ignored otherwise.

        ``guidance_scale`` 0 turns composite guidance off; ``valid_mask [B or 1, 1, R, R]`` excludes padding
        from the guidance loss; ``guidance_start`` skips guidance (and its cost) in the first part of the
        sampling; ``reorder_every`` N > 0 searches the object slot order every N steps; ``prune_every`` N > 0
        then resets empty or fully hidden object slots to the empty layer; ``prior_weight`` w pulls the clean
        prediction of each slot's image latent a fraction w toward the plain UNet's (only for a frozen base
        UNet); ``guidance_step`` sets the length of a guidance step (``infer.settings.STEP_KINDS``);
        ``condition_scale`` s != 1 is classifier-free guidance over the condition (only for a model trained
        with condition dropout); ``min_area`` is the small-object rule of the order search and the pruning.
        ``preset`` (``infer.settings.PRESETS``, e.g. "authors") replaces all of these but ``min_area``, the
        step count and the sampler (``guidance_settings``); ``guidance_scale=0`` under a preset gives the
        unguided baseline: no composite guidance, order search, pruning or prior pull.
        """
        options = guidance_options(
            guidance_scale=guidance_scale, guidance_schedule=guidance_schedule, guidance_mode=guidance_mode,
            guidance_start=guidance_start, denoiser_gradient_until=denoiser_gradient_until,
            reorder_every=reorder_every, prune_every=prune_every, prior_weight=prior_weight,
            guidance_step=guidance_step, condition_scale=condition_scale,
        )  # fmt: skip
        cfg, preset_steps, self.notes = self.guidance_settings(
            preset, min_area, unguided=guidance_scale == 0, **({} if preset is not None else options)
        )
        num_inference_steps = preset_steps or num_inference_steps or DEFAULT_SAMPLING_STEPS
        device, dtype = self.unet.device, self.unet.dtype
        photo = photo.to(device, dtype)
        if photo.dim() != 4 or photo.shape[1] != 3:
            raise ValueError(f"photo: expected [B, 3, H, W], got {list(photo.shape)}")
        valid = None if valid_mask is None else valid_mask.to(device, dtype)
        b = photo.shape[0]
        if self.uses_depth and depth is None:
            raise UserError("this model is depth-conditioned: give a depth map of the photo", option="depth")
        depth = depth.to(device, dtype) if self.uses_depth else None
        condition = encode_condition(self.codec, photo, depth)
        latent_size = [n // self.codec.downsample for n in photo.shape[-2:]]
        shape = (b, self.unet.config.num_slots, self.unet.config.slot_channels, *latent_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma
        prediction_type = self.scheduler.config.prediction_type
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        alphas_cumprod = self.scheduler.alphas_cumprod.to(device)
        n = len(timesteps)
        c0 = self.unet.unet.config.in_channels
        pruned: list[tuple[int, int, int]] = []
        self.guidance_steps: list[int] = []  # normalised guidance steps taken at each sampler step

        for i, t in enumerate(self.progress_bar(timesteps)):
            alpha_bar = alphas_cumprod[t].expand(b)
            noise_level = (1 - alpha_bar).sqrt()
            t_batch = t.expand(b)
            size = cfg.scale * cfg.weight(i, n)
            grad = error = known = None
            taken = 0
            if cfg.uses_denoiser_gradient(i, n):
                predict = functools.partial(self._predict, t=t, condition=condition, alpha_bar=alpha_bar)
                out, grad, known = denoiser_gradient(predict, self.unet, self.codec, latents, photo, valid)
                error = known.error
                out = self._denoise(latents, t, t_batch, condition, cfg, conditional=out)
            else:
                out = self._denoise(latents, t, t_batch, condition, cfg)
            x0 = predict_x0(out, latents, alpha_bar, prediction_type)
            changed = False

            if cfg.prior_weight > 0:  # the weak pull toward the plain Stable Diffusion prior
                scaled = self.scheduler.scale_model_input(latents, t)
                prior = self.unet.prior(scaled, t_batch)
                prior_x0 = predict_x0(prior, latents[:, :, :c0], alpha_bar, prediction_type)
                image = x0[:, :, :c0]
                x0 = torch.cat([image + cfg.prior_weight * (prior_x0 - image), x0[:, :, c0:]], 2)
                changed = True

            if 0 < i < n - 1:  # the order search first, then the pruning judged in the chosen order
                state = dict(latents=latents, x0=x0, out=out, grad=grad, alpha_bar=alpha_bar, pruned=pruned)
                changed = self._reorder_then_prune(state, photo, valid, cfg, i) or changed
                latents, x0, out, grad = state["latents"], state["x0"], state["out"], state["grad"]

            if cfg.uses_decoder_gradient(i, n):
                x0 = guide_x0(x0, self.codec, photo, size, valid, known, cfg.step, noise_level)
                changed, taken = True, taken + 1
            if changed:
                out = output_from_x0(x0, latents, alpha_bar, prediction_type)
            latents = self.scheduler.step(out, t, latents, return_dict=False)[0]
            if grad is not None and i < n - 1:
                # Not after the last step: its output is the clean result, and dL/dx_t is not a descent
                # direction for it (x0 guidance, modes "both" and "latents", covers the last step).
                latents = latents + normalised_step(grad, error, size, cfg.step, noise_level)
                taken += 1
            self.guidance_steps.append(taken)

        layers, background = self._decode(latents)
        layers, background = layers.clamp(0, 1), background.clamp(0, 1)
        if not return_dict:
            return layers, background, latents
        return CObLPipelineOutput(layers=layers, background=background, latents=latents, pruned=pruned)


# ---------------------------------------------------------------------------------------------- one photo


@dataclass
class Decomposition:
    """The objects found in one photo, at the photo's own size, front to back."""

    layers: torch.Tensor  # [N, 4, H, W] kept object layers
    background: torch.Tensor  # [3, H, W]
    slots: list[int]  # the model slot each kept layer came from
    areas: list[float]  # alpha mass / pixel count
    visible_fractions: list[float]  # visible alpha mass / alpha mass, within the kept stack
    slot_layers: torch.Tensor | None = None  # [K, 4, H, W] every slot as sampled (``decompose``)


def discover_objects(
    layers: torch.Tensor, min_area: float = MIN_OBJECT_AREA, min_visible: float = MIN_VISIBLE
) -> list[int]:
    """Slots of ``layers [K, 4, H, W]`` that hold an object: occupied (``cobl.slots.occupied_slots``,
    alpha mass above ``min_area`` of the pixels) and a visible fraction (behind the slots in front of it)
    above ``min_visible``."""
    alphas = layers[:, ALPHA_CHANNEL].double()
    mass = alphas.flatten(1).sum(1)
    visible = visible_weights(alphas).flatten(1).sum(1)
    occupied = occupied_slots(alphas, min_area)
    fraction = torch.where(mass > 0, visible / mass.clamp_min(1e-12), torch.zeros_like(mass))
    return [k for k in range(len(layers)) if occupied[k] and fraction[k] > min_visible]


def kept_stack(
    layers: torch.Tensor,
    background: torch.Tensor,
    min_area: float = MIN_OBJECT_AREA,
    min_visible: float = MIN_VISIBLE,
) -> Decomposition:
    """Drop the empty / fully hidden slots of one decoded stack ``[K, 4, H, W]``."""
    slots = discover_objects(layers, min_area, min_visible)
    kept = layers[slots]
    alphas = kept[:, ALPHA_CHANNEL].double()
    mass = alphas.flatten(1).sum(1)
    visible = visible_weights(alphas).flatten(1).sum(1) if len(slots) else mass
    return Decomposition(
        layers=kept,
        background=background,
        slots=slots,
        areas=[float(m) / alphas[0].numel() for m in mass] if len(slots) else [],
        visible_fractions=[float(v / m) if m > 0 else 0.0 for v, m in zip(visible, mass, strict=True)],
    )


def decompose(
    pipe: CObLPipeline,
    photo: torch.Tensor,
    depth: torch.Tensor | None = None,
    *,
    num_inference_steps: int = DEFAULT_SAMPLING_STEPS,
    guidance_scale: float = _GUIDANCE.scale,
    seed: int = 0,
    min_area: float = MIN_OBJECT_AREA,
    min_visible: float = MIN_VISIBLE,
    **kwargs: Any,
) -> Decomposition:
    """Layers of one photo ``[3, H, W]`` (and its relative depth ``[1, H, W]`` for a depth-conditioned
    model) of any size: letterbox to the model, sample, map back, keep the objects (``min_area`` is also the
    rule of the sampler's order search and pruning)."""
    box = Letterbox(int(photo.shape[-2]), int(photo.shape[-1]), pipe.resolution)
    generator = torch.Generator().manual_seed(seed)
    out = pipe(
        box.fit(photo)[None],
        None if depth is None else box.fit(depth)[None],
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        valid_mask=box.valid_mask()[None],
        min_area=min_area,
        **kwargs,
    )
    layers = box.unfit(out.layers[0].float().cpu())
    background = box.unfit(out.background[0].float().cpu())
    return dataclasses.replace(kept_stack(layers, background, min_area, min_visible), slot_layers=layers)


# ---------------------------------------------------------------------------------------------- loading

MODEL_INDEX = "model_index.json"


def model_folder(path: str | Path) -> Path:
    """The saved pipeline ``path`` names: ``path`` itself, or ``path/final`` for a ``cobl train`` run folder;
    a one-line UserError (``option="model"``) when neither holds a ``model_index.json``."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such model folder", option="model")
    for folder in (path, path / "final"):
        if (folder / MODEL_INDEX).is_file():
            return folder
    raise UserError(
        f"{path}: not a CObL model (expected a saved pipeline with {MODEL_INDEX}, or a run folder with "
        f"final/{MODEL_INDEX})",
        option="model",
    )


def load_pipeline(path: str | Path, device: str | torch.device | None = None) -> CObLPipeline:
    """``CObLPipeline.from_pretrained`` of ``model_folder(path)``, in eval mode without progress bars;
    a one-line UserError when it does not load."""
    folder = model_folder(path)
    try:
        pipe = CObLPipeline.from_pretrained(folder)
    except (OSError, ValueError) as err:
        # what diffusers raises for a damaged folder: OSError (a missing or truncated file, JSON that does not
        # parse), ValueError (weights of another shape, an unknown component or codec)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{folder}: cannot load the model ({first[:200]})", option="model") from None
    if not isinstance(pipe, CObLPipeline):
        raise UserError(f"{folder}: a {type(pipe).__name__}, not a CObL model", option="model")
    pipe.unet.eval()
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe.to(device)
    return pipe


def export_info(path: str | Path) -> dict[str, Any]:
    """What a saved pipeline records about its model and training, without loading any weights:
    ``{"num_objects", "resolution", "codec", "config", **training}`` (``training``: global_step, ema, ...)."""
    folder = model_folder(path)
    index = json.loads((folder / MODEL_INDEX).read_text())
    config = index.get("cobl_config") or {}
    return {
        "num_objects": config.get("num_objects"),
        "resolution": config.get("resolution"),
        "codec": index.get("codec_kind"),
        "config": config,
        **(index.get("training") or {}),
    }
