"""``cobl train`` and ``cobl train-vae``.

``cobl train --num-processes N`` re-launches itself as N local DDP processes through
``torch.distributed.run`` (gloo on CPU, nccl on GPU); ``accelerate launch -m app.train_process ...``
works as well.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

from app.parser import OneLineParser, run_reporting_errors
from app.train_flags import add_arguments, options_from_args, options_to_argv
from core.errors import UserError
from train.options import PriorOptions


def register(subparsers) -> None:

    p = subparsers.add_parser("train", help="train CObL on scene shards")
    add_arguments(p)
    p.set_defaults(func=run_train)

    v = subparsers.add_parser(
        "train-vae", help="fit a tiny AutoencoderKL on shard images (tiny config codec)"
    )
    v.add_argument("--data", required=True, help="shards: brace pattern and/or glob")
    v.add_argument(
        "--out", required=True, help="output folder for the AutoencoderKL (diffusers format): new or empty, "
        "or this command's own earlier output with --overwrite"
    )
    v.add_argument("--overwrite", action="store_true", help="replace this command's own earlier --out")
    v.add_argument("--resolution", type=int, default=64)
    v.add_argument("--max-steps", type=int, default=1500)
    v.add_argument("--batch-size", type=int, default=16)
    v.add_argument("--lr", type=float, default=1e-3)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--num-workers", type=int, default=1)
    v.set_defaults(func=run_train_vae)

    d = PriorOptions.__dataclass_fields__
    r = subparsers.add_parser(
        "train-prior", help="train the tiny config's base UNet as a prior of whole object layers"
    )
    r.add_argument("--data", required=True, help="shards of scenes no CObL split uses (brace pattern, glob)")
    r.add_argument(
        "--out", required=True, help="output folder (diffusers UNet + model card): new or empty, or this "
        "command's own earlier (or interrupted) output, which is resumed or kept"
    )
    r.add_argument("--config", required=True, help="the tiny CObL model config .json the prior is for")
    for name, help_text in (
        ("max_steps", "optimizer steps"),
        ("batch_size", "single layers per step"),
        ("lr", "AdamW learning rate (cosine decay to 0)"),
        ("object_weight", "loss weight 1 + W under the layer's alpha"),
        ("checkpoint_every", "save a resumable checkpoint every N steps"),
        ("seed", "seed of the initial weights and of every draw"),
    ):
        default = d[name].default
        r.add_argument(
            "--" + name.replace("_", "-"),
            type=type(default),
            default=default,
            help=f"{help_text} (default {default})",
        )
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    r.set_defaults(func=run_train_prior)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(args: argparse.Namespace) -> int:

    opts = options_from_args(args)
    if args.num_processes < 1:
        raise UserError(f"--num-processes must be >= 1, got {args.num_processes}")
    if args.num_processes > 1 and "LOCAL_RANK" not in os.environ:
        # Validate cheaply before spawning, so a bad path fails once, on one line.
        from cobl.data import expand_urls
        from train.loop import resolve_config, resolve_recipe
        from train.run_options import check_values

        check_values(resolve_recipe(opts, resolve_config(opts)))
        expand_urls(opts.data)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(args.num_processes),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            "-m",
            "app.train_process",
            *options_to_argv(opts),
        ]
        return subprocess.call(cmd)
    from train.loop import train

    train(opts)
    return 0


def run_train_vae(args: argparse.Namespace) -> int:
    from app.flag_checks import check_range
    from core.outdir import check_output_dir, mark_output
    from core.policy import MAX_RESOLUTION
    from train.vae import fit_vae

    for name, low, high in (("resolution", 8, MAX_RESOLUTION), ("max_steps", 1, 10**9),
                            ("batch_size", 1, 10**6), ("lr", 1e-12, 10.0), ("seed", 0, 2**32 - 1),
                            ("num_workers", 0, 256)):  # fmt: skip
        check_range(args, name, low, high)
    check_output_dir(args.out, "train-vae", overwrite=args.overwrite)

    report = fit_vae(
        args.data,
        args.out,
        resolution=args.resolution,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        num_workers=args.num_workers,
    )
    mark_output(args.out, "train-vae")
    print(
        f"VAE saved to {args.out}: reconstruction PSNR {report['psnr']:.2f} dB "
        f"on {report['num_images']} images"
    )
    return 0


def run_train_prior(args: argparse.Namespace) -> int:
    from app.flag_checks import check_range
    from core.outdir import check_output_dir, mark_output
    from train.common import CHECKPOINT_DIR
    from train.prior import REPORT, train_prior

    for name, low, high in (("lr", 1e-12, 10.0), ("object_weight", 0, 1e6), ("seed", 0, 2**32 - 1)):
        check_range(args, name, low, high)
    check_output_dir(args.out, "train-prior", resumable=True, own_record=(REPORT, CHECKPOINT_DIR))

    names = PriorOptions.__dataclass_fields__
    report = train_prior(PriorOptions(**{k: v for k, v in vars(args).items() if k in names}))
    mark_output(args.out, "train-prior")
    print(
        f"prior saved to {args.out}: held-out denoising loss {report['held_out_loss_init']:.4f} -> "
        f"{report['held_out_loss']:.4f} on {report['layers']['held_out']} layers"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m app.train_process`` (same options as ``cobl train``)."""
    from app.threads import configure_threads

    configure_threads()
    parser = OneLineParser(prog="python -m app.train_process", description="CObL training process")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_reporting_errors(lambda: run_train(args))
