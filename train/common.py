"""What the three trainers (CObL ``train.loop``, the prior ``train.prior``, the VAE ``train.vae``) share:
checkpoints, the kill hook of the resume tests, the LR schedule and the EMA. (How the CPU threads wait is
the roof's: ``app/threads.py``.)

Checkpoints are accelerate states (model, optimizer, LR schedule, registered objects such as the EMA, RNG)
in ``DIR/checkpoints/step-NNNNNNNN/`` plus ``trainer_state.json`` (``global_step`` and whatever the trainer
adds);
they are written to ``step-N.tmp`` and renamed when every rank is done, so a killed save never looks
complete, and only the newest ``limit`` are kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"


# --------------------------------------------------------------------------- the kill hook
class SimulatedKill(RuntimeError):
    """Raised by a trainer given ``stop_after_steps=N``: a crash right after step N, for resume tests."""


def stop_if_asked(step: int, stop_after_steps: int | None) -> None:
    if stop_after_steps is not None and step >= stop_after_steps:
        raise SimulatedKill(f"stopped after step {step}")


# --------------------------------------------------------------------------- LR schedule
def cosine_to_floor(optimizer, warmup_steps: int, total_steps: int, lr: float, min_lr: float):
    """Linear warm-up, then a cosine decay from ``lr`` to ``min_lr`` (diffusers' "cosine" ends at 0)."""
    floor = min_lr / lr if lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def lr_schedule(
    name: str, optimizer, warmup_steps: int, total_steps: int, lr: float, min_lr: float = 0.0
):
    """``cosine``: ``cosine_to_floor``; any other name: diffusers' ``get_scheduler`` of that name."""
    if name == "cosine":
        return cosine_to_floor(optimizer, warmup_steps, total_steps, lr, min_lr)
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        name, optimizer=optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )


# --------------------------------------------------------------------------- EMA
def make_ema(params, decay: float, device):
    """diffusers' ``EMAModel`` of ``params`` on ``device`` (register it for checkpointing)."""
    from diffusers.training_utils import EMAModel

    ema = EMAModel(params, decay=decay)
    ema.to(device)
    return ema


@contextlib.contextmanager
def ema_weights(model, ema) -> Iterator[None]:
    """Within this block ``model`` holds its EMA weights (when it keeps an EMA, else nothing changes)."""
    if ema is not None:
        ema.store(model.trainable_parameters())
        ema.copy_to(model.trainable_parameters())
    try:
        yield
    finally:
        if ema is not None:
            ema.restore(model.trainable_parameters())


# --------------------------------------------------------------------------- checkpoints
def find_checkpoint(out: Path, resume: str) -> Path:
    """``resume`` = "latest" (the newest complete checkpoint under ``out``) or a checkpoint directory."""
    if resume != "latest":
        path = Path(resume)
        if not (path / TRAINER_STATE).is_file():
            raise UserError(f"{resume}: not a checkpoint directory (no {TRAINER_STATE})", option="resume")
        return path
    found = latest_checkpoint(out)
    if found is None:
        raise UserError(f"latest: no checkpoint under {out / CHECKPOINT_DIR}", option="resume")
    return found


def latest_checkpoint(out: Path) -> Path | None:
    done = sorted(p for p in (Path(out) / CHECKPOINT_DIR).glob("step-*") if (p / TRAINER_STATE).is_file())
    return done[-1] if done else None


def load_checkpoint(accelerator, ckpt: Path) -> dict[str, Any]:
    """Restore the accelerate state of ``ckpt``; returns its trainer state (``global_step`` and the rest)."""
    accelerator.load_state(str(ckpt))
    return json.loads((ckpt / TRAINER_STATE).read_text())


def save_checkpoint(
    accelerator, out: Path, step: int, state: dict[str, Any], limit: int,
    rank_files: dict[str, str] | None = None,
) -> Path:
    """The accelerate state + ``trainer_state.json`` (``{"global_step": step, **state}``) + this rank's
    ``rank_files`` (name -> text), atomically; keeps the newest ``limit`` checkpoints."""
    root = Path(out) / CHECKPOINT_DIR
    final, tmp = root / f"step-{step:08d}", root / f"step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    for name, text in (rank_files or {}).items():
        (tmp / name).write_text(text)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps({"global_step": step, **state}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        done = sorted(p for p in root.glob("step-*") if not p.name.endswith(".tmp"))
        for old in done[: max(0, len(done) - limit)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
