"""``python -m app.ray_train [ray options] -- [cobl train options]``: training on a Ray cluster
(train.ray_train does the work; this module only reads the flags)."""

from __future__ import annotations

import argparse
import sys

from app.parser import OneLineParser, run_reporting_errors
from app.train_flags import add_arguments, options_from_args
from train.ray_train import MAX_FAILURES, run_ray


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ray_argv, train_argv = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else ([], argv)
    )
    rp = argparse.ArgumentParser(prog="python -m app.ray_train")
    rp.add_argument("--address", default="auto", help="Ray cluster address ('auto' inside the cluster)")
    rp.add_argument("--num-workers", type=int, default=1, help="training workers (one per GPU)")
    rp.add_argument("--use-gpu", action="store_true")
    rp.add_argument(
        "--max-failures",
        type=int,
        default=MAX_FAILURES,
        help=f"restarts of the worker group after a lost worker, each from the latest checkpoint "
        f"(default {MAX_FAILURES})",
    )
    rp.add_argument("--local", action="store_true", help="start a local Ray instance instead of joining one")
    ray_args = rp.parse_args(ray_argv)
    tp = OneLineParser(prog="python -m app.ray_train ... --")
    add_arguments(tp)
    opts = options_from_args(tp.parse_args(train_argv))

    def command() -> int:
        run_ray(
            opts,
            ray_args.num_workers,
            ray_args.use_gpu,
            ray_args.address,
            ray_args.local,
            ray_args.max_failures,
        )
        return 0

    return run_reporting_errors(command)


if __name__ == "__main__":
    sys.exit(main())
