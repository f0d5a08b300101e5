"""The sweep behind ``cobl demo``'s tiny configuration: train each variant on the same rendered dataset for a
fixed number of steps, evaluate on training scenes (fit) and on the VAL split, and print one table row each.

The protocol (docs/demo.md): every choice is made on val; the test split is never scored here, so that the
demo's one test evaluation stays a held-out number. The dataset needs a val split of useful size (the demo's
``--split train=0.76,val=0.08,test=0.16`` of 600 scenes gives 48).

Usage: python bench/sweep_demo.py --data DIR (a `cobl synth run` output) --out SWEEP_DIR [--variants a,b]
Results (and the exact commands) are written to SWEEP_DIR/results.jsonl; docs/demo.md records a run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from app.cli import main as cobl
from cobl.configs import tiny_config, tiny_unet_kwargs

SCORED_SPLITS = ("train", "val")  # never "test": that split is the demo's one held-out evaluation
COLUMNS = (  # (summary key, short name in results.jsonl)
    ("amodal_miou", "miou"),
    ("amodal_miou_occluded", "miou_occ"),
    ("amodal_miou_strict", "miou_strict"),
    ("hidden_recall", "hidden_recall"),
    ("hidden_precision", "hidden_precision"),
    ("fg_ari", "fg_ari"),
    ("count_accuracy", "count"),
    ("order_accuracy", "order"),
)

# name -> (config overrides, train options)
VARIANTS: dict[str, tuple[dict, dict]] = {
    # the first tiny design: no photo skip, plain MSE
    "32px-f4-b8-lr1e-3": (
        {"resolution": 32, "space_to_depth_factor": 4, "photo_skip": False}, {"batch-size": 8, "lr": 1e-3}
    ),
    "64px-f8-b8-lr1e-3": (
        {"resolution": 64, "space_to_depth_factor": 8, "photo_skip": False}, {"batch-size": 8, "lr": 1e-3}
    ),
    # + per-slot photo skip, + object-weighted loss
    "32px-f4-skip-ow10": (
        {"resolution": 32, "space_to_depth_factor": 4, "photo_skip": True},
        {"batch-size": 8, "lr": 1e-3, "object-weight": 10},
    ),
    "64px-f8-skip-ow10": (
        {"resolution": 64, "space_to_depth_factor": 8, "photo_skip": True},
        {"batch-size": 8, "lr": 1e-3, "object-weight": 10},
    ),
    # + slot matching (train.loss): objects whose layers do not overlap may take either slot
    "64px-f8-skip-ow10-match": (
        {"resolution": 64, "space_to_depth_factor": 8, "photo_skip": True},
        {"batch-size": 8, "lr": 1e-3, "object-weight": 10, "slot-matching": True},
    ),
    # + the depth condition (cobl.depth): relative inverse depth of the renderer, beside the photo
    "64px-f8-skip-ow10-depth": (
        {"resolution": 64, "space_to_depth_factor": 8, "photo_skip": True, "depth_condition": True},
        {"batch-size": 8, "lr": 1e-3, "object-weight": 10},
    ),
    "64px-f8-skip-ow10-depth-match": (
        {"resolution": 64, "space_to_depth_factor": 8, "photo_skip": True, "depth_condition": True},
        {"batch-size": 8, "lr": 1e-3, "object-weight": 10, "slot-matching": True},
    ),
    # the same with depth a user would have: the renderer's depth degraded like a monocular estimate
    "64px-f8-skip-ow10-mono-match": (
        {"resolution": 64, "space_to_depth_factor": 8, "photo_skip": True, "depth_condition": True,
         "depth_source": "monocular"},
        {"batch-size": 8, "lr": 1e-3, "object-weight": 10, "slot-matching": True},
    ),
    "64px-f8-skip-ow10-depth-match-lr2e-3": (
        {"resolution": 64, "space_to_depth_factor": 8, "photo_skip": True, "depth_condition": True},
        {"batch-size": 8, "lr": 2e-3, "object-weight": 10, "slot-matching": True},
    ),
    "64px-f8-skip-ow10-depth-match-ema": (
        {"resolution": 64, "space_to_depth_factor": 8, "photo_skip": True, "depth_condition": True},
        {"batch-size": 8, "lr": 1e-3, "object-weight": 10, "slot-matching": True, "ema": True,
         "ema-decay": 0.995},
    ),
    "64px-f8-skip-ow10-depth-match-hw20": (
        {"resolution": 64, "space_to_depth_factor": 8, "photo_skip": True, "depth_condition": True},
        {"batch-size": 8, "lr": 1e-3, "object-weight": 10, "slot-matching": True, "hidden-weight": 20},
    ),
    # a finer latent grid: 64² through a 4x4 space-to-depth codec (16x16 latents)
    "64px-f4-skip-ow10-depth-match": (
        {"resolution": 64, "space_to_depth_factor": 4, "photo_skip": True, "depth_condition": True},
        {"batch-size": 8, "lr": 1e-3, "object-weight": 10, "slot-matching": True},
    ),
    # + a UNet twice as wide (block channels 64/128, head dim 16)
    "64px-f8-skip-ow10-depth-match-wide": (
        {"resolution": 64, "space_to_depth_factor": 8, "photo_skip": True, "depth_condition": True,
         "unet": {**tiny_unet_kwargs(), "block_out_channels": [64, 128], "attention_head_dim": [4, 8]}},
        {"batch-size": 8, "lr": 1e-3, "object-weight": 10, "slot-matching": True},
    ),
    "32px-f4-skip": (
        {"resolution": 32, "space_to_depth_factor": 4, "photo_skip": True}, {"batch-size": 8, "lr": 1e-3}
    ),
    "32px-f4-skip-ow10-lr2e-3": (
        {"resolution": 32, "space_to_depth_factor": 4, "photo_skip": True},
        {"batch-size": 8, "lr": 2e-3, "object-weight": 10},
    ),
}


def run_variant(name: str, data: Path, out: Path, steps: int, eval_scenes: int, num_objects: int) -> dict:
    overrides, train_opts = VARIANTS[name]
    run = out / name
    run.mkdir(parents=True, exist_ok=True)
    config = run / "config.json"
    text = tiny_config(num_objects=num_objects).replace(**overrides).to_json()
    # a run resumes (e.g. to more steps) only under the same config and train options
    fingerprint = json.dumps({"config": json.loads(text), "train": train_opts}, sort_keys=True)
    marker = run / "fingerprint.json"
    if (run / "run").exists() and (not marker.is_file() or marker.read_text() != fingerprint):
        shutil.rmtree(run / "run")  # never resume a checkpoint trained under other settings
    config.write_text(text)
    marker.write_text(fingerprint)
    argv = ["train", "--data", str(data / "shards" / "train-*.tar"), "--config", str(config),
            "--max-steps", str(steps), "--out", str(run / "run"), "--checkpoint-every", str(steps),
            "--validate-every", "0", "--no-progress", "--log-every", "10"]
    if any((run / "run" / "checkpoints").glob("step-*")):
        argv += ["--resume", "latest"]
    for k, v in train_opts.items():
        argv += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    t0 = time.perf_counter()
    assert cobl(argv) == 0
    train_s = time.perf_counter() - t0
    row = {"variant": name, "steps": steps, "train_s": round(train_s, 1), **overrides, **train_opts}
    for split in SCORED_SPLITS:
        metrics = run / f"metrics_{split}.json"
        t0 = time.perf_counter()
        assert cobl(["eval", "--model", str(run / "run"), "--data", str(data / "shards" / f"{split}-*.tar"),
                     "--limit", str(eval_scenes), "--sampling-steps", "20", "--selection-split", "val",
                     "--out", str(metrics)]) == 0
        row[f"eval_{split}_s"] = round(time.perf_counter() - t0, 1)
        result = json.loads(metrics.read_text())
        row[f"{split}/scenes"] = result["num_scenes"]
        row["depth_source"] = result["settings"]["depth_source"]
        for method, s in result["methods"].items():
            for key, short in COLUMNS:
                row[f"{split}/{method}/{short}"] = s[key]
                if key + "_ci" in s:
                    row[f"{split}/{method}/{short}_ci"] = s[key + "_ci"]
            row[f"{split}/{method}/recomp"] = s["recomposition_psnr"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--eval-scenes", type=int, default=48, help="scenes per scored split (val and train)")
    p.add_argument("--num-objects", type=int, default=4)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.variants.split(","):
        row = run_variant(name, args.data, args.out, args.steps, args.eval_scenes, args.num_objects)
        with (args.out / "results.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
