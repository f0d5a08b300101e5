"""What a training run starts from, checked before any work: its option values, its run folder, the options
of the run it resumes, and that its data yields a usable sample.

``RUN/run_options.json`` records the options (after the config's recipe filled the unset ones) and the model
config a run was started with. ``cobl train --resume`` compares the new options with it and refuses, on one
line naming each changed option, to continue a run under options it was not trained with (a changed ``--lr``
would otherwise train 0 steps and re-export the old weights; a changed ``--resolution`` would go on silently
at the new size). Options that do not change what is learned (``OUTCOME_FREE``) may change; ``--max-steps``
may grow (the run continues to the new last step, and says so). A fresh run refuses a folder that holds
another run unless ``--overwrite`` is given, and then deletes only what a run writes (``RUN_ENTRIES``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from core.atomic import write_text_atomic
from core.errors import UserError
from core.outdir import check_output_dir
from core.policy import MAX_RESOLUTION
from train.options import LR_SCHEDULERS, TrainOptions

RUN_OPTIONS = "run_options.json"
# What a run writes into its folder (and --overwrite deletes): nothing else there is touched.
RUN_ENTRIES = ("checkpoints", "logs", "final", "cache", "metrics.jsonl", "val_curve.jsonl", RUN_OPTIONS)
# Written into the run folder by a launcher before the run starts (Ray Train's storage): not the run's own.
LAUNCHER_ENTRIES = ("ray",)
# Options that change how a run is watched, saved or fed, not what it learns: a resume may change them.
OUTCOME_FREE = frozenset({
    "out", "resume", "overwrite", "progress", "num_workers", "log_every", "checkpoint_every",
    "checkpoints_total_limit", "validate_every", "num_validation", "validation_steps", "val_data",
    "val_every", "val_scenes", "val_sampling_steps", "val_min_area", "gradient_checkpointing", "attention",
    "cache_dir", "threads",
})  # fmt: skip
INF = math.inf
# name -> (lowest, highest) accepted value, both inclusive; checked after the recipe filled the unset ones
BOUNDS: dict[str, tuple[float, float]] = {
    "num_objects": (1, 99), "resolution": (8, MAX_RESOLUTION), "max_steps": (1, 10**9),
    "batch_size": (1, 1_000_000), "lr": (1e-12, 10.0), "min_lr": (0.0, 10.0), "lr_warmup_steps": (0, 10**9),
    "weight_decay": (0.0, INF), "max_grad_norm": (0.0, INF), "gradient_accumulation_steps": (1, 1_000_000),
    "ema_decay": (0.0, 1.0), "snr_gamma": (0.0, INF), "object_weight": (0.0, INF),
    "hidden_weight": (0.0, INF),
    "cond_dropout": (0.0, 1.0), "checkpoint_every": (1, 10**9), "checkpoints_total_limit": (1, 10**6),
    "validate_every": (0, 10**9), "num_validation": (1, 10**4), "validation_steps": (1, 10**4),
    "val_every": (0, 10**9), "val_scenes": (1, 10**8), "val_sampling_steps": (1, 10**4),
    "val_min_area": (0.0, 1.0), "log_every": (1, 10**9), "num_workers": (0, 256), "threads": (0, 4096),
    "shuffle_buffer": (1, 10**7), "seed": (0, 2**32 - 1),
}  # fmt: skip
CHOICES = {
    "lr_scheduler": LR_SCHEDULERS,
    "mixed_precision": ("no", "fp16", "bf16"),
    "attention": ("sdpa", "eager"),
}


def check_values(opts: TrainOptions) -> None:
    """One-line UserError naming the first option whose value is out of range (NaN included)."""
    for name, (low, high) in BOUNDS.items():
        value = getattr(opts, name)
        if value is None:
            continue
        if not (isinstance(value, int | float) and low <= value <= high):  # NaN fails both comparisons
            raise UserError(f"expected a value {_span(low, high)}, got {value}", option=name)
    for name, allowed in CHOICES.items():
        value = getattr(opts, name)
        if value is not None and value not in allowed:
            raise UserError(f"expected one of {', '.join(allowed)}, got {value!r}", option=name)
    if opts.min_lr is not None and opts.lr is not None and opts.min_lr > opts.lr:
        raise UserError(f"{opts.min_lr} is above --lr {opts.lr}", option="min_lr")


def _span(low: float, high: float) -> str:
    def shown(x: float) -> str:  # integers in full (1000000000, not 1e+09), others compactly
        return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"

    return f">= {shown(low)}" if high == INF else f"in [{shown(low)}, {shown(high)}]"


def _record(opts: TrainOptions, config: Any) -> dict[str, Any]:
    options = {k: v for k, v in dataclasses.asdict(opts).items() if k not in OUTCOME_FREE}
    return {"options": options, "model_config": json.loads(config.to_json())}


def changed_options(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``--name old -> new`` for each option (and model-config field) that differs between two records."""
    out = []
    before, after = saved.get("options", {}), now["options"]
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            out.append(f"--{key.replace('_', '-')} {before.get(key)} -> {after.get(key)}")
    covered = {"num_objects", "resolution", "prediction_type"}  # flags of their own, listed above
    cfg_before, cfg_after = saved.get("model_config", {}), now["model_config"]
    for key in sorted(set(cfg_before) | set(cfg_after)):
        if key not in covered and cfg_before.get(key) != cfg_after.get(key):
            out.append(f"model config {key}: {cfg_before.get(key)} -> {cfg_after.get(key)}")
    return out


def _has_checkpoint(out: Path) -> bool:
    return any((out / "checkpoints").glob("step-*/trainer_state.json")) or (out / "final").is_dir()


def check_run_folder(opts: TrainOptions, config: Any) -> tuple[dict[str, Any], str | None]:
    """Check the run folder against the run about to start; returns the record to save (``save_record``)
    and, when the folder's earlier run is to be cleared first, why (``clear_run``).

    Fresh run: the folder must be new or empty, or hold a run (then ``--overwrite`` deletes its entries; a
    run that has not saved a checkpoint yet and had the same options simply starts again). Resume: the
    saved options must equal the new ones, but for those listed in ``OUTCOME_FREE`` and a larger
    ``--max-steps``."""
    out = Path(opts.out)
    record = _record(opts, config)
    saved_path = out / RUN_OPTIONS
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
    if opts.resume:
        if saved is None:
            print(f"cobl train: {out} has no {RUN_OPTIONS} (an older run): its options are not compared")
            return record, None
        changes = changed_options(saved, record)
        grown = [c for c in changes if c.startswith("--max-steps ")]
        if grown and saved["options"]["max_steps"] <= opts.max_steps:
            changes.remove(grown[0])
            print(f"cobl train: {grown[0][2:]}: the run continues to step {opts.max_steps} "
                  "(the learning-rate schedule now spans the new length)")
        if changes:
            raise UserError(
                f"{out} was trained with other options ({'; '.join(changes)}); resume with the same "
                "ones, or give a new --out",
                option="resume",
            )
        return record, None
    state = check_output_dir(
        out, "train", overwrite=opts.overwrite, resumable=True, own_record=RUN_OPTIONS,
        ignore=LAUNCHER_ENTRIES,
    )
    if state == "resume":  # the folder holds a run and this is not a resume
        restart = saved is not None and not _has_checkpoint(out) and not changed_options(saved, record)
        if opts.overwrite or restart:
            return record, "--overwrite" if opts.overwrite else "it had saved no checkpoint yet"
        else:
            raise UserError(
                f"{out}: holds a training run; pass --resume to continue it, or --overwrite to start over "
                "(its checkpoints, logs and final/ are deleted)",
                option="out",
            )
    return record, None


def clear_run(out: str | os.PathLike, why: str) -> None:
    """Delete what an earlier run wrote into ``out`` (``RUN_ENTRIES``; nothing else there)."""
    for name in RUN_ENTRIES:
        path = Path(out) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    print(f"cobl train: {out}: starting the run again from step 0 ({why})")


def save_record(out: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write the run's options record (the main process, once the run is about to start)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out) / RUN_OPTIONS, json.dumps(record, indent=2, sort_keys=True) + "\n")


def check_data(urls: list[str], config: Any) -> None:
    """One-line UserError (the cause and the option to change) unless one pass over the shards yields a
    usable sample: otherwise the endless training stream would wait for one forever."""
    from cobl.data import make_dataset

    dataset = make_dataset(
        urls, config.num_objects, config.resolution, shuffle=False, epochs=1, ids=False,
        depth=config.depth_condition, depth_source=config.depth_source,
    )
    with warnings.catch_warnings():  # the skips' causes are in the one line below; training warns itself
        warnings.simplefilter("ignore")
        usable = next(iter(dataset), None)
    if usable is None:
        raise dataset._ledger.stop(f"a full pass over {len(urls)} shard(s) gave no usable sample")
    _note_resize(urls, config.resolution)


def _note_resize(urls: list[str], resolution: int) -> None:
    """Say once when the data's images are not at the model's resolution (each sample is then resized)."""
    import tarfile

    from PIL import Image

    from core import schema

    if not os.path.isfile(urls[0]):
        return  # a remote shard: not opened twice for a notice
    with tarfile.open(urls[0]) as tar:
        member = next((m for m in tar if m.name.endswith("." + schema.RGB)), None)
        if member is None:
            return
        with Image.open(tar.extractfile(member)) as image:
            size = image.size
    if size != (resolution, resolution):
        print(
            f"cobl train: notice: the data's images are {size[0]}x{size[1]} px and the model's "
            f"{resolution}x{resolution}: every sample is resized (render with --resolution {resolution}, "
            "or train with the data's)"
        )


def prepare_run(opts: TrainOptions, config: Any, urls: list[str], main: bool) -> None:
    """Everything a run checks before it does any work, in order; the main process then saves its record."""
    check_values(opts)
    if not main:  # the other ranks only check values: the main one owns the folder
        return
    record, clear = check_run_folder(opts, config)
    check_data(urls, config)
    if clear is not None:
        clear_run(opts.out, clear)
    save_record(opts.out, record)
