"""``cobl train`` flags: one argparse definition derived from TrainOptions, and the way back to an argv
(for launchers that re-run the training process)."""

from __future__ import annotations

import argparse
import dataclasses

from train.options import TrainOptions

HELP = {
    "data": "shards: webdataset brace pattern and/or glob, e.g. 'DIR/shards/train-{000000..000009}.tar'",
    "out": "run directory (checkpoints/, logs/, metrics.jsonl, final/)",
    "config": "model config: tiny | sd | a config .json",
    "pretrained": "local diffusers Stable Diffusion folder (unet/, vae/, scheduler/) for --config sd",
    "prior": "tiny config: start from this prior of whole objects (`cobl train-prior`); it stays frozen "
    "unless the config sets train_base",
    "vae": "AutoencoderKL folder from `cobl train-vae` (tiny config with a fitted VAE codec)",
    "num_objects": "K object slots (default: tiny 4, sd 6)",
    "resolution": "training image size (default: the config's)",
    "prediction_type": "epsilon | sample | v_prediction (default: the config's)",
    "batch_size": "scenes per process per micro-step (default: the config's recipe, sd 2 as the authors, "
    "tiny 8)",
    "gradient_accumulation_steps": "micro-steps per optimizer step",
    "mixed_precision": "no | fp16 | bf16 autocast (default: the config's recipe, sd bf16)",
    "lr": "AdamW learning rate (default: the config's recipe, sd 1e-4, tiny 5e-4)",
    "min_lr": "the cosine schedule decays to this (default: the config's recipe, sd 1e-6, tiny 0)",
    "gradient_checkpointing": "recompute activations in backward (default: the config's recipe, sd on)",
    "attention": "sdpa | eager attention kernels (default: sdpa)",
    "ema": "keep an EMA of the trained weights; the export uses it",
    "snr_gamma": "min-SNR loss weighting gamma, 0 = off (default: the config's recipe, sd 5, tiny 0)",
    "object_weight": "weigh the loss under objects by 1 + W (objects are a few per cent of the pixels)",
    "slot_matching": "score each scene against its closest interchangeable slot order (objects whose "
    "layers do not overlap may swap slots) instead of the data's depth tie-break",
    "hidden_weight": "weigh the loss where an object is hidden behind another (its amodal minus visible "
    "part) by a further + W: the pixels that amodal completion is about",
    "cond_dropout": "probability of zeroing the photo and depth conditions together (default: the config's "
    "recipe, sd 0.1, tiny 0)",
    "checkpoint_every": "save a resumable checkpoint every N optimizer steps",
    "resume": "'latest' or a checkpoint directory",
    "validate_every": "log validation images every N steps (0 = never)",
    "val_data": "shards of the split that chooses (val): every --val-every steps the guided sampler is "
    "scored on its first --val-scenes scenes, as `cobl eval` does (RUN/val_curve.jsonl, TensorBoard val/*)",
    "val_every": "steps between points of the val learning curve (0 = none; the last step always has one)",
    "val_scenes": "val scenes per learning-curve point",
    "val_sampling_steps": "sampler steps of the learning-curve evaluation",
    "val_min_area": "the small-object rule of the learning-curve evaluation (as `cobl eval --min-area`)",
    "num_workers": "DataLoader workers per process (decoding; with the cache only while it is filled)",
    "threads": "torch threads of this process (0 = one per core); a small model on a shared machine runs as "
    "fast on 1 and is not slowed by a competing process (docs/training.md, Threads)",
    "cache": "auto | memory | disk | off: prepare every scene once (decoded, encoded by the codec) and keep "
    "it in memory (small data) or in --cache-dir (large), or off: decode and encode every batch as it "
    "comes; auto = memory up to 2 GiB (docs/training.md)",
    "cache_dir": "folder of the disk cache (default RUN/cache; share it between runs of the same data, "
    "codec and resolution: entries are fingerprinted and never reused stale)",
    "progress": "show a progress bar",
    "overwrite": "start over in an --out that holds an earlier run (its checkpoints, logs and final/ are "
    "deleted; nothing else there)",
    "lr_scheduler": "learning-rate schedule after the warm-up",
    "lr_warmup_steps": "linear warm-up steps",
    "seed": "seed of the initial weights, the data order and the noise",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(TrainOptions):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        help_text = HELP.get(f.name)
        if f.name == "progress":
            parser.add_argument(
                "--no-progress", dest="progress", action="store_false", help="no progress bar"
            )
        elif kind == "bool | None":  # on, off, or (unset) the config's recipe
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind == "bool":
            parser.add_argument(flag, action="store_true", help=help_text)
        elif f.name == "resume":
            parser.add_argument(flag, nargs="?", const="latest", default=None, help=help_text)
        else:
            conv = float if "float" in kind else int if "int" in kind else str
            required = f.default is dataclasses.MISSING
            parser.add_argument(
                flag, type=conv, required=required, default=None if required else f.default, help=help_text,
                choices=_choices().get(f.name),
            )
    parser.add_argument(
        "--num-processes",
        type=int,
        default=1,
        help="local processes (DDP via torch.distributed.run; gloo on CPU, nccl on GPU)",
    )


def _choices() -> dict[str, tuple[str, ...]]:
    """The accepted values of the options that take a name (listed by ``--help``, checked by argparse)."""
    from cobl.configs import PREDICTION_TYPES
    from train.run_options import CHOICES

    return {**CHOICES, "prediction_type": PREDICTION_TYPES}


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    return TrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)})


def options_to_argv(opts: TrainOptions) -> list[str]:
    """The argv that ``add_arguments`` parses back into ``opts``."""
    argv: list[str] = []
    for f in dataclasses.fields(TrainOptions):
        value = getattr(opts, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name == "progress":
            if not value:
                argv.append("--no-progress")
        elif isinstance(value, bool):
            if value:
                argv.append(flag)
            elif "None" in str(f.type):
                argv.append("--no-" + flag[2:])
        elif value is not None:
            argv += [flag, str(value)]
    return argv
