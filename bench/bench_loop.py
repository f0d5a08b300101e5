"""The training loop's steady-state step against the model step it runs, measured in one run.

    python bench/bench_loop.py              # CPU: the demo's model (64², K = 3, batch 8), synthetic shards
    python bench/bench_loop.py --data 'DIR/shards/train-*.tar' --config DIR/model_config.json
    python bench/bench_loop.py --config sd --pretrained DIR --resolution 512 --num-objects 6 --batch-size 2 \
        --mixed-precision bf16 --gradient-checkpointing --data 'DIR/train-*.tar'           # a GPU

Each repetition (interleaved; medians printed) times, in this process:
  * model: the loop's own model, optimizer and accelerator (``train.loop.prepare_run``) on fixed random
    latents and condition: forward, MSE, backward, gradient clip, AdamW, gate clamp, ``loss.item()`` — what
    ``bench/bench_train.py`` calls the CObL step (with ``--optimizer``);
  * loop (cache): ``train.loop.train`` with ``--cache CACHE`` for ``--warmup + --steps`` steps: the median
    of the per-window step times logged after the warm-up (the fill is reported apart, "outside the steps");
  * loop (no cache): the same with ``--cache off`` (the streaming image path).
It prints the ratios loop / model (targets: <= 1.3x with the cache on the CPU, <= 1.2x on a GPU).
Without ``--data`` it writes synthetic shards (tests/shardmaker.py) at the training resolution.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from app.threads import configure_threads  # noqa: E402  (before torch loads, as `cobl` does)

configure_threads()


def _options(args: argparse.Namespace, out: Path, cache: str, max_steps: int):
    from train.options import TrainOptions

    return TrainOptions(
        data=args.data, out=str(out), config=args.config, pretrained=args.pretrained,
        num_objects=args.num_objects, resolution=args.resolution, batch_size=args.batch_size,
        max_steps=max_steps, mixed_precision=args.mixed_precision,  # the config's recipe LR: speed only
        gradient_checkpointing=args.gradient_checkpointing, object_weight=args.object_weight,
        slot_matching=args.slot_matching, num_workers=args.num_workers, cache=cache,
        checkpoint_every=10**9, validate_every=0, log_every=args.window, progress=False, seed=0,
    )


def model_step_s(args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """Median (wall, CPU) seconds of the model step on fixed random inputs (see the module docstring)."""
    import torch

    from train.loop import prepare_run

    run, _ = prepare_run(_options(args, out, "off", 1))
    acc, model, config = run.accelerator, run.model, run.config
    side = config.resolution // run.codec.downsample
    b, dev = args.batch_size, acc.device
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, config.num_slots, run.codec.latent_channels, side, side, generator=g).to(dev)
    res = config.resolution
    cond = (torch.rand(b, run.unwrapped.condition_channels, res, res, generator=g) * 2 - 1).to(dev)
    t = torch.randint(0, 1000, (b,), generator=g).to(dev)

    def step() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        with acc.autocast():
            loss = (model(x, t, cond).float() - x).pow(2).mean()
        acc.backward(loss)
        acc.clip_grad_norm_(run.params, 1.0)
        run.optimizer.step()
        run.unwrapped.clamp_gates_()
        run.optimizer.zero_grad(set_to_none=True)
        loss.item()  # a sync, as the loop's logged loss is
        return time.perf_counter() - start, time.process_time() - cpu

    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.steps)]
    return statistics.median(w for w, _ in times), statistics.median(c for _, c in times)


def loop_step_s(args: argparse.Namespace, out: Path, cache: str) -> tuple[float, float, float, str]:
    """(median wall and CPU seconds per step after the warm-up, seconds outside the steps, the cache line)
    of ``train``."""
    import contextlib
    import io

    from train.loop import train

    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        train(_options(args, out, cache, args.warmup + args.steps))
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if r["step"] > args.warmup and r["step"] % args.window == 0]
    previous = [{"step": 0}] + records[:-1]
    in_steps = sum(r["step_s"] * (r["step"] - p["step"]) for p, r in zip(previous, records, strict=True))
    cache_line = next((line for line in log.getvalue().splitlines() if line.startswith("cache")), "")
    return (statistics.median(r["step_s"] for r in steady), statistics.median(r["cpu_s"] for r in steady),
            wall - in_steps, cache_line)


def _free() -> None:
    """Let the next variant start from the same memory (the previous run's model is unreferenced now)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _synthetic_shards(args: argparse.Namespace, root: Path) -> str:
    from tests.shardmaker import write_shard

    for i in range(4):
        write_shard(root / f"train-{i:06d}.tar", args.scenes // 4, size=args.resolution,
                    max_objects=min(3, args.num_objects), max_layers=args.num_objects, seed=i)
    return str(root / "train-{000000..000003}.tar")


def demo_model_config(root: Path) -> str:
    """The demo's model config (``cobl demo``'s defaults), written as the demo writes it."""
    from app.cli import COMMAND_MODULES
    from app.demo import write_model_config
    from app.parser import build_parser

    demo_args = build_parser(COMMAND_MODULES).parse_args(["demo", "--out", str(root)])
    write_model_config(root, demo_args)
    return str(root / "model_config.json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="shards (default: synthetic ones at --resolution)")
    p.add_argument("--config", default=None, help="tiny | sd | a config .json (default: the demo's model)")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--num-objects", type=int, default=3)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mixed-precision", default=None)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--object-weight", type=float, default=10.0)
    p.add_argument("--no-slot-matching", dest="slot_matching", action="store_false")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--cache", default="auto", help="the cached variant's tier (auto | memory | disk)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--window", type=int, default=5, help="steps per logged step time")
    p.add_argument("--scenes", type=int, default=96, help="synthetic scenes when --data is not given")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--variants", default="model,cache,off")
    p.add_argument("--keep", default=None, help="keep the runs (RUN/final, metrics.jsonl) in this folder")
    args = p.parse_args()
    if args.steps % args.window or args.warmup % args.window:
        p.error("--steps and --warmup must be multiples of --window")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        args.config = args.config or demo_model_config(root)
        args.data = args.data or _synthetic_shards(args, root)
        results: dict[str, list[float]] = {v: [] for v in args.variants.split(",")}
        cpu: dict[str, list[float]] = {v: [] for v in results}
        outside: dict[str, list[float]] = {}
        for rep in range(args.reps):
            for variant in results:
                out = root / f"run-{variant}-{rep}"
                if variant == "model":
                    wall_s, cpu_s = model_step_s(args, out)
                else:
                    tier = args.cache if variant == "cache" else "off"
                    wall_s, cpu_s, rest, cache_line = loop_step_s(args, out, tier)
                    outside.setdefault(variant, []).append(rest)
                    if cache_line and rep == 0:
                        print(cache_line)
                results[variant].append(wall_s)
                cpu[variant].append(cpu_s)
                _free()
        _report(args, results, cpu, outside)


def _report(args, results: dict[str, list[float]], cpu: dict[str, list[float]], outside) -> None:
    import torch

    on_cpu = f"CPU, {torch.get_num_threads()} torch threads"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else on_cpu
    med = {k: statistics.median(v) for k, v in results.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"config {args.config}, {args.resolution}², K = {args.num_objects}, batch {args.batch_size}, "
          f"{device}; medians of {args.reps} interleaved runs, {args.steps} steps after {args.warmup}")
    names = {"model": "model step", "cache": f"loop, cache {args.cache}", "off": "loop, no cache"}
    for k, v in med.items():
        ratio = f" = {v / med['model']:.2f}x" if "model" in med and k != "model" else ""
        cpu_ratio = f" = {med_cpu[k] / med_cpu['model']:.2f}x" if "model" in med and k != "model" else ""
        extra = f"  (+{statistics.median(outside[k]):.1f} s outside the steps)" if k in outside else ""
        print(f"  {names[k]:<18} wall {v:7.4f} s/step{ratio:<8}  process CPU {med_cpu[k]:7.4f} s/step"
              f"{cpu_ratio:<8}{extra}")
    if "off" in med:
        print("  (the no-cache loop's CPU excludes its DataLoader workers' decoding)")
    print(json.dumps({"settings": vars(args), "step_s": results, "cpu_s": cpu}))


if __name__ == "__main__":
    main()
