"""Ray Train under failure: a training worker process SIGKILLed mid-run makes Ray Train (FailureConfig)
restart the group, which resumes from the run's latest checkpoint; the final weights equal an uninterrupted
run's."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.shardmaker import write_shard
from train.loop import CHECKPOINT_DIR, train
from train.options import TrainOptions

torch.set_num_threads(1)


def _opts(data: str, out: Path) -> TrainOptions:
    return TrainOptions(
        data=data,
        out=str(out),
        num_objects=3,
        resolution=32,
        max_steps=8,
        batch_size=2,
        checkpoint_every=2,
        validate_every=0,
        num_workers=1,
        log_every=1,
        progress=False,
        shuffle_buffer=8,
    )


def _train_worker_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            except OSError:
                continue
            if b"RayTrainWorker" in cmdline:
                pids.append(int(entry))
    return pids


def _weights(out: Path) -> dict[str, torch.Tensor]:
    files = sorted((out / "final").rglob("*.safetensors"))
    assert files, f"no exported weights under {out / 'final'}"
    merged: dict[str, torch.Tensor] = {}
    for f in files:
        merged.update({f"{f.relative_to(out)}:{k}": v for k, v in load_file(f).items()})
    return merged


def test_a_killed_ray_train_worker_resumes_to_the_same_final_weights(tmp_path):
    pytest.importorskip("ray.train")
    from train.ray_train import run_ray

    for i in range(2):
        write_shard(tmp_path / f"train-{i:06d}.tar", 8, size=32, max_objects=3, seed=i)
    data = str(tmp_path / "train-{000000..000001}.tar")

    killed: list[tuple[int, str]] = []

    def kill_after_first_checkpoint() -> None:
        ckpts = tmp_path / "ray" / CHECKPOINT_DIR
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            done = sorted(p.name for p in ckpts.glob("step-*") if (p / "trainer_state.json").is_file())
            pids = _train_worker_pids()
            if done and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], done[-1]))
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    result = run_ray(_opts(data, tmp_path / "ray"), num_workers=1, use_gpu=False, local=True)
    watcher.join(timeout=5)
    assert killed, "the worker was never killed"
    assert killed[0][1] != "step-000008", "killed only after the last checkpoint: nothing was resumed"
    assert result["global_step"] == 8
    logged = (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in logged]
    # resumed, not restarted from scratch: step 1 was logged once, and every step up to the end was trained
    assert steps.count(1) == 1 and sorted(set(steps)) == list(range(1, 9)), steps

    train(_opts(data, tmp_path / "plain"))  # the same options, uninterrupted, no Ray
    resumed, plain = _weights(tmp_path / "ray"), _weights(tmp_path / "plain")
    assert resumed.keys() == plain.keys()
    for k in plain:
        assert torch.equal(resumed[k], plain[k]), k
