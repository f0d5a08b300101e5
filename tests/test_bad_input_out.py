"""Bad input, class 1: ``--out``. Never delete or replace what a command did not create; an unwritable
``--out`` fails on one line before the work (issue 20, items 1 and 6). No rendering, no training: every
refusal comes before the work."""

from __future__ import annotations

import json

import pytest

from core.outdir import MARKER
from tests.badinput import assert_refused, call
from tests.shardmaker import write_shard

THESIS = "chapter 1: do not delete me\n"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A working folder holding someone's thesis (the current directory of the command) and notes."""
    root = tmp_path / "home"
    (root / "in").mkdir(parents=True)
    (root / "in" / "thesis.txt").write_text(THESIS)
    (root / "docs").mkdir()
    (root / "docs" / "notes.txt").write_text(THESIS)
    monkeypatch.chdir(root / "in")
    return root


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "shards" / "train-000000.tar"
    write_shard(path, 3, size=16, max_objects=2, seed=3)
    return path


SCENE = ["synth", "scene", "--seed", "1", "--resolution", "32", "--samples", "1"]


@pytest.mark.parametrize("out", [".", "..", "/"])
def test_scene_refuses_the_current_folder_its_parents_and_root(capsys, home, out):
    line = assert_refused(capsys, [*SCENE, "--out", out], "--out", watch=home)
    assert "current directory" in line


def test_scene_refuses_a_folder_holding_other_files(capsys, home):
    assert_refused(capsys, [*SCENE, "--out", home / "docs"], "--out", "not written by", watch=home)


def test_scene_refuses_its_own_output_without_overwrite(capsys, home):
    own = home / "scene"
    own.mkdir()
    (own / MARKER).write_text(json.dumps({"command": "synth scene"}))
    (own / "rgb.png").write_bytes(b"earlier")
    assert_refused(capsys, [*SCENE, "--out", own], "--out", "--overwrite", watch=home)


def test_scene_refuses_another_commands_output_even_with_overwrite(capsys, home):
    other = home / "vae"
    other.mkdir()
    (other / MARKER).write_text(json.dumps({"command": "train-vae"}))
    assert_refused(capsys, [*SCENE, "--out", other, "--overwrite"], "--out", "synth scene", watch=home)


def test_scene_refuses_a_file_as_out(capsys, home):
    assert_refused(capsys, [*SCENE, "--out", home / "in" / "thesis.txt"], "--out", "not a folder", watch=home)


@pytest.mark.parametrize(
    "argv",
    [
        [*SCENE, "--out", "{file}/scene"],
        ["synth", "run", "--scenes", "2", "--out", "{file}/data"],
        ["train", "--data", "{shard}", "--out", "{file}/run"],
        ["train", "--data", "{shard}", "--out", "/proc/cobl-bad-input/run"],
        ["infer", "--model", "{home}/no-model", "--image", "{photo}", "--out", "{file}/layers"],
        ["eval", "--model", "{home}/no-model", "--data", "{shard}", "--out", "{file}/metrics.json"],
        ["train-vae", "--data", "{shard}", "--out", "{file}/vae"],
    ],
    ids=["scene", "run", "train", "train-proc", "infer", "eval", "train-vae"],
)
def test_unwritable_out_is_one_line_before_any_work(capsys, home, shard, argv):
    photo = home / "photo.png"
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 10, 10)).save(photo)
    names = {"file": home / "in" / "thesis.txt", "shard": shard, "home": home, "photo": photo}
    argv = [str(a).format(**names) for a in argv]
    assert_refused(capsys, argv, "--out", watch=home)


def test_splinelens_unwritable_out_fails_before_training(capsys, home):
    from splinelens.cli import main

    before = sorted(p.name for p in home.rglob("*"))
    code = main(["train", "--steps", "10", "--out", str(home / "in" / "thesis.txt" / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--out" in err[0] and "is a file" in err[0]
    assert sorted(p.name for p in home.rglob("*")) == before


def test_synth_run_refuses_a_foreign_folder(capsys, home):
    assert_refused(capsys, ["synth", "run", "--scenes", "2", "--out", home / "docs"], "--out", watch=home)


def test_train_vae_and_prior_refuse_a_foreign_folder(capsys, home, shard):
    assert_refused(capsys, ["train-vae", "--data", shard, "--out", home / "docs"], "--out", watch=home)
    argv = ["train-prior", "--data", shard, "--config", "tiny", "--out", home / "docs"]
    assert_refused(capsys, argv, "--out", "not written by", watch=home)


def test_rerender_refuses_a_foreign_folder(capsys, home):
    from synth.dataset.manifest import Manifest
    from synth.dataset.plan import make_config

    data = home / "data"
    Manifest(config=make_config(2, resolution=32).to_dict()).save(data)
    argv = ["synth", "rerender", data, "--index", "0", "--out", home / "docs"]
    assert_refused(capsys, argv, "--out", watch=home)


def test_train_refuses_a_foreign_folder_and_an_earlier_run(capsys, home, shard):
    assert_refused(capsys, ["train", "--data", shard, "--out", home / "docs"], "--out", watch=home)
    run = home / "run"
    (run / "checkpoints" / "step-00000010").mkdir(parents=True)
    (run / "checkpoints" / "step-00000010" / "trainer_state.json").write_text('{"global_step": 10}')
    (run / "run_options.json").write_text(json.dumps({"options": {}, "model_config": {}}))
    line = assert_refused(capsys, ["train", "--data", shard, "--out", run], "--out", watch=home)
    assert "--resume" in line and "--overwrite" in line


def test_infer_refuses_a_foreign_folder(capsys, home):
    from PIL import Image

    Image.new("RGB", (16, 16)).save(home / "photo.png")
    argv = ["infer", "--model", home / "none", "--image", home / "photo.png", "--out", home / "docs"]
    assert_refused(capsys, argv, "--out", watch=home)


def test_eval_refuses_a_foreign_file_and_keeps_its_own_without_overwrite(capsys, home, shard):
    argv = ["eval", "--model", home / "none", "--data", shard, "--out", home / "in" / "thesis.txt"]
    assert_refused(capsys, argv, "--out", "not written by", watch=home)
    earlier = home / "metrics.json"
    earlier.write_text(json.dumps({"method_order": [], "methods": {}, "num_scenes": 1}))
    argv = ["eval", "--model", home / "none", "--data", shard, "--out", earlier]
    assert_refused(capsys, argv, "--out", "--overwrite", watch=home)
    code, _, err = call(capsys, [*argv, "--overwrite"])  # allowed now: it fails on the model instead
    assert code == 2 and "--model" in err and earlier.is_file()


def test_atomic_path_never_replaces_the_current_folder(home):
    from core.atomic import atomic_path
    from core.errors import UserError

    for target in (".", "..", "/"):
        with pytest.raises(UserError, match="current directory"):
            with atomic_path(target) as tmp:
                tmp.mkdir()
    assert (home / "in" / "thesis.txt").read_text() == THESIS
    assert sorted(p.name for p in (home / "in").iterdir()) == ["thesis.txt"]  # no temporary left either


def test_atomic_replace_of_a_folder_keeps_the_old_one_when_the_block_fails(tmp_path):
    from core.atomic import atomic_path

    target = tmp_path / "scene"
    target.mkdir()
    (target / "rgb.png").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "rgb.png").write_text("half")
            raise RuntimeError("killed")
    assert (target / "rgb.png").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]
    with atomic_path(target) as tmp:
        (tmp / "f").parent.mkdir()
        (tmp / "rgb.png").write_text("new")
    assert [p.name for p in target.iterdir()] == ["rgb.png"] and (target / "rgb.png").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]  # the old one, moved aside, is gone
