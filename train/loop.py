"""The CObL training loop (accelerate): DDP, mixed precision, accumulation, checkpoints, EMA, resume, logs.

Run directory layout::

    RUN/checkpoints/step-00000500/   accelerate state (model, optimizer, LR scheduler, EMA, RNG) +
                                     trainer_state.json (step, samples seen) + data_state-rank{r}.json
                                     (stream positions of the streaming path)
    RUN/cache/                       prepared examples of the disk tier (``cobl.cache``; --cache-dir)
    RUN/logs/                        TensorBoard scalars, validation images (photo | layers | recomposition)
    RUN/metrics.jsonl                one JSON line per logged step
    RUN/final/                       the exported model: ``CObLPipeline.save_pretrained`` (infer.pipeline),
                                     loaded with ``CObLPipeline.from_pretrained(RUN/final)``

Data (``--cache``): every scene prepared once (decoded, encoded by the codec, its alpha maps derived;
``cobl.cache``) and drawn in a seeded order per epoch — in memory when small, on disk when large — or, with
``--cache off``, the streaming image path that decodes and encodes every batch as it comes. Resume
(``--resume latest``) restores all of the checkpoint; the data continues where it stopped (the cached order is
a function of the seed and the samples seen; the streams continue at their recorded positions); per-sample
noise is a function of (seed, step, key) (``train.loss``), so a resumed run follows the same loss trajectory
as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from train.common import CHECKPOINT_DIR, SimulatedKill, stop_if_asked
from train.options import TrainOptions
from train.validate import CURVE_METRICS

__all__ = ["CHECKPOINT_DIR", "CURVE_METRICS", "VAL_CURVE", "SimulatedKill", "TrainingRun", "export_pipeline",
           "prepare_run", "train"]

VAL_CURVE = "val_curve.jsonl"  # a line per learning-curve point; a resumed run may repeat a step (last wins)


def resolve_config(opts: TrainOptions):
    from cobl.configs import get_config

    config = get_config(opts.config)
    return config.replace(
        num_objects=opts.num_objects, resolution=opts.resolution, prediction_type=opts.prediction_type
    )


def resolve_recipe(opts: TrainOptions, config) -> TrainOptions:
    """``opts`` with every field left at None filled in from the config's training recipe."""
    from cobl.configs import recipe_for

    recipe = recipe_for(config)
    filled = {
        f.name: getattr(recipe, f.name)
        for f in dataclasses.fields(recipe)
        if getattr(opts, f.name, None) is None
    }
    return dataclasses.replace(opts, **filled)


@dataclass
class TrainingRun:
    """What one training process holds."""

    opts: TrainOptions
    config: Any
    out: Path
    accelerator: Any
    model: Any  # prepared (possibly DDP-wrapped)
    codec: Any
    noise_scheduler: Any
    optimizer: Any
    lr_scheduler: Any
    ema: Any
    params: list

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)


def train(opts: TrainOptions, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train per ``opts``; returns ``{"losses": {step: loss}, "final": path, "global_step": n, "pipeline"}``.

    ``pipeline``: on the main process, the ``CObLPipeline`` around the in-process model that was exported to
    ``final`` (None on the other ranks; with ``ema`` its model holds the raw weights again afterwards, the
    export the EMA ones)."""
    run, urls = prepare_run(opts)
    global_step, samples_seen, data_state = _resume(run)
    stream = _open_stream(run, urls, samples_seen, data_state)
    losses, global_step = _loop(run, urls, stream, global_step, stop_after_steps)
    return _export(run, global_step, losses, stream.skipped())


def prepare_run(opts: TrainOptions) -> tuple[TrainingRun, list[str]]:
    """The model, codec, optimizer and accelerator of ``opts`` as ``train`` builds them, and the shard list
    (``bench/bench_loop.py`` times the model step on them)."""
    opts, config, urls = _checked(opts)
    return _setup(opts, config), urls


def _checked(opts: TrainOptions) -> tuple[TrainOptions, Any, list[str]]:
    """Options with the recipe filled in, the config, the shard list; one-line errors before anything runs."""
    from cobl.cache import TIERS
    from cobl.data import expand_urls
    from cobl.factory import check_pretrained

    config = resolve_config(opts)
    opts = resolve_recipe(opts, config)
    urls = expand_urls(opts.data)  # UserError naming the pattern when nothing matches
    if opts.val_data:
        try:
            expand_urls(opts.val_data)  # the same, before an hour of training
        except UserError as err:
            raise UserError(err.detail, option="val_data") from None
    for name in ("max_steps", "batch_size"):
        if getattr(opts, name) < 1:
            raise UserError(f"must be >= 1, got {getattr(opts, name)}", option=name)
    if opts.mixed_precision not in ("no", "fp16", "bf16"):
        raise UserError(f"expected no, fp16 or bf16, got {opts.mixed_precision!r}", option="mixed_precision")
    if opts.cache not in TIERS:
        raise UserError(f"expected one of {', '.join(TIERS)}, got {opts.cache!r}", option="cache")
    check_pretrained(config, opts.pretrained)  # before the Accelerator: a bad path fails on one line
    from train.run_options import prepare_run as check_run  # values, run folder, resumed options, data

    check_run(opts, config, urls, main=int(os.environ.get("RANK", "0")) == 0)  # before any work
    return opts, config, urls


def _setup(opts: TrainOptions, config) -> TrainingRun:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    from cobl.factory import build
    from train.common import lr_schedule, make_ema

    out = Path(opts.out)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=opts.mixed_precision,
        gradient_accumulation_steps=opts.gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    world = accelerator.num_processes
    set_seed(opts.seed)  # identical initial weights on every rank
    model, codec, noise_scheduler = build(config, pretrained=opts.pretrained, vae=opts.vae, prior=opts.prior)
    model.set_attention(opts.attention)
    if opts.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    codec.to(accelerator.device)
    params = model.trainable_parameters()  # the frozen UNet is not in the optimizer
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    # accelerate steps the LR scheduler once per process per update: count in process steps
    warmup, total = opts.lr_warmup_steps * world, opts.max_steps * world
    lr_scheduler = lr_schedule(opts.lr_scheduler, optimizer, warmup, total, opts.lr, opts.min_lr)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    ema = None
    if opts.ema:
        trained = accelerator.unwrap_model(model).trainable_parameters()
        ema = make_ema(trained, opts.ema_decay, accelerator.device)
        accelerator.register_for_checkpointing(ema)
    return TrainingRun(opts, config, out, accelerator, model, codec, noise_scheduler, optimizer, lr_scheduler,
                       ema, params)


def _resume(run: TrainingRun) -> tuple[int, int | None, dict[str, Any] | None]:
    """(step, samples seen or None when unknown, this rank's data state) of the checkpoint to resume."""
    from train.common import find_checkpoint, load_checkpoint

    if not run.opts.resume:
        return 0, 0, None
    ckpt = find_checkpoint(run.out, run.opts.resume)
    state = load_checkpoint(run.accelerator, ckpt)
    data_file = ckpt / f"data_state-rank{run.accelerator.process_index}.json"
    data_state = json.loads(data_file.read_text()) if data_file.is_file() else None
    run.accelerator.print(f"resumed from {ckpt} at step {state['global_step']}")
    return state["global_step"], state.get("samples_seen"), data_state


# --------------------------------------------------------------------------- data
class _CachedStream:
    """Batches of prepared examples (``cobl.cache``), in the seeded order of ``cached_batches``."""

    def __init__(self, store, run: TrainingRun, samples_seen: int):
        from cobl.cache import cached_batches

        acc = run.accelerator
        self.store, self.world = store, acc.num_processes
        self.batches = cached_batches(
            store, run.opts.batch_size, run.opts.seed, acc.process_index, self.world, offset=samples_seen
        )

    def next(self):
        return next(self.batches)

    def state(self) -> dict[str, Any]:
        return {"source": "cache", "world": self.world}

    def skipped(self) -> dict[str, int]:
        return dict(self.store.skipped)

    def close(self) -> None:
        pass


class _ImageStream:
    """The streaming image path: shards decoded by DataLoader workers, positions recorded for resume."""

    def __init__(self, urls: list[str], run: TrainingRun, data_state: dict[str, Any] | None):
        from cobl.data import batches, make_dataset, make_loader

        opts, config = run.opts, run.config
        self.world, self.num_workers = run.accelerator.num_processes, opts.num_workers
        skip = self._skip(data_state)
        dataset = make_dataset(
            urls, config.num_objects, config.resolution, shuffle=True, seed=opts.seed,
            shuffle_buffer=opts.shuffle_buffer, skip=skip,
            ids=False,  # the loss never reads the instance map: one PNG fewer per sample
            depth=config.depth_condition, depth_source=config.depth_source,
        )
        self.loader_iter = iter(make_loader(dataset, num_workers=opts.num_workers))
        self.batches = batches(self.loader_iter, opts.batch_size)
        self.positions = {int(k): v - 1 for k, v in skip.items()}
        self.skipped_by_worker: dict[int, dict[str, int]] = {}

    def _skip(self, data_state: dict[str, Any] | None) -> dict[int, int]:
        if data_state is None:
            return {}
        same = data_state.get("world") == self.world and data_state.get("num_workers") == self.num_workers
        if same and data_state.get("source", "stream") == "stream":
            return {int(k): v + 1 for k, v in data_state["positions"].items()}
        warnings.warn("data source, process or worker count changed since the checkpoint: data restarts",
                      stacklevel=3)
        return {}

    def next(self):
        batch = next(self.batches, None)
        if batch is not None:
            for w, pos, sk in zip(batch.workers, batch.positions, batch.skipped, strict=True):
                self.positions[w] = max(self.positions.get(w, -1), pos)
                self.skipped_by_worker[w] = sk
        return batch

    def state(self) -> dict[str, Any]:
        return {"source": "stream", "world": self.world, "num_workers": self.num_workers,
                "positions": self.positions}

    def skipped(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for counts in self.skipped_by_worker.values():
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
        return total

    def close(self) -> None:
        del self.batches, self.loader_iter  # shuts the (endless) DataLoader workers down


def _open_stream(run: TrainingRun, urls: list[str], samples_seen: int | None, data_state):
    """The cached stream (filled or reused now) or, with ``--cache off``, the streaming image path."""
    from cobl.cache import CacheSpec, choose_tier, disk_store, memory_store

    opts, config, acc = run.opts, run.config, run.accelerator
    spec = CacheSpec(config.num_objects, config.resolution, config.depth_condition, config.depth_source)
    tier = choose_tier(opts.cache, urls, spec, run.codec)
    if tier == "off":
        return _ImageStream(urls, run, data_state)
    common = dict(num_workers=opts.num_workers, encode_batch=opts.batch_size,
                  progress=opts.progress and acc.is_main_process)
    if tier == "memory":
        store = memory_store(urls, spec, run.codec, acc.device, **common)
    else:
        cache_dir = opts.cache_dir or str(run.out / "cache")
        store = disk_store(urls, spec, run.codec, acc.device, cache_dir, acc.process_index,
                           acc.num_processes, acc.wait_for_everyone, **common)
    if not len(store):
        raise UserError(f"{opts.data!r}: the shards yielded no usable sample", option="data")
    acc.print(f"cache ({tier}): {len(store)} scenes, {store.filled} shards encoded, {store.reused} reused")
    if samples_seen is None:  # a checkpoint of the streaming path: the order restarts
        warnings.warn("the checkpoint was written by the streaming path: the cached order restarts",
                      stacklevel=2)
        samples_seen = 0
    return _CachedStream(store, run, samples_seen)


# --------------------------------------------------------------------------- the loop
def _step(run: TrainingRun, stream, global_step: int) -> float:
    """One optimizer step (``gradient_accumulation_steps`` micro-batches); the loss averaged over ranks."""
    from train.loss import diffusion_loss

    opts, acc = run.opts, run.accelerator
    micro_losses = []
    for _ in range(opts.gradient_accumulation_steps):
        batch = stream.next()
        if batch is None:
            raise UserError(f"{opts.data!r}: the shards yielded no usable sample", option="data")
        batch = batch.to(acc.device)
        with acc.accumulate(run.model), acc.autocast():
            loss = diffusion_loss(
                run.model, run.codec, run.noise_scheduler, batch, global_step, opts.seed, opts.snr_gamma,
                opts.cond_dropout, opts.object_weight, opts.slot_matching, opts.hidden_weight,
            )
            acc.backward(loss)
            if acc.sync_gradients and opts.max_grad_norm > 0:
                acc.clip_grad_norm_(run.params, opts.max_grad_norm)
            run.optimizer.step()
            run.unwrapped.clamp_gates_()  # gates stay in [0, 1]
            run.lr_scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        micro_losses.append(loss.detach())
    if run.ema is not None:
        run.ema.step(run.unwrapped.trainable_parameters())
    return acc.gather(torch.stack(micro_losses).mean()[None]).mean().item()


class _Logs:
    """metrics.jsonl, TensorBoard and the progress bar of the main process."""

    def __init__(self, run: TrainingRun, global_step: int):
        from tqdm.auto import tqdm

        main = run.accelerator.is_main_process
        self.run, self.main = run, main
        self.writer = _writer(run.out) if main else None
        self.metrics = (run.out / "metrics.jsonl").open("a") if main else None
        self.bar = tqdm(total=run.opts.max_steps, initial=global_step, desc="train", unit="step",
                        dynamic_ncols=True, disable=not (run.opts.progress and main))
        self.start = self.last = time.perf_counter()
        self.last_cpu = time.process_time()
        self.start_step = self.last_step = global_step

    def step(self, step: int, loss: float, skipped: dict[str, int]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}")
        if not self.main or (step % self.run.opts.log_every and step != 1):
            return
        now, cpu = time.perf_counter(), time.process_time()
        steps = max(1, step - self.last_step)
        record = {
            "step": step,
            "loss": loss,
            "lr": self.run.lr_scheduler.get_last_lr()[0],
            "steps_per_s": (step - self.start_step) / max(now - self.start, 1e-9),
            "step_s": (now - self.last) / steps,  # since the last logged step
            "cpu_s": (cpu - self.last_cpu) / steps,  # this process's CPU time (all its threads), likewise
            **{f"skipped_{k}": v for k, v in skipped.items()},
        }
        self.last, self.last_cpu, self.last_step = now, cpu, step
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        for k, v in record.items():
            if k != "step":
                self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            self.writer.close()


def _loop(
    run: TrainingRun, urls: list[str], stream, global_step: int, stop_after_steps: int | None
) -> tuple[dict[int, float], int]:
    """Steps from ``global_step`` to ``max_steps`` with logs, checkpoints and validation; returns (losses,
    the last step)."""
    from train.validate import validation_samples

    opts, acc = run.opts, run.accelerator
    pipe = export_pipeline(run.unwrapped, run.codec, run.noise_scheduler, run.config) if acc.is_main_process \
        else None
    val_samples = validation_samples(urls, pipe, opts.num_validation if opts.validate_every else 0) \
        if pipe is not None else None
    logs = _Logs(run, global_step)
    losses: dict[int, float] = {}
    run.model.train()
    try:
        while global_step < opts.max_steps:
            loss = _step(run, stream, global_step)
            global_step += 1
            losses[global_step] = loss
            logs.step(global_step, loss, stream.skipped())
            if global_step % opts.checkpoint_every == 0 or global_step == opts.max_steps:
                _save(run, global_step, stream)
            if pipe is not None:
                _validate(run, pipe, val_samples, logs.writer, global_step)
            stop_if_asked(global_step, stop_after_steps)
    finally:
        logs.close()
        stream.close()
    return losses, global_step


def _save(run: TrainingRun, step: int, stream) -> None:
    from train.common import save_checkpoint

    opts, acc = run.opts, run.accelerator
    samples_seen = step * opts.gradient_accumulation_steps * opts.batch_size * acc.num_processes
    save_checkpoint(
        acc, run.out, step, {"world": acc.num_processes, "samples_seen": samples_seen},
        opts.checkpoints_total_limit,
        rank_files={f"data_state-rank{acc.process_index}.json": json.dumps(stream.state())},
    )


def _validate(run: TrainingRun, pipe, val_samples, writer, step: int) -> None:
    """Validation images every ``validate_every`` steps; a val-curve point every ``val_every`` steps and at
    the last."""
    from train.validate import log_validation, val_curve_point

    opts = run.opts
    if opts.validate_every and step % opts.validate_every == 0:
        log_validation(pipe, val_samples, writer, step, opts.validation_steps, opts.seed, run.ema)
    curve_due = opts.val_every and (step % opts.val_every == 0 or step == opts.max_steps)
    if opts.val_data and curve_due:
        point = val_curve_point(pipe, opts, run.ema)
        with (run.out / VAL_CURVE).open("a") as f:
            f.write(json.dumps({"step": step, **point}) + "\n")
        for k, v in point.items():
            if isinstance(v, float):
                writer.add_scalar(f"val/{k}", v, step)


def _export(
    run: TrainingRun, global_step: int, losses: dict[int, float], skipped: dict[str, int]
) -> dict[str, Any]:
    """Write ``RUN/final`` (the EMA weights when kept) on the main process."""
    from core.atomic import atomic_path
    from train.common import ema_weights

    acc = run.accelerator
    if any(skipped.values()):
        acc.print(f"skipped samples: {skipped}")
    final = run.out / "final"
    pipeline = None
    acc.wait_for_everyone()
    if acc.is_main_process:
        with ema_weights(run.unwrapped, run.ema), atomic_path(final) as tmp:
            pipeline = export_pipeline(
                run.unwrapped, run.codec, run.noise_scheduler, run.config, global_step=global_step,
                ema=bool(run.ema), skipped=skipped,
                cond_dropout=run.opts.cond_dropout,  # whether classifier-free guidance means anything
            )
            pipeline.save_pretrained(tmp, safe_serialization=True)
        acc.print(f"exported {final}")
    acc.wait_for_everyone()
    acc.end_training()
    return {"losses": losses, "final": str(final), "global_step": global_step, "pipeline": pipeline}


def export_pipeline(model, codec, noise_scheduler, config, **training: Any):
    """The trained model as the ``CObLPipeline`` that ``RUN/final`` holds (DDIM sampler, same noise schedule);
    ``training`` (step, EMA, skipped counts) is saved in its config."""
    from infer.pipeline import CObLPipeline

    pipe = CObLPipeline.from_parts(model, noise_scheduler, codec, config, **training)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _writer(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "logs"))
