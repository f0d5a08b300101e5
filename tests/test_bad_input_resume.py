"""Resumes and reruns that cannot be stale (issue 20, item 4): ``cobl train --resume`` refuses options the
run was not trained with, naming each; ``cobl infer`` keys every result by model, photo, depth and sampler
settings, keeps it only when all are the same and recomputes it otherwise."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cobl.configs import tiny_config
from cobl.factory import build
from infer.pipeline import CObLPipeline
from tests.badinput import assert_refused, call, snapshot
from tests.shardmaker import write_shard

torch.set_num_threads(1)
RES = 16


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-step run of the tiny model at 16 px (tests that change it work on a copy)."""
    root = tmp_path_factory.mktemp("resume")
    write_shard(root / "shards" / "train-000000.tar", 6, size=RES, max_objects=2, seed=5)
    argv = train_argv(root, root / "run")
    import app.cli

    assert app.cli.main([str(a) for a in argv]) == 0
    return root


def set_flag(argv: list, flag: str, value) -> list:
    """``argv`` with ``flag``'s value replaced (or the flag added)."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def train_argv(root, out, *extra) -> list:
    return ["train", "--data", root / "shards" / "train-000000.tar", "--config", "tiny", "--num-objects", 2,
            "--resolution", RES, "--max-steps", 2, "--batch-size", 2, "--num-workers", 0,
            "--validate-every", 0, "--no-progress", "--out", out, *extra]  # fmt: skip


@pytest.mark.parametrize(
    "change, flag",
    [
        (["--lr", "0.002"], "--lr 0.0005 -> 0.002"),
        (["--resolution", "32"], "--resolution 16 -> 32"),
        (["--num-objects", "3"], "--num-objects 2 -> 3"),
        (["--object-weight", "3"], "--object-weight 0.0 -> 3.0"),
    ],
)
def test_resume_with_changed_options_is_refused_naming_each(capsys, run, change, flag):
    argv = set_flag([*train_argv(run, run / "run"), "--resume"], *change)
    line = assert_refused(capsys, argv, "--resume", flag, watch=run / "run")
    assert "trained with other options" in line


def test_resume_may_change_what_does_not_shape_the_model_and_extend_the_run(capsys, run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run / "run", out)
    argv = set_flag([*train_argv(run, out), "--resume", "--checkpoint-every", "7", "--log-every", "3"],
                    "--max-steps", 3)  # fmt: skip
    code, stdout, err = call(capsys, argv)
    assert code == 0, err
    assert "the run continues to step 3" in stdout
    assert json.loads((out / "final" / "model_index.json").read_text())["training"]["global_step"] == 3


def test_a_fresh_run_into_a_run_folder_needs_overwrite(capsys, run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run / "run", out)
    (out / "my_notes.txt").write_text("keep me")
    line = assert_refused(capsys, train_argv(run, out), "--out", watch=out)
    assert "--resume" in line and "--overwrite" in line
    argv = set_flag(train_argv(run, out, "--overwrite"), "--max-steps", 1)
    code, stdout, err = call(capsys, argv)
    assert code == 0, err and "starting the run again" in stdout
    assert (out / "my_notes.txt").read_text() == "keep me"  # nothing but the run's own entries deleted
    assert json.loads((out / "final" / "model_index.json").read_text())["training"]["global_step"] == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001"]


# ------------------------------------------------------------------------------------------- infer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("keyed")
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        config = tiny_config(num_objects=2, resolution=RES)
        model, codec, scheduler = build(config)
        with torch.no_grad():  # a model whose output depends on its weights (the photo skip starts at 0)
            for p in model.trainable_parameters():
                p.add_(0.05 * torch.randn_like(p))
        CObLPipeline.from_parts(model, scheduler, codec, config, global_step=0).save_pretrained(root / name)
    rgb = np.random.default_rng(0).integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "photo.png")
    return root


def infer(capsys, models, out, model="a", *extra, photo=None):
    argv = ["infer", "--model", models / model, "--image", photo or models / "photo.png", "--out", out,
            "--sampling-steps", "2", "--min-area", "0", "--min-visible", "0", *extra]  # fmt: skip
    code, stdout, err = call(capsys, argv)
    assert code == 0, err
    return stdout


def test_infer_keeps_a_result_only_for_the_same_model_photo_and_settings(capsys, models, tmp_path):
    out = tmp_path / "layers"
    first = infer(capsys, models, out)
    assert f"wrote {out / 'photo'}/" in first  # the folder it wrote, as it is
    kept = snapshot(out)
    assert "1 kept" in infer(capsys, models, out) and snapshot(out) == kept
    order = json.loads((out / "photo" / "order.json").read_text())
    assert "1 result folder(s) written" in infer(capsys, models, out, "b")  # another model: recomputed
    other = json.loads((out / "photo" / "order.json").read_text())
    assert other["result_inputs"]["model"] != order["result_inputs"]["model"]
    assert other["result_key"] != order["result_key"] and snapshot(out) != kept
    assert "wrote" in infer(capsys, models, out, "b", "--seed", "3")  # another setting: recomputed
    assert "1 kept" in infer(capsys, models, out, "b", "--seed", "3")
    photo = tmp_path / "photo.png"  # the same name, other pixels: recomputed
    Image.fromarray(np.zeros((RES, RES, 3), np.uint8)).save(photo)
    before = (out / "photo" / "order.json").read_text()
    assert "wrote" in infer(capsys, models, out, "b", "--seed", "3", photo=photo)
    assert (out / "photo" / "order.json").read_text() != before
