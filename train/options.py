"""Trainer options: one dataclass holding every knob of a training run (its flags: app.train_flags).

Fields left at None take the model config's training recipe (``cobl.configs.recipe_for``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainOptions:
    data: str
    out: str
    config: str = "tiny"
    pretrained: str | None = None
    vae: str | None = None
    num_objects: int | None = None
    resolution: int | None = None
    prediction_type: str | None = None
    max_steps: int = 1000
    batch_size: int = 8
    # None: the config's recipe (cobl.configs.RECIPES: sd = the authors', tiny = ours)
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
    log_every: int = 10
    num_workers: int = 2
    shuffle_buffer: int = 256
    seed: int = 0
    progress: bool = True
