"""The trainer: learning on a fixed batch, kill-and-resume, 2-process DDP equivalence, CLI errors, Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cobl.configs import tiny_config
from cobl.data import collate, decode_sample
from cobl.factory import build
from infer.pipeline import CObLPipeline, export_info
from tests.shardmaker import write_shard
from train.loop import SimulatedKill, train
from train.loss import diffusion_loss
from train.options import TrainOptions

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("shards")
    for i in range(2):
        write_shard(root / f"train-{i:06d}.tar", 10, size=32, max_objects=3, seed=i)
    return str(root / "train-{000000..000001}.tar")


def _opts(shards: str, out: Path, **kw) -> TrainOptions:
    base = dict(
        data=shards,
        out=str(out),
        num_objects=3,
        resolution=32,
        max_steps=4,
        batch_size=2,
        checkpoint_every=2,
        validate_every=0,
        num_workers=1,
        log_every=1,
        progress=False,
        shuffle_buffer=8,
    )
    base.update(kw)
    return TrainOptions(**base)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tmp_path):
    write_shard(tmp_path / "s.tar", 4, size=32, max_objects=3, seed=5)
    import webdataset as wds

    raw = list(wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False))
    batch = collate([decode_sample(s, 3, 32) for s in raw])
    torch.manual_seed(0)
    model, codec, sched = build(tiny_config(num_objects=3, resolution=32))
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = diffusion_loss(model, codec, sched, batch, step=0)  # step fixed: the same noise every time
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("cache", ["disk", "off"])  # prepared once (reused on resume) / the streaming path
def test_kill_and_resume_continues_the_same_trajectory(shards, tmp_path, cache, capsys):
    full = train(_opts(shards, tmp_path / "full", ema=True, cache=cache))
    with pytest.raises(SimulatedKill):
        train(_opts(shards, tmp_path / "cut", ema=True, cache=cache), stop_after_steps=3)  # ckpt: step 2
    capsys.readouterr()
    resumed = train(_opts(shards, tmp_path / "cut", ema=True, resume="latest", cache=cache))
    if cache == "disk":  # the killed run's cache entries are complete and reused, not encoded again
        assert "cache (disk): 20 scenes, 0 shards encoded, 2 reused" in capsys.readouterr().out
    assert sorted(resumed["losses"]) == [3, 4]
    for step in (3, 4):
        assert resumed["losses"][step] == pytest.approx(full["losses"][step], rel=1e-5, abs=1e-6)
    a = load_file(tmp_path / "full" / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    meta = export_info(tmp_path / "full" / "final")
    assert meta["num_objects"] == 3 and meta["global_step"] == 4 and meta["codec"] == "space_to_depth"
    assert meta["ema"] is True and meta["config"]["resolution"] == 32
    loaded = CObLPipeline.from_pretrained(tmp_path / "full" / "final")
    assert loaded.unet.num_slots == 4 and loaded.cobl_config == tiny_config(num_objects=3, resolution=32)


_FRESH_PROCESS_SAMPLE = """
import sys, torch
from infer.pipeline import CObLPipeline
pipe = CObLPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
photo = torch.load(sys.argv[2])
out = pipe(photo, num_inference_steps=3, generator=torch.Generator().manual_seed(11))
torch.save({"layers": out.layers, "background": out.background}, sys.argv[3])
"""


def test_export_loads_in_a_fresh_process_with_the_same_layers(shards, tmp_path):
    """``cobl train``'s RUN/final is a diffusers pipeline folder: ``CObLPipeline.from_pretrained`` in a new
    Python process samples exactly what the in-process model sampled right after training."""
    import numpy as np

    from tests.shardmaker import make_scene

    result = train(_opts(shards, tmp_path / "run", max_steps=3, checkpoint_every=100))
    assert result["final"] == str(tmp_path / "run" / "final")
    assert (tmp_path / "run" / "final" / "model_index.json").is_file()
    assert not (tmp_path / "run" / "final" / "cobl.json").exists()
    pipe = result["pipeline"]
    pipe.unet.eval()
    photo = torch.from_numpy(make_scene(np.random.default_rng(3), 32, 3)["photo"]).float()[None]
    torch.save(photo, tmp_path / "photo.pt")
    here = pipe(photo, num_inference_steps=3, generator=torch.Generator().manual_seed(11))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", _FRESH_PROCESS_SAMPLE, result["final"], str(tmp_path / "photo.pt")]
    proc = subprocess.run(
        [*cmd, str(tmp_path / "out.pt")], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    there = torch.load(tmp_path / "out.pt")
    assert torch.equal(here.layers, there["layers"]) and torch.equal(here.background, there["background"])
    assert not torch.equal(here.layers, pipe(photo, num_inference_steps=3).layers)  # the seed matters


def test_two_process_ddp_equals_one_process_with_doubled_batch(shards, tmp_path):
    """The single process holds its prepared examples in memory; the two ranks fill a disk cache together
    (one shard each) and read both shards from it: the same examples in the same order."""
    single = _opts(
        shards, tmp_path / "single", max_steps=3, batch_size=4, num_workers=2, checkpoint_every=100,
        cache="memory",
    )
    train(single)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "app.train_process",
        "--num-processes",
        "2",
        *_argv(
            _opts(shards, tmp_path / "ddp", max_steps=3, batch_size=2, num_workers=1, checkpoint_every=100,
                  cache="disk")
        ),
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(tmp_path / "single" / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "ddp" / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    changed = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
        changed += int(not torch.equal(a[k], load_bundle_init(k)))
    assert changed > 0


_INIT: dict[str, torch.Tensor] = {}


def load_bundle_init(key: str) -> torch.Tensor:
    """The initial weights (seed 0) of the same model, to check that training moved them."""
    if not _INIT:
        torch.manual_seed(0)
        model, _, _ = build(tiny_config(num_objects=3, resolution=32))
        _INIT.update({k: v.detach().clone() for k, v in model.state_dict().items()})
    return _INIT[key]


def _argv(opts: TrainOptions) -> list[str]:
    from app.train_flags import options_to_argv

    return options_to_argv(opts)


def test_val_learning_curve_is_scored_like_cobl_eval(shards, tmp_path):
    """``--val-data``: every --val-every steps and at the last one, the guided sampler's val metrics."""
    from train.loop import CURVE_METRICS, VAL_CURVE

    val = str(Path(shards.split("{")[0]).parent / "train-000001.tar")
    train(_opts(shards, tmp_path / "run", max_steps=3, val_data=val, val_every=2, val_scenes=2,
                val_sampling_steps=2))
    points = [json.loads(line) for line in (tmp_path / "run" / VAL_CURVE).read_text().splitlines()]
    assert [p["step"] for p in points] == [2, 3]
    for p in points:
        assert p["scenes"] == 2 and set(CURVE_METRICS) <= set(p)
    # The last point is the exported model, so `cobl eval`'s own evaluation of it gives the same numbers.
    from infer.evaluate import MODEL, evaluate
    from infer.pipeline import load_pipeline

    again = evaluate(load_pipeline(tmp_path / "run"), val, limit=2, unguided=False, progress=False,
                     num_inference_steps=2)["methods"][MODEL]
    for key in ("amodal_miou", "count_accuracy", "amodal_miou_strict"):
        assert points[-1][key] == pytest.approx(again[key], abs=1e-9), key


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent/train-{000000..000003}.tar"], "--data"),
        (["--val-data", "/nonexistent/val-*.tar"], "--val-data"),
        (["--config", "enormous"], "--config"),
        (["--config", "sd"], "--pretrained"),
        (["--cache", "sometimes"], "--cache"),
    ],
)
def test_bad_data_or_config_is_a_one_line_error(shards, tmp_path, capsys, args, message):
    # ``app.cli_train.main``: the handler of ``cobl train`` and ``python -m app.train_process``.
    from app.cli_train import main

    argv = ["--data", shards, "--out", str(tmp_path / "run"), "--max-steps", "1", *args]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cobl: error:") and message in lines[0], lines
    assert not (tmp_path / "run" / "final").exists()


# Ray Train wiring: ~40-60 s (Ray start-up); nothing else covers it, so it runs by default.
def test_ray_train_with_two_local_cpu_workers(shards, tmp_path):
    pytest.importorskip("ray.train")
    from train.ray_train import run_ray

    result = run_ray(
        _opts(shards, tmp_path / "ray", max_steps=2, checkpoint_every=100),
        num_workers=2,
        use_gpu=False,
        local=True,
    )
    assert result["global_step"] == 2
    assert result["num_objects"] == 3 and result["final"] == str(tmp_path / "ray" / "final")
    assert CObLPipeline.from_pretrained(tmp_path / "ray" / "final").unet.num_slots == 4
