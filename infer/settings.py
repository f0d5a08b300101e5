"""Sampling settings and their defaults, without torch: the pipeline, ``cobl infer``/``cobl eval`` and their
``--help`` all take the defaults from here (``app.cli_infer`` imports this at parser build time)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from core.errors import UserError
from core.policy import MIN_OBJECT_AREA

SAMPLERS = ("ddim", "dpm")
DEFAULT_SAMPLING_STEPS = 50
# A kept object must also be visible: more than this fraction of its alpha mass (fully hidden slots drop).
MIN_VISIBLE = 0.01
SCHEDULES = ("constant", "linear", "late")
MODES = ("x0", "latents", "both")
# How long a normalised guidance step is (``infer.guidance.normalised_step``): "residual" (ours) scale x the
# RMS of the recomposition residual per element; "noise" scale x the noise level sqrt(1 - alpha_bar_t) per
# element; "unit_norm" (the authors' released code) scale x a unit L2 norm over the whole sample.
STEP_KINDS = ("residual", "noise", "unit_norm")


@dataclass(frozen=True)
class GuidanceConfig:
    """Guidance settings; ``scale == 0`` turns guidance off (no gradient is computed at all)."""

    scale: float = 1.0
    schedule: str = "linear"  # weight over progress p in [0, 1]: constant 1, linear start..1, late p**2
    start_weight: float = 0.25  # weight at the first step for "linear"
    mode: str = "both"
    start: float = 0.0  # no guidance (and no gradient) before this fraction of the sampling progress
    denoiser_until: float = 0.25  # mode "both": the denoiser gradient only up to this fraction of progress
    reorder_every: int = 0  # search the object slot order every N steps (0 = never)
    prune_every: int = (
        0  # every N steps reset empty / fully hidden object slots to the empty layer (0 = never)
    )
    prior_weight: float = 0.0  # pull the clean prediction this far toward the plain (frozen) UNet's (0 = off)
    min_area: float = MIN_OBJECT_AREA  # alpha-mass fraction above which a slot is occupied (reorder, prune)
    step: str = "residual"  # the length of a guidance step (STEP_KINDS)
    # classifier-free guidance over the photo (+ depth) condition: eps_uncond + s (eps_cond - eps_uncond),
    # the unconditional branch fed the zeroed condition training dropped (1 = off; needs cond_dropout > 0)
    condition_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {self.scale}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"guidance schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.mode not in MODES:
            raise ValueError(f"guidance mode must be one of {MODES}, got {self.mode!r}")
        if not 0 <= self.start <= 1:
            raise ValueError(f"guidance start must be a fraction in [0, 1], got {self.start}")
        if self.reorder_every < 0 or self.prune_every < 0:
            raise ValueError(
                f"reorder_every/prune_every must be >= 0, got {self.reorder_every}/{self.prune_every}"
            )
        if not 0 <= self.prior_weight <= 1:
            raise ValueError(f"prior_weight must be a fraction in [0, 1], got {self.prior_weight}")
        if self.step not in STEP_KINDS:
            raise ValueError(f"guidance step must be one of {STEP_KINDS}, got {self.step!r}")
        if not self.condition_scale >= 0:
            raise ValueError(f"condition_scale must be >= 0, got {self.condition_scale}")

    def unguided(self) -> GuidanceConfig:
        """The same sampler without composite guidance and everything that looks at the photo through the
        decoded layers (order search, pruning) or pulls toward the prior: the baseline the guidance is
        measured against. Classifier-free guidance stays: it is part of the denoiser's prediction."""
        return dataclasses.replace(self, scale=0.0, reorder_every=0, prune_every=0, prior_weight=0.0)

    @property
    def enabled(self) -> bool:
        return self.scale > 0

    def active(self, step: int, num_steps: int) -> bool:
        """Whether sampler step ``step`` of ``num_steps`` is guided (a gradient is computed)."""
        return self.enabled and step / max(1, num_steps - 1) >= self.start

    def uses_denoiser_gradient(self, step: int, num_steps: int) -> bool:
        """Whether step ``step`` differentiates through the denoiser (modes "latents" and "both"). Mode
        "latents" does not at the last step: its output is the result, guided on the clean prediction."""
        if not self.active(step, num_steps) or self.mode == "x0":
            return False
        if self.mode == "latents":
            return step < num_steps - 1
        return step / max(1, num_steps - 1) <= self.denoiser_until

    def uses_decoder_gradient(self, step: int, num_steps: int) -> bool:
        """Whether step ``step`` takes the decoder-only step on the clean prediction (modes x0 and both, and
        mode latents at the last step): so modes x0 and latents take exactly one guidance step per step."""
        if not self.active(step, num_steps):
            return False
        return self.mode in ("x0", "both") or (self.mode == "latents" and step == num_steps - 1)

    def weight(self, step: int, num_steps: int) -> float:
        """Schedule weight at sampler step ``step`` of ``num_steps`` (progress 0 at the first, 1 the last)."""
        progress = step / max(1, num_steps - 1)
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "linear":
            return self.start_weight + (1 - self.start_weight) * progress
        return progress**2


# ``CObLPipeline.__call__`` keyword -> ``GuidanceConfig`` field: the one map from the sampler's arguments (and
# so ``cobl infer|eval``'s flags) to the guidance settings.
CALL_OPTIONS = {
    "guidance_scale": "scale",
    "guidance_schedule": "schedule",
    "guidance_mode": "mode",
    "guidance_start": "start",
    "denoiser_gradient_until": "denoiser_until",
    "reorder_every": "reorder_every",
    "prune_every": "prune_every",
    "prior_weight": "prior_weight",
    "guidance_step": "step",
    "condition_scale": "condition_scale",
}


def guidance_options(**call_kwargs: object) -> dict[str, object]:
    """The ``GuidanceConfig`` fields among ``CObLPipeline.__call__`` keywords (others are left out)."""
    return {CALL_OPTIONS[k]: v for k, v in call_kwargs.items() if k in CALL_OPTIONS}


# Named sampler presets: ``CObLPipeline.__call__(preset=...)`` and ``cobl infer/eval --preset``.
# "authors": the authors' sampler as their released code (github aneeldamaraju/cobl, ``cobl_ddim.py``)
# runs it (docs/architecture.md, "The sampler"): 20 DDIM steps; classifier-free guidance over the photo and
# depth at 1.75 (their ``cfg_scale``: this is what "1.75" is, not a guidance step); one normalised
# composite-guidance step per step through the denoiser (their ``guidance_weight`` 1.0 over the gradient's
# L2 norm); every 5 steps an order search over the object slots, then the removal of empty or hidden slots
# judged in the new order; and a weak pull toward the plain Stable Diffusion prior. ``adapt_preset`` turns
# the parts a given model cannot use off and says so. Our own defaults (GuidanceConfig(), 50 steps) differ
# where the demo measured better (docs/architecture.md).
PRESETS: dict[str, dict[str, object]] = {
    "authors": dict(
        num_inference_steps=20,
        sampler="ddim",
        guidance=GuidanceConfig(
            scale=1.0,
            schedule="constant",
            mode="latents",
            step="unit_norm",
            reorder_every=5,
            prune_every=5,
            prior_weight=0.05,
            condition_scale=1.75,
            min_area=MIN_OBJECT_AREA,
        ),
    ),
}


@dataclass(frozen=True)
class ModelTraits:
    """What a trained model can take at sampling time (``CObLPipeline.traits``)."""

    frozen_base: bool  # the base UNet is a frozen prior (SD, or a `cobl train-prior` prior kept frozen)
    unconditional: bool  # trained with condition dropout, so its zeroed-condition branch means something


def adapt_preset(name: str, traits: ModelTraits, min_area: float = MIN_OBJECT_AREA) -> tuple[dict, list[str]]:
    """The preset ``name`` for a model with ``traits`` and the small-object rule ``min_area``:
    (settings, notes), each note a sentence saying what was turned off and why."""
    if name not in PRESETS:
        raise UserError(f"expected one of {sorted(PRESETS)}, got {name!r}", option="preset")
    chosen = dict(PRESETS[name])
    cfg: GuidanceConfig = dataclasses.replace(chosen["guidance"], min_area=min_area)
    notes = []
    if cfg.prior_weight > 0 and not traits.frozen_base:
        cfg = dataclasses.replace(cfg, prior_weight=0.0)
        notes.append(f"preset {name}: no prior pull, this model's base UNet was trained (not a frozen prior)")
    if cfg.condition_scale != 1.0 and not traits.unconditional:
        cfg = dataclasses.replace(cfg, condition_scale=1.0)
        notes.append(
            f"preset {name}: no classifier-free guidance, this model was trained without condition dropout"
        )
    chosen["guidance"] = cfg
    return chosen, notes


def check_guidance(cfg: GuidanceConfig, traits: ModelTraits) -> None:
    """One-line errors for settings the model cannot honour (a prior pull on a trained base UNet, classifier-
    free guidance on a model that never saw a dropped condition)."""
    if cfg.prior_weight > 0 and not traits.frozen_base:
        raise UserError(
            f"{cfg.prior_weight}: this model's base UNet was trained with it (train_base), so it is no prior "
            "to pull toward; use 0",
            option="prior_weight",
        )
    if cfg.condition_scale != 1.0 and not traits.unconditional:
        raise UserError(
            f"{cfg.condition_scale}: this model was trained without condition dropout (cond_dropout 0), "
            "so it has no unconditional prediction; use 1",
            option="condition_scale",
        )
