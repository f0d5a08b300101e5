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
from core.layers import ALPHA_CHANNEL, visible_weights
from core.policy import MIN_OBJECT_AREA
from infer.guidance import best_slot_order, denoiser_gradient, guide_x0, normalised_step
from infer.io import Letterbox
from infer.settings import DEFAULT_SAMPLING_STEPS, MIN_VISIBLE, PRESETS, SAMPLERS, GuidanceConfig

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

    def _empty_latent(self, like: torch.Tensor) -> torch.Tensor:
        """The latent ``[C, h, w]`` of an empty object layer (alpha 0 everywhere)."""
        r = self.resolution
        empty = torch.zeros(1, 1, 4, r, r, device=like.device, dtype=like.dtype)
        return self.codec.encode_layers(empty, empty[:, 0, :3])[0, 0]

    def _prune(
        self, latents: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor, cfg: GuidanceConfig, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
        """Reset every object slot that holds no object (area <= ``cfg.min_area``) or is fully hidden to the
        empty layer: its clean prediction becomes the empty latent and its noisy latent is re-formed from it
        with the slot's current noise estimate. Returns (latents, x0, [(step, sample, slot) reset])."""
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
        resets empty or fully hidden object slots to the empty layer every N steps; ``prior_weight`` w pulls
        the clean prediction of each slot's image latent a fraction w toward the plain UNet's.
        ``preset`` (``infer.settings.PRESETS``, e.g. "authors") replaces all of these, the step count and the
        sampler, except that ``guidance_scale=0`` still turns guidance off.
        """
        if preset is not None:
            if preset not in PRESETS:
                raise UserError(f"expected one of {sorted(PRESETS)}, got {preset!r}", option="preset")
            chosen = PRESETS[preset]
            cfg = chosen["guidance"]
            if guidance_scale == 0:  # an explicit 0 still turns guidance off (the unguided baseline)
                cfg = dataclasses.replace(cfg, scale=0.0)
            num_inference_steps = chosen["num_inference_steps"]
            self.use_sampler(chosen["sampler"])
        else:
            cfg = GuidanceConfig(
                scale=guidance_scale,
                schedule=guidance_schedule,
                mode=guidance_mode,
                start=guidance_start,
                denoiser_until=denoiser_gradient_until,
                reorder_every=reorder_every,
                prune_every=prune_every,
                prior_weight=prior_weight,
            )
        num_inference_steps = num_inference_steps or DEFAULT_SAMPLING_STEPS
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
            t_batch = t.expand(b)
            size = cfg.scale * cfg.weight(i, n)
            grad = error = known = None
            taken = 0
            if cfg.uses_denoiser_gradient(i, n):
                predict = functools.partial(self._predict, t=t, condition=condition, alpha_bar=alpha_bar)
                out, grad, known = denoiser_gradient(predict, self.unet, self.codec, latents, photo, valid)
                error = known.error
            else:
                out = self.unet(self.scheduler.scale_model_input(latents, t), t_batch, condition)
            x0 = predict_x0(out, latents, alpha_bar, prediction_type)
            changed = False

            if cfg.prior_weight > 0:  # the weak pull toward the plain Stable Diffusion prior
                scaled = self.scheduler.scale_model_input(latents, t)
                prior = self.unet.prior(scaled, t_batch)
                prior_x0 = predict_x0(prior, latents[:, :, :c0], alpha_bar, prediction_type)
                image = x0[:, :, :c0]
                x0 = torch.cat([image + cfg.prior_weight * (prior_x0 - image), x0[:, :, c0:]], 2)
                changed = True

            periodic = 0 < i < n - 1
            if cfg.prune_every and periodic and i % cfg.prune_every == 0:
                latents, x0, removed = self._prune(latents, x0, alpha_bar, cfg, i)
                pruned += removed
                changed = changed or bool(removed)

            if cfg.reorder_every and periodic and i % cfg.reorder_every == 0:
                layers, background = self._decode(x0)
                perm = best_slot_order(layers, background, photo, valid, cfg.min_area)
                if not torch.equal(perm, torch.arange(perm.shape[1], device=perm.device).expand_as(perm)):
                    latents, x0 = permute_slots(latents, perm), permute_slots(x0, perm)
                    out = permute_slots(out, perm)
                    grad = None if grad is None else permute_slots(grad, perm)
                    self._permute_history(perm)

            if cfg.uses_decoder_gradient(i, n):
                x0 = guide_x0(x0, self.codec, photo, size, valid, known)
                changed, taken = True, taken + 1
            if changed:
                out = output_from_x0(x0, latents, alpha_bar, prediction_type)
            latents = self.scheduler.step(out, t, latents, return_dict=False)[0]
            if grad is not None and i < n - 1:
                # Not after the last step: its output is the clean result, and dL/dx_t is not a descent
                # direction for it (x0 guidance, modes "both" and "latents", covers the last step).
                latents = latents + normalised_step(grad, error, size)
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
    model) of any size: letterbox to the model, sample, map back, keep the objects."""
    box = Letterbox(int(photo.shape[-2]), int(photo.shape[-1]), pipe.resolution)
    generator = torch.Generator().manual_seed(seed)
    out = pipe(
        box.fit(photo)[None],
        None if depth is None else box.fit(depth)[None],
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        valid_mask=box.valid_mask()[None],
        **kwargs,
    )
    layers = box.unfit(out.layers[0].float().cpu())
    background = box.unfit(out.background[0].float().cpu())
    return kept_stack(layers, background, min_area, min_visible)


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
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
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
