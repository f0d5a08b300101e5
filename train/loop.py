"""The CObL training loop (accelerate): DDP, mixed precision, accumulation, checkpoints, EMA, resume, logs.

Run directory layout::

    RUN/checkpoints/step-00000500/   accelerate state (model, optimizer, LR scheduler, EMA, RNG) +
                                     trainer_state.json (step) + data_state-rank{r}.json (stream positions)
    RUN/logs/                        TensorBoard scalars, validation images (photo | layers | recomposition)
    RUN/metrics.jsonl                one JSON line per logged step
    RUN/final/                       the exported model: ``CObLPipeline.save_pretrained`` (infer.pipeline),
                                     loaded with ``CObLPipeline.from_pretrained(RUN/final)``

Resume (``--resume latest``) restores all of the checkpoint, and the data streams continue at the recorded
positions; per-sample noise is a function of (seed, step, key) (``train.loss``), so a resumed run follows the
same loss trajectory as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from train.options import TrainOptions

CHECKPOINT_DIR = "checkpoints"
VAL_CURVE = "val_curve.jsonl"  # a line per learning-curve point; a resumed run may repeat a step (last wins)
# The learning curve's metrics (``infer.metrics`` summary keys of the guided model).
CURVE_METRICS = ("amodal_miou", "amodal_miou_occluded", "amodal_miou_strict", "count_accuracy",
                 "order_accuracy", "hidden_recall")


class SimulatedKill(RuntimeError):
    """Raised by ``train(..., stop_after_steps=N)``: a crash right after step N, for resume tests."""


def resolve_config(opts: TrainOptions):
    from cobl.configs import get_config

    config = get_config(opts.config)
    return config.replace(
        num_objects=opts.num_objects, resolution=opts.resolution, prediction_type=opts.prediction_type
    )


def resolve_recipe(opts: TrainOptions, config) -> TrainOptions:
    """``opts`` with every field left at None filled in from the config's training recipe."""
    import dataclasses

    from cobl.configs import recipe_for

    recipe = recipe_for(config)
    filled = {
        f.name: getattr(recipe, f.name)
        for f in dataclasses.fields(recipe)
        if getattr(opts, f.name, None) is None
    }
    return dataclasses.replace(opts, **filled)


def cosine_to_floor(optimizer, warmup_steps: int, total_steps: int, lr: float, min_lr: float):
    """Linear warm-up, then a cosine decay from ``lr`` to ``min_lr`` (diffusers' "cosine" ends at 0)."""
    import math

    floor = min_lr / lr if lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def find_checkpoint(out: Path, resume: str) -> Path:
    if resume != "latest":
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise UserError(f"{resume}: not a checkpoint directory (no trainer_state.json)", option="resume")
        return path
    done = sorted(p for p in (out / CHECKPOINT_DIR).glob("step-*") if (p / "trainer_state.json").is_file())
    if not done:
        raise UserError(f"latest: no checkpoint under {out / CHECKPOINT_DIR}", option="resume")
    return done[-1]


def train(opts: TrainOptions, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train per ``opts``; returns ``{"losses": {step: loss}, "final": path, "global_step": n, "pipeline"}``.

    ``pipeline``: on the main process, the ``CObLPipeline`` around the in-process model that was exported to
    ``final`` (None on the other ranks; with ``ema`` its model holds the raw weights again afterwards, the
    export the EMA ones)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from cobl.data import batches, expand_urls, make_dataset, make_loader
    from cobl.factory import build, check_pretrained
    from train.loss import diffusion_loss

    out = Path(opts.out)
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
    check_pretrained(config, opts.pretrained)  # before the Accelerator: a bad path fails on one line
    from train.run_options import prepare_run  # values, run folder, resumed options, data: before any work

    prepare_run(opts, config, urls, main=int(os.environ.get("RANK", "0")) == 0)

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=opts.mixed_precision,
        gradient_accumulation_steps=opts.gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(opts.seed)  # identical initial weights on every rank
    model, codec, noise_scheduler = build(config, pretrained=opts.pretrained, vae=opts.vae, prior=opts.prior)
    model.set_attention(opts.attention)
    if opts.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    codec.to(accelerator.device)
    params = model.trainable_parameters()  # the frozen UNet is not in the optimizer
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    # accelerate steps the LR scheduler once per process per update: count in process steps
    if opts.lr_scheduler == "cosine":
        lr_scheduler = cosine_to_floor(
            optimizer, opts.lr_warmup_steps * world, opts.max_steps * world, opts.lr, opts.min_lr
        )
    else:
        lr_scheduler = get_scheduler(
            opts.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=opts.lr_warmup_steps * world,
            num_training_steps=opts.max_steps * world,
        )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    ema = None
    if opts.ema:
        ema = EMAModel(accelerator.unwrap_model(model).trainable_parameters(), decay=opts.ema_decay)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    global_step, skip = 0, {}
    if opts.resume:
        ckpt = find_checkpoint(out, opts.resume)
        accelerator.load_state(str(ckpt))
        global_step = json.loads((ckpt / "trainer_state.json").read_text())["global_step"]
        data_file = ckpt / f"data_state-rank{rank}.json"
        if data_file.is_file():
            state = json.loads(data_file.read_text())
            if state.get("world") == world and state.get("num_workers") == opts.num_workers:
                skip = {int(k): v + 1 for k, v in state["positions"].items()}
            else:
                warnings.warn(
                    "process/worker count changed since the checkpoint: data restarts", stacklevel=2
                )
        accelerator.print(f"resumed from {ckpt} at step {global_step}")

    dataset = make_dataset(
        urls,
        config.num_objects,
        config.resolution,
        shuffle=True,
        seed=opts.seed,
        shuffle_buffer=opts.shuffle_buffer,
        skip=skip,
        ids=False,  # the loss never reads the instance map: one PNG fewer per sample
        depth=config.depth_condition,
        depth_source=config.depth_source,
    )
    loader_iter = iter(make_loader(dataset, num_workers=opts.num_workers))
    batch_iter = batches(loader_iter, opts.batch_size)
    positions = {int(k): v - 1 for k, v in skip.items()}
    skipped_by_worker: dict[int, dict[str, int]] = {}

    writer = _writer(out) if accelerator.is_main_process else None
    val_samples = _validation_samples(urls, config, opts) if accelerator.is_main_process else None
    metrics_file = (out / "metrics.jsonl").open("a") if accelerator.is_main_process else None
    losses: dict[int, float] = {}
    bar = tqdm(
        total=opts.max_steps,
        initial=global_step,
        disable=not (opts.progress and accelerator.is_main_process),
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    start, start_step = time.perf_counter(), global_step
    model.train()
    try:
        while global_step < opts.max_steps:
            micro_losses = []
            for _ in range(opts.gradient_accumulation_steps):
                batch = next(batch_iter, None)
                if batch is None:
                    raise UserError(f"{opts.data!r}: the shards yielded no usable sample", option="data")
                for w, pos, sk in zip(batch.workers, batch.positions, batch.skipped, strict=True):
                    positions[w] = max(positions.get(w, -1), pos)
                    skipped_by_worker[w] = sk
                batch = batch.to(accelerator.device)
                with accelerator.accumulate(model), accelerator.autocast():
                    loss = diffusion_loss(
                        model,
                        codec,
                        noise_scheduler,
                        batch,
                        global_step,
                        opts.seed,
                        opts.snr_gamma,
                        opts.cond_dropout,
                        opts.object_weight,
                        opts.slot_matching,
                        opts.hidden_weight,
                    )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and opts.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, opts.max_grad_norm)
                    optimizer.step()
                    accelerator.unwrap_model(model).clamp_gates_()  # gates stay in [0, 1]
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                micro_losses.append(loss.detach())
            global_step += 1
            if ema is not None:
                ema.step(accelerator.unwrap_model(model).trainable_parameters())
            step_loss = accelerator.gather(torch.stack(micro_losses).mean()[None]).mean().item()
            losses[global_step] = step_loss
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if accelerator.is_main_process and (global_step % opts.log_every == 0 or global_step == 1):
                rate = (global_step - start_step) / max(time.perf_counter() - start, 1e-9)
                skipped = _sum_counts(skipped_by_worker)
                record = {
                    "step": global_step,
                    "loss": step_loss,
                    "lr": lr_scheduler.get_last_lr()[0],
                    "steps_per_s": rate,
                    **{f"skipped_{k}": v for k, v in skipped.items()},
                }
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                for k, v in record.items():
                    if k != "step":
                        writer.add_scalar(f"train/{k}", v, global_step)
            if global_step % opts.checkpoint_every == 0 or global_step == opts.max_steps:
                _save_checkpoint(accelerator, out, global_step, positions, opts, world)
            if accelerator.is_main_process and opts.validate_every and global_step % opts.validate_every == 0:
                _log_validation(
                    accelerator.unwrap_model(model),
                    codec,
                    noise_scheduler,
                    config,
                    val_samples,
                    writer,
                    global_step,
                    opts,
                    ema,
                )
                model.train()
            last = global_step == opts.max_steps
            curve_due = opts.val_every and (global_step % opts.val_every == 0 or last)
            if accelerator.is_main_process and opts.val_data and curve_due:
                unwrapped = accelerator.unwrap_model(model)
                point = _val_curve_point(unwrapped, codec, noise_scheduler, config, opts, ema)
                with (out / VAL_CURVE).open("a") as f:
                    f.write(json.dumps({"step": global_step, **point}) + "\n")
                for k, v in point.items():
                    if isinstance(v, float):
                        writer.add_scalar(f"val/{k}", v, global_step)
                model.train()
            if stop_after_steps is not None and global_step >= stop_after_steps:
                raise SimulatedKill(f"stopped after step {global_step}")
    finally:
        bar.close()
        del batch_iter, loader_iter  # shuts the (endless) DataLoader workers down
        if metrics_file is not None:
            metrics_file.close()
        if writer is not None:
            writer.close()

    skipped = _sum_counts(skipped_by_worker)
    if any(skipped.values()):
        accelerator.print(f"skipped samples: {skipped}")
    final = out / "final"
    pipeline = None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from core.atomic import atomic_path

        unwrapped = accelerator.unwrap_model(model)
        if ema is not None:
            ema.store(unwrapped.trainable_parameters())
            ema.copy_to(unwrapped.trainable_parameters())
        with atomic_path(final) as tmp:
            pipeline = export_pipeline(
                unwrapped,
                codec,
                noise_scheduler,
                config,
                global_step=global_step,
                ema=bool(ema),
                skipped=skipped,
            )
            pipeline.save_pretrained(tmp, safe_serialization=True)
        if ema is not None:
            ema.restore(unwrapped.trainable_parameters())
        accelerator.print(f"exported {final}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"losses": losses, "final": str(final), "global_step": global_step, "pipeline": pipeline}


def export_pipeline(model, codec, noise_scheduler, config, **training: Any):
    """The trained model as the ``CObLPipeline`` that ``RUN/final`` holds (DDIM sampler, same noise schedule);
    ``training`` (step, EMA, skipped counts) is saved in its config."""
    from infer.pipeline import CObLPipeline

    pipe = CObLPipeline.from_parts(model, noise_scheduler, codec, config, **training)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sum_counts(by_worker: dict[int, dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in by_worker.values():
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    return total


def _writer(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "logs"))


def _validation_samples(urls: list[str], config, opts: TrainOptions):
    """The first few photos (and depths, for a depth-conditioned model) of the training shards."""
    if not opts.validate_every:
        return None
    from cobl.data import collate, make_dataset

    ds = make_dataset(
        urls, config.num_objects, config.resolution, shuffle=False, epochs=1, depth=config.depth_condition,
        depth_source=config.depth_source,
    )
    samples = list(itertools.islice(iter(ds), opts.num_validation))
    return collate(samples) if samples else None


def _log_validation(model, codec, noise_scheduler, config, samples, writer, step, opts, ema) -> None:
    if samples is None:
        return
    from train.validate import layer_grid, sample_layers

    model.eval()
    device = next(model.parameters()).device
    with _ema_weights(model, ema):
        layers, background = sample_layers(
            export_pipeline(model, codec, noise_scheduler, config),
            samples.photo.to(device),
            depth=None if samples.depth is None else samples.depth.to(device),
            steps=opts.validation_steps,
            seed=opts.seed,
        )
    grid = layer_grid(samples.photo.to(device), layers.float(), background.float())
    writer.add_image("validation/photo|layers|background|recomposition", grid.cpu(), step)


@contextlib.contextmanager
def _ema_weights(model, ema):
    """Within this block the model holds its EMA weights (when it keeps an EMA)."""
    if ema is not None:
        ema.store(model.trainable_parameters())
        ema.copy_to(model.trainable_parameters())
    try:
        yield
    finally:
        if ema is not None:
            ema.restore(model.trainable_parameters())


def _val_curve_point(model, codec, noise_scheduler, config, opts: TrainOptions, ema) -> dict[str, Any]:
    """The guided model on the first ``val_scenes`` val scenes, scored as ``cobl eval`` scores it."""
    from infer.evaluate import MODEL, evaluate

    model.eval()
    with _ema_weights(model, ema):
        metrics = evaluate(
            export_pipeline(model, codec, noise_scheduler, config), opts.val_data, limit=opts.val_scenes,
            seed=opts.seed, unguided=False, progress=False, num_inference_steps=opts.val_sampling_steps,
            min_area=opts.val_min_area,
        )
    summary = metrics["methods"][MODEL]
    return {"scenes": metrics["num_scenes"], **{k: summary.get(k) for k in CURVE_METRICS}}


def _save_checkpoint(
    accelerator, out: Path, step: int, positions: dict[int, int], opts: TrainOptions, world: int
) -> None:
    """Write to ``step-N.tmp`` and rename when every rank is done: a killed save never looks complete."""
    ckpt_root = out / CHECKPOINT_DIR
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f"step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    data_state = {"world": world, "num_workers": opts.num_workers, "positions": positions}
    (tmp / f"data_state-rank{accelerator.process_index}.json").write_text(json.dumps(data_state))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"global_step": step, "world": world}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        done = sorted(p for p in ckpt_root.glob("step-*") if not p.name.endswith(".tmp"))
        for old in done[: max(0, len(done) - opts.checkpoints_total_limit)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
