"""Sampling settings and their defaults, without torch: the pipeline, ``cobl infer``/``cobl eval`` and their
``--help`` all take the defaults from here (``app.cli_infer`` imports this at parser build time)."""

from __future__ import annotations

from dataclasses import dataclass

from core.policy import MIN_OBJECT_AREA

SAMPLERS = ("ddim", "dpm")
DEFAULT_SAMPLING_STEPS = 50
# A kept object must also be visible: more than this fraction of its alpha mass (fully hidden slots drop).
MIN_VISIBLE = 0.01
SCHEDULES = ("constant", "linear", "late")
MODES = ("x0", "latents", "both")


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


# Named sampler presets: ``CObLPipeline.__call__(preset=...)`` and ``cobl infer/eval --preset``.
# "authors": the authors' sampler as their released code describes it (docs/architecture.md): 20 DDIM
# steps, one normalised guidance step per step (through the denoiser; on the clean prediction at the last
# step) at 1.75 with a constant weight, an order search and the removal of empty or hidden slots (2 % area)
# every 5 steps, and a weak pull toward the plain Stable Diffusion prior. Our own defaults (GuidanceConfig(),
# 50 steps) differ where the demo measured better (docs/architecture.md).
PRESETS: dict[str, dict[str, object]] = {
    "authors": dict(
        num_inference_steps=20,
        sampler="ddim",
        guidance=GuidanceConfig(
            scale=1.75,
            schedule="constant",
            mode="latents",
            reorder_every=5,
            prune_every=5,
            prior_weight=0.05,
            min_area=MIN_OBJECT_AREA,
        ),
    ),
}
