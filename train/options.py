"""Trainer options: one dataclass per training command (``cobl train``'s flags: app.train_flags).

Fields left at None take the model config's training recipe (``cobl.configs.recipe_for``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from core.policy import MIN_OBJECT_AREA

# Learning-rate schedules ``cobl train --lr-scheduler`` accepts: ours (cosine to --min-lr) and diffusers'
# ``get_scheduler`` names that need no further arguments.
LR_SCHEDULERS = ("cosine", "linear", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


@dataclass
class TrainOptions:
    data: str
    out: str
    config: str = "tiny"
    pretrained: str | None = None
    vae: str | None = None
    prior: str | None = None
    num_objects: int | None = None
    resolution: int | None = None
    prediction_type: str | None = None
    max_steps: int = 1000
    # None: the config's recipe (cobl.configs.RECIPES: sd = the authors', tiny = ours)
    batch_size: int | None = None
    lr: float | None = None
    min_lr: float | None = None
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str | None = None
    gradient_checkpointing: bool | None = None
    attention: str | None = None
    ema: bool = False
    ema_decay: float = 0.999
    snr_gamma: float | None = None
    object_weight: float = 0.0
    slot_matching: bool = False
    hidden_weight: float = 0.0
    cond_dropout: float | None = None
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 3
    resume: str | None = None
    validate_every: int = 500
    num_validation: int = 2
    validation_steps: int = 10
    val_data: str | None = None
    val_every: int = 0
    val_scenes: int = 16
    val_sampling_steps: int = 20
    val_min_area: float = MIN_OBJECT_AREA  # the small-object rule of cobl eval
    log_every: int = 10
    num_workers: int = 2
    threads: int = 0  # torch's intra-op threads in this process (0 = torch's default, one per core)
    shuffle_buffer: int = 256
    cache: str = "auto"  # cobl.cache.TIERS: prepare every scene once (memory / disk) or stream (off)
    cache_dir: str | None = None  # the disk tier's folder (default RUN/cache)
    seed: int = 0
    progress: bool = True
    overwrite: bool = False  # a fresh run may replace the run its --out holds (train.run_options)


@dataclass(frozen=True)
class PriorOptions:
    data: str  # shards of scenes disjoint from every split the CObL model is trained or judged on
    out: str
    config: str  # the CObL model config whose base UNet this is the prior for
    max_steps: int = 6000
    batch_size: int = 32
    lr: float = 1e-3
    object_weight: float = 10.0  # 1 + W under the layer's alpha, as the CObL loss weighs objects
    val_fraction: float = 0.05  # held-out layers for the report's denoising loss
    checkpoint_every: int = 500
    seed: int = 0
    progress: bool = True

    def fingerprint(self) -> dict[str, Any]:
        """What the weights depend on (not where they go, nor how often they are saved; ``train.prior`` adds
        the config's base-UNet fields)."""
        options = asdict(self)
        for name in ("out", "config", "checkpoint_every", "progress"):  # the config's content is kept
            options.pop(name)
        return options
