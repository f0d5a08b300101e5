"""``cobl demo``: the whole loop on one machine, resumable stage by stage.

Stages (each runs the real CLI command, so the demo exercises exactly what users run):
  1. data     ``cobl synth run``       render a small dataset with Ray + Blender into shards
  2. publish  ``cobl synth verify`` + ``cobl synth publish``   manifest check, dataset card, gallery
  3. train    ``cobl train``           the tiny CObL on the CPU (resumes from its last checkpoint)
  4. eval     ``cobl eval``            the val split (the one that chooses), the test split once (reported
                                       with 95 % bootstrap intervals), training scenes (does it fit them?)
  5. report   ``OUT/report.html``      samples, loss curve, predicted vs true layer stacks, metrics tables

Stages are fingerprinted by their options (and everything upstream of them, the model config's content
included). A finished stage leaves ``OUT/.stages/<stage>.json`` holding its fingerprint; a rerun with the
same one skips it. A stage that starts records ``<stage>.started.json``: a killed stage rerun with the same
options resumes inside (rendering from its last shard, training from its last checkpoint), while one whose
options changed starts from scratch, its old output folder moved to ``<folder>.previous`` — a finished
checkpoint is never reused under other options. The defaults are the tiny configuration found by the sweep
recorded in ``docs/demo.md``; the protocol (val chooses, test reports) is described there too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from app.parser import run_cli
from app.retired import retire
from core.atomic import write_text_atomic
from core.errors import UserError
from core.policy import DEPTH_SOURCES, MIN_OBJECT_AREA

STAGES = ("data", "publish", "train", "eval", "report")

# The prior of whole objects the demo's CObL can be built around (`--prior`), trained once by
# `cobl train-prior` on scenes no demo split holds; its model card (README.md there) and docs/demo.md say how.
SHIPPED_PRIOR = Path(__file__).resolve().parents[1] / "assets" / "priors" / "tiny-objects-64-f8"

# The embedded default: sized for ~20 minutes on 2 CPU cores (see docs/demo.md for the sweep behind it).
DEFAULTS: dict[str, Any] = {
    "scenes": 600,
    "resolution": 64,
    "samples": 16,
    "min_objects": 2,
    "max_objects": 3,
    "num_objects": 3,
    "max_steps": 4000,  # chosen on val (docs/demo.md); ~5.6 steps/s at batch 8 on 2 idle cores
    "batch_size": 8,
    "lr": 1e-3,
    "object_weight": 10.0,
    "codec_factor": 8,
    "prior": "none",  # on val the shipped prior (frozen or fine-tuned) did not beat a UNet from scratch
    "fine_tune_prior": False,  # the paper keeps its prior (SD) frozen
    "depth": True,
    "depth_source": "monocular",  # the renderer's depth degraded like a monocular estimate (cobl.depth)
    "completion_fraction": 0.8,  # scenes that must hold an object 25-75 % hidden (synth.scene.sampler)
    "slot_matching": True,
    "split": "train=0.76,val=0.08,test=0.16",  # 600 scenes -> 456 / 48 / 96
    "val_scenes": 48,
    "eval_scenes": 96,
    "fit_scenes": 24,
    "sampling_steps": 20,
    "min_area": MIN_OBJECT_AREA,  # the small-object rule (alpha mass / image), both sides, every method
    "guidance_scale": 1.0,
    "workers": 2,
    "threads": 1,  # torch threads of training and evaluation: docs/training.md, "Threads"
    "seed": 0,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="render, train, infer, evaluate and report on one machine")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    p.add_argument("--scenes", type=int, default=DEFAULTS["scenes"], help="scenes to render")
    p.add_argument(
        "--resolution", type=int, default=DEFAULTS["resolution"], help="render and model resolution"
    )
    p.add_argument("--samples", type=int, default=DEFAULTS["samples"], help="Cycles samples per pixel")
    p.add_argument("--min-objects", type=int, default=DEFAULTS["min_objects"], help="fewest objects a scene")
    p.add_argument("--max-objects", type=int, default=DEFAULTS["max_objects"], help="most objects a scene")
    retire(p, "--objects", "--min-objects MIN --max-objects MAX")
    p.add_argument("--num-objects", type=int, default=DEFAULTS["num_objects"], help="model object slots K")
    p.add_argument("--max-steps", type=int, default=DEFAULTS["max_steps"], help="training steps")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--object-weight", type=float, default=DEFAULTS["object_weight"],
                   help="loss weight 1+W under objects (see `cobl train --help`)")
    p.add_argument("--codec-factor", type=int, default=DEFAULTS["codec_factor"],
                   help="space-to-depth factor of the tiny model's pixel codec")
    p.add_argument("--prior", default=DEFAULTS["prior"],
                   help="prior of whole objects to build CObL on (`cobl train-prior`; the shipped one: "
                   f"{SHIPPED_PRIOR.relative_to(SHIPPED_PRIOR.parents[2])}), or 'none' (the default, chosen "
                   "on val) to train the base UNet from scratch with the CObL modules")
    p.add_argument("--fine-tune-prior", action="store_true",
                   help="train the prior's weights too (default: frozen, as the paper keeps SD)")
    p.add_argument("--no-depth", dest="depth", action="store_false",
                   help="condition the model on the photo alone (default: photo + depth)")
    p.add_argument("--depth-source", choices=DEPTH_SOURCES, default=DEFAULTS["depth_source"],
                   help="depth at training and evaluation: the renderer's depth degraded like a monocular "
                   "estimate (monocular, the default) or the exact rendered depth (rendered: an oracle "
                   "input, its rows are labelled so)")
    p.add_argument("--completion-fraction", type=float, default=DEFAULTS["completion_fraction"],
                   help="fraction of rendered scenes that must hold an object 25-75%% hidden "
                   f"(default {DEFAULTS['completion_fraction']})")
    p.add_argument("--split", default=DEFAULTS["split"],
                   help=f"dataset splits, NAME=FRACTION,... with train, val and test ({DEFAULTS['split']})")
    p.add_argument("--no-slot-matching", dest="slot_matching", action="store_false",
                   help="score each scene against the data's slot order only (see `cobl train --help`)")
    p.add_argument("--val-scenes", type=int, default=DEFAULTS["val_scenes"],
                   help="val scenes evaluated (the split that chooses settings)")
    p.add_argument("--eval-scenes", type=int, default=DEFAULTS["eval_scenes"],
                   help="test scenes evaluated, once, for the report")
    p.add_argument("--fit-scenes", type=int, default=DEFAULTS["fit_scenes"],
                   help="training scenes evaluated (does it fit what it saw?)")
    p.add_argument("--sampling-steps", type=int, default=DEFAULTS["sampling_steps"], help="sampler steps")
    p.add_argument("--guidance-scale", type=float, default=DEFAULTS["guidance_scale"])
    p.add_argument("--min-area", type=float, default=DEFAULTS["min_area"],
                   help="a layer counts as an object above this fraction of the image, on both sides (true "
                   "objects at or under it are ignored) and for every method "
                   f"(chosen on val, docs/demo.md; default {DEFAULTS['min_area']})")
    p.add_argument("--workers", type=int, default=DEFAULTS["workers"], help="Blender workers")
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"],
                   help="torch threads for training and evaluation (0 = one per core; default "
                   f"{DEFAULTS['threads']}: the tiny model runs as fast on one, and a competing process "
                   "then costs it nothing; docs/training.md)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument(
        "--gpu-scale",
        action="store_true",
        help="the paper-sized profile for GPU machines: sd config, 512², bf16, ~2250 training scenes "
        "(needs --pretrained); see docs/demo.md",
    )
    p.add_argument("--pretrained", default=None, help="local diffusers Stable Diffusion folder (--gpu-scale)")
    p.set_defaults(func=run_demo)


def gpu_scale_profile(args: argparse.Namespace) -> None:
    """Overwrite the CPU defaults with the paper-sized profile (documented in docs/demo.md)."""
    if not args.pretrained:
        raise UserError("--gpu-scale: needs --pretrained PATH (a local diffusers Stable Diffusion folder)")
    args.scenes, args.resolution, args.samples, args.num_objects = 2500, 512, 64, 6
    args.min_objects, args.max_objects = 2, 6
    args.max_steps, args.batch_size, args.lr, args.eval_scenes, args.sampling_steps = 20000, 2, 1e-4, 100, 20
    args.object_weight = 0.0
    args.workers = max(args.workers, 8)
    args.threads = 0


class Stages:
    """Done- and started-markers keyed by the options (the fingerprint) a stage ran with."""

    def __init__(self, out: Path) -> None:
        self.dir = out / ".stages"

    def _options(self, marker: Path) -> dict[str, Any] | None:
        return json.loads(marker.read_text()).get("options") if marker.is_file() else None

    def done(self, name: str, options: dict[str, Any]) -> bool:
        return self._options(self.dir / f"{name}.json") == options

    def begin(self, name: str, options: dict[str, Any], output: Path | None = None) -> bool:
        """Record that ``name`` starts with ``options``; returns whether it may resume inside ``output``
        (a previous attempt with the same options left it). Output of an attempt with other options, or
        of unknown options, is moved to ``<output>.previous`` so nothing of it is reused."""
        started = self.dir / f"{name}.started.json"
        previous = self._options(started)
        resume = output is not None and output.exists() and previous == options
        if output is not None and output.exists() and not resume:
            changed = _changed(previous, options)
            aside = output.with_name(output.name + ".previous")
            shutil.rmtree(aside, ignore_errors=True)
            output.rename(aside)
            print(f"cobl demo: stage {name} options changed ({changed}): starting it from scratch, "
                  f"the earlier output moved to {aside}")
        (self.dir / f"{name}.json").unlink(missing_ok=True)
        write_text_atomic(started, json.dumps({"options": options}, indent=2, sort_keys=True))
        return resume

    def mark(self, name: str, options: dict[str, Any], seconds: float) -> None:
        payload = {"options": options, "seconds": round(seconds, 1)}
        write_text_atomic(self.dir / f"{name}.json", json.dumps(payload, indent=2, sort_keys=True))

    def seconds(self, name: str) -> float | None:
        marker = self.dir / f"{name}.json"
        return json.loads(marker.read_text())["seconds"] if marker.is_file() else None


def _changed(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """The options that differ, worded as flags (``--lr 0.001 -> 0.002``)."""
    if before is None:
        return "not recorded"
    keys = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
    return ", ".join(f"--{k.replace('_', '-')} {before.get(k)} -> {after.get(k)}" for k in keys) or "none"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def model_config(args: argparse.Namespace):
    """The tiny variant the sweep chose (docs/demo.md): a coarser pixel codec, the photo skip and the depth
    condition, around the frozen prior unless ``--prior none``."""
    from cobl.configs import sd_config, tiny_config

    if args.gpu_scale:  # the paper's design: frozen SD, conditioned on the photo and depth
        config = sd_config(args.num_objects, args.resolution).replace(depth_condition=args.depth)
    else:
        config = tiny_config(num_objects=args.num_objects, resolution=args.resolution).replace(
            space_to_depth_factor=args.codec_factor, photo_skip=True, depth_condition=args.depth,
            train_base=_prior(args) is None or args.fine_tune_prior,
        )
    return config.replace(depth_source=args.depth_source)


def write_model_config(out: Path, args: argparse.Namespace) -> Path:
    path = out / "model_config.json"
    write_text_atomic(path, model_config(args).to_json())
    return path


def _prior(args: argparse.Namespace) -> Path | None:
    """The prior folder, or None for ``--prior none`` and the GPU profile (whose prior is SD)."""
    return None if args.gpu_scale or args.prior == "none" else Path(args.prior)


def check_prior(args: argparse.Namespace) -> str:
    """Before anything renders: the prior fits the model config (a one-line error naming --prior otherwise);
    returns its fingerprint (the weights' SHA-256), "none" without one."""
    prior = _prior(args)
    if prior is None:
        return "none"
    from cobl.factory import base_unet_config, load_prior, make_codec

    config = model_config(args)
    load_prior(prior, base_unet_config(config, make_codec(config)))
    return _sha(prior / "diffusion_pytorch_model.safetensors")


def _cli(argv: list[str]) -> None:
    """Run one stage as the ``cobl`` command a user would type (printed, so every stage can be rerun)."""
    from app import cli_infer, cli_synth, cli_train

    print(f"\n$ cobl {' '.join(argv)}", flush=True)
    code = run_cli(argv, (cli_synth, cli_train, cli_infer))
    if code != 0:
        raise UserError(f"demo stopped: `cobl {' '.join(argv)}` exited with {code}")


def run_demo(args: argparse.Namespace) -> int:
    if args.gpu_scale:
        gpu_scale_profile(args)
    _check(args)
    prior_sha = check_prior(args)  # before anything is written
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # the in-process stages: train, eval
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data, run = out / "data", out / "run"
    stages = Stages(out)
    config_file = write_model_config(out, args)
    shards = data / "shards"

    def sampling(limit: int) -> list[str]:
        return ["--sampling-steps", str(args.sampling_steps), "--guidance-scale", str(args.guidance_scale),
                "--seed", str(args.seed), "--limit", str(limit), "--selection-split", "val",
                "--min-area", str(args.min_area)]

    plan: list[tuple[str, dict[str, Any], Path | None, Any]] = [
        (
            "data",
            {**{k: getattr(args, k)
                for k in ("scenes", "resolution", "samples", "seed", "split", "completion_fraction")},
             "objects": f"{args.min_objects}-{args.max_objects}"},  # as before: finished stages stay done
            data,
            lambda resume: [[
                "synth", "run", "--out", str(data), "--scenes", str(args.scenes),
                "--resolution", str(args.resolution),
                "--samples", str(args.samples), "--seed", str(args.seed), "--workers", str(args.workers),
                "--split", args.split, "--shard-size", "100",
                "--min-objects", str(args.min_objects), "--max-objects", str(args.max_objects),
                "--completion-fraction", str(args.completion_fraction),
            ]],
        ),
        ("publish", {}, None,
         lambda resume: [["synth", "verify", str(data)], ["synth", "publish", str(data)]]),
        (
            "train",
            {
                **{k: getattr(args, k)
                   for k in ("num_objects", "max_steps", "batch_size", "lr", "resolution", "seed",
                             "object_weight", "codec_factor", "depth", "depth_source", "slot_matching",
                             "gpu_scale", "pretrained")},
                "model_config": _sha(config_file),  # the architecture itself, not only the flags
                "prior": prior_sha,  # the prior's weights, not its path
            },
            run,
            lambda resume: [[
                "train", "--data", str(shards / "train-*.tar"), "--out", str(run),
                "--config", str(config_file),
                "--num-objects", str(args.num_objects), "--object-weight", str(args.object_weight),
                "--resolution", str(args.resolution), "--max-steps", str(args.max_steps),
                "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", str(args.seed),
                "--checkpoint-every", str(max(100, args.max_steps // 10)),
                # 2 loader workers beside 2 torch threads oversubscribe 2 cores (4.9 vs 5.6 steps/s)
                "--num-workers", "4" if args.gpu_scale else "1", "--threads", str(args.threads),
                *(["--slot-matching"] if args.slot_matching else []),
                *(["--prior", str(_prior(args))] if _prior(args) is not None else []),
                # the learning curve on val (RUN/val_curve.jsonl), sampled as the eval stage samples
                "--val-data", str(shards / "val-*.tar"), "--val-every", str(max(1, args.max_steps // 5)),
                "--val-scenes", str(min(args.val_scenes, 16)), "--val-min-area", str(args.min_area),
                "--val-sampling-steps", str(args.sampling_steps),
                *(["--resume", "latest"] if resume and any((run / "checkpoints").glob("step-*")) else []),
                *(["--pretrained", args.pretrained, "--mixed-precision", "bf16"] if args.gpu_scale else []),
            ]],
        ),
        (
            "eval",
            {k: getattr(args, k) for k in ("val_scenes", "eval_scenes", "fit_scenes", "sampling_steps",
                                           "guidance_scale", "seed", "min_area")},
            None,
            lambda resume: [
                # val first: the split every choice is made on; unguided is a test-only baseline
                ["eval", "--model", str(run), "--data", str(shards / "val-*.tar"),
                 "--out", str(out / "metrics_val.json"), "--no-unguided", *sampling(args.val_scenes)],
                ["eval", "--model", str(run), "--data", str(shards / "test-*.tar"),
                 "--out", str(out / "metrics_test.json"), *sampling(args.eval_scenes)],
                ["eval", "--model", str(run), "--data", str(shards / "train-*.tar"),
                 "--out", str(out / "metrics_train.json"), "--no-unguided", *sampling(args.fit_scenes)],
            ],
        ),
    ]  # fmt: skip
    started = time.perf_counter()
    upstream: dict[str, Any] = {}
    for name, own_options, output, commands in plan:
        # A stage is redone when its own options or any earlier stage's options changed.
        upstream = options = {**upstream, **own_options}
        if stages.done(name, options):
            print(f"cobl demo: stage {name} already done with these options, skipped")
            continue
        resume = stages.begin(name, options, output)
        t0 = time.perf_counter()
        for argv in commands(resume):
            _cli([*argv, "--overwrite"] if argv[0] == "eval" else argv)  # a redone stage replaces its own
        stages.mark(name, options, time.perf_counter() - t0)
    t0 = time.perf_counter()
    from app.demo_report import build_report

    report = build_report(out, args, {s: stages.seconds(s) for s in STAGES})
    stages.mark("report", {}, time.perf_counter() - t0)
    print(f"\ncobl demo: done in {time.perf_counter() - started:.0f} s -> {report}")
    return 0


def _check(args: argparse.Namespace) -> None:
    if not 1 <= args.min_objects <= args.max_objects:
        raise UserError(f"--min-objects, --max-objects: expected 1 <= MIN <= MAX, got {args.min_objects}, "
                        f"{args.max_objects}")
    if args.max_objects > args.num_objects:
        raise UserError(f"--max-objects: {args.max_objects} exceeds --num-objects {args.num_objects}")
    from app.flag_checks import check_range
    from train.run_options import BOUNDS

    check_range(args, "threads", *BOUNDS["threads"])  # the bound `cobl train --threads` applies
    for name in ("scenes", "resolution", "max_steps", "batch_size", "val_scenes", "eval_scenes", "fit_scenes",
                 "sampling_steps", "workers", "codec_factor"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag}: expected a positive integer, got {getattr(args, name)}")
    if not 0 <= args.completion_fraction <= 1:
        raise UserError(
            f"--completion-fraction: expected a fraction in [0, 1], got {args.completion_fraction}"
        )
    names = {part.split("=")[0].strip() for part in args.split.split(",")}
    if not {"train", "val", "test"} <= names:
        raise UserError(
            f"--split: needs train, val and test splits (val chooses, test reports), got {args.split!r}"
        )
