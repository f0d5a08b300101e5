"""`cobl train` with the demo's options, alone and beside one busy-loop process: steps/s and the slowdown.

    python bench/bench_contention.py            # synthetic 64² shards, the demo's model and options
    python bench/bench_contention.py --data 'DIR/data/shards/train-*.tar' [--train-args '--threads 2']

On a 2-core machine a competing process's fair share is one core, so it should cost at most 2x (target);
with two spin-waiting OpenMP threads it cost 2.9-3.5x (issue 24), with two passive ones the idle step was
slower than with one thread; the demo trains on one (``--threads``, ``app.demo.DEFAULTS``; docs/training.md).
A later ``--threads`` in ``--train-args`` wins.
Each repetition runs `cobl train` (a subprocess, as a user runs it) for ``--warmup + --steps`` steps idle,
then again while ``python -c 'while True: pass'`` runs; the steady step time is the median of the logged
per-window step times after the warm-up (``RUN/metrics.jsonl``). Medians over ``--reps`` interleaved pairs.
The machine must otherwise be idle for the "idle" figure to mean idle.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def demo_train_argv(data: str, out: Path, config: str, steps: int, window: int) -> list[str]:
    """`cobl train`'s arguments as `cobl demo` passes them (its defaults), without the val curve."""
    from app.demo import DEFAULTS

    return [
        "train", "--data", data, "--out", str(out), "--config", config,
        "--num-objects", str(DEFAULTS["num_objects"]), "--object-weight", str(DEFAULTS["object_weight"]),
        "--resolution", str(DEFAULTS["resolution"]), "--max-steps", str(steps),
        "--batch-size", str(DEFAULTS["batch_size"]), "--lr", str(DEFAULTS["lr"]), "--seed", "0",
        "--num-workers", "1", "--threads", str(DEFAULTS["threads"]),
        *(["--slot-matching"] if DEFAULTS["slot_matching"] else []),
        "--checkpoint-every", str(10**9), "--validate-every", "0", "--log-every", str(window),
        "--no-progress",
    ]


def steady_step_s(argv: list[str], out: Path, warmup: int, busy: bool) -> float:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())", *argv]
        subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["step_s"] for r in records if r["step"] > warmup and r["step"] != 1)


def main() -> None:
    from bench.bench_loop import demo_model_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="shards (default: synthetic, 64², 2-3 objects)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--scenes", type=int, default=96)
    p.add_argument("--train-args", default="", help="extra `cobl train` flags, e.g. '--cache off'")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = demo_model_config(root)
        data = args.data
        if data is None:
            from tests.shardmaker import write_shard

            for i in range(4):
                write_shard(root / f"train-{i:06d}.tar", args.scenes // 4, size=64, max_objects=3, seed=i)
            data = str(root / "train-{000000..000003}.tar")
        times: dict[bool, list[float]] = {False: [], True: []}
        for rep in range(args.reps):
            for busy in (False, True):
                out = root / f"run-{rep}-{int(busy)}"
                argv = demo_train_argv(data, out, config, args.warmup + args.steps, args.window)
                times[busy].append(steady_step_s(argv + shlex.split(args.train_args), out, args.warmup, busy))
    idle, loaded = statistics.median(times[False]), statistics.median(times[True])
    cores = len(os.sched_getaffinity(0))
    print(f"cobl train, the demo's options {args.train_args}, {cores} cores; medians of {args.reps} "
          f"interleaved pairs, {args.steps} steps after {args.warmup}")
    print(f"  alone                 {1 / idle:6.2f} steps/s")
    print(f"  beside one busy loop  {1 / loaded:6.2f} steps/s")
    print(f"  slowdown              {loaded / idle:6.2f}x (target <= 2x on 2 cores)")
    print(json.dumps({"idle_step_s": times[False], "busy_step_s": times[True], "cores": cores}))


if __name__ == "__main__":
    main()
