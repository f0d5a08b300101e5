"""Bad input, class 3: data and inputs that would hang a run or be read as something they are not (issue 20,
items 2, 3 and 5): shards that yield no usable sample stop training with one line naming the cause and the
flag; a sample whose layers disagree with its scene.json is corrupt, skipped and counted by training and
evaluation; depth inputs are checked for use, size and finiteness."""

from __future__ import annotations

import io
import json
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cobl.configs import tiny_config
from cobl.data import SkipSample, decode_sample, make_dataset, make_loader
from cobl.factory import build
from cobl.sample_check import LoaderStopped, SkipLedger
from core import schema
from core.policy import MAX_SKIPPED_IN_A_ROW
from infer.pipeline import CObLPipeline
from tests.badinput import assert_refused, call
from tests.shardmaker import make_scene, scene_members

torch.set_num_threads(1)
RES = 32


def write_samples(path, samples: list[dict[str, bytes]]) -> None:
    """A tar shard of the given member dicts (key -> name -> bytes), in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, members in enumerate(samples):
            for name, data in members.items():
                info = tarfile.TarInfo(f"k{i:04d}.{name}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))


def scenes(n: int, objects: int, size: int = RES, seed: int = 0) -> list[dict[str, bytes]]:
    rng = np.random.default_rng(seed)
    return [scene_members(make_scene(rng, size, objects), objects, f"k{i:04d}") for i in range(n)]


def drop_layer(members: dict[str, bytes], index: int) -> dict[str, bytes]:
    return {k: v for k, v in members.items() if k != schema.layer_name(index)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A photo-only and a depth-conditioned tiny model, saved as `cobl train` exports them."""
    root = tmp_path_factory.mktemp("models")
    for name, depth in (("photo", False), ("depth", True)):
        torch.manual_seed(0)
        config = tiny_config(num_objects=3, resolution=RES).replace(depth_condition=depth)
        model, codec, scheduler = build(config)
        CObLPipeline.from_parts(model, scheduler, codec, config, global_step=0).save_pretrained(root / name)
    Image.fromarray(np.full((RES, RES, 3), 128, np.uint8)).save(root / "photo.png")
    return root


# ------------------------------------------------------------------------------------------- training


def test_every_sample_above_k_stops_training_naming_num_objects(capsys, tmp_path):
    write_samples(tmp_path / "d" / "train-000000.tar", scenes(4, 3))
    argv = ["train", "--data", tmp_path / "d" / "*.tar", "--num-objects", "2", "--resolution", RES,
            "--out", tmp_path / "run"]  # fmt: skip
    line = assert_refused(capsys, argv, "--num-objects", "4 too_many_objects", watch=tmp_path)
    assert "K = 2" in line


def test_an_empty_shard_stops_training_naming_data(capsys, tmp_path):
    write_samples(tmp_path / "d" / "train-000000.tar", [])
    argv = ["train", "--data", tmp_path / "d" / "train-000000.tar", "--out", tmp_path / "run"]
    assert_refused(capsys, argv, "--data", "no sample at all", watch=tmp_path)


def test_depth_config_on_data_without_depth_names_the_config(capsys, tmp_path):
    samples = [{k: v for k, v in s.items() if k != schema.DEPTH} for s in scenes(3, 2)]
    write_samples(tmp_path / "d" / "train-000000.tar", samples)
    config = tmp_path / "depth.json"
    config.write_text(tiny_config(num_objects=3, resolution=RES).replace(depth_condition=True).to_json())
    argv = ["train", "--data", tmp_path / "d" / "train-000000.tar", "--config", config,
            "--out", tmp_path / "run"]  # fmt: skip
    assert_refused(capsys, argv, "--config", "depth.npy", watch=tmp_path)


def test_skips_in_a_row_stop_the_endless_stream_with_one_line_even_from_a_worker(tmp_path):
    """The training stream is endless: past MAX_SKIPPED_IN_A_ROW skips it stops, and the error crosses the
    DataLoader worker boundary as the same one-line UserError naming the option."""
    write_samples(tmp_path / "a.tar", scenes(5, 3, size=16))
    dataset = make_dataset(str(tmp_path / "a.tar"), num_objects=1, resolution=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(LoaderStopped) as caught:
            next(iter(make_loader(dataset, num_workers=1)))
    err = caught.value
    assert err.option == "num_objects" and "\n" not in err.as_flag()
    assert err.as_flag().startswith(f"--num-objects: {MAX_SKIPPED_IN_A_ROW} samples in a row")


def test_one_warning_per_reason_not_one_per_sample():
    counts = {"decoded": 0, "corrupt": 0, "too_many_objects": 0}
    ledger = SkipLedger(counts, num_objects=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(50):
            ledger.skipped("too_many_objects", f"sample {i}: 3 objects > K=2")
            ledger.decoded()
    assert counts["too_many_objects"] == 50 and len(caught) == 1


def test_corrupt_share_above_the_bound_stops():
    ledger = SkipLedger({"decoded": 0, "corrupt": 0}, num_objects=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(LoaderStopped, match="corrupt") as caught:
            for _ in range(20):
                ledger.decoded()
                ledger.decoded()
                ledger.skipped("corrupt", "sample x: broken")
    assert caught.value.option == "data" and ledger.read == 20  # 6 of 20 corrupt: above 20 %


# ------------------------------------------------------------------------------------------- records


def test_a_lost_layer_member_is_corrupt_not_a_scene_with_fewer_objects():
    members = scenes(1, 3)[0]
    assert decode_sample(dict(members, __key__="k"), 3, RES).num_objects == 3
    with pytest.raises(SkipSample, match="2 non-empty layer.*declares 3"):
        decode_sample(dict(drop_layer(members, 2), __key__="k"), 3, RES)
    with pytest.raises(SkipSample, match="layer_01 missing"):
        decode_sample(dict(drop_layer(members, 1), __key__="k"), 3, RES)
    with pytest.raises(SkipSample, match="scene.json"):
        decode_sample({k: v for k, v in members.items() if k != schema.SCENE} | {"__key__": "k"}, 3, RES)


def test_eval_skips_counts_and_reports_corrupt_samples(capsys, tmp_path, models):
    samples = scenes(4, 2)
    samples[1] = drop_layer(samples[1], 1)
    write_samples(tmp_path / "test-000000.tar", samples)
    out = tmp_path / "metrics.json"
    argv = ["eval", "--model", models / "photo", "--data", tmp_path / "test-000000.tar", "--out", out,
            "--sampling-steps", "1", "--no-unguided"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, stdout, _ = call(capsys, argv)
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["num_scenes"] == 3 and metrics["skipped"]["corrupt"] == 1
    assert "skipped 1 corrupt" in stdout


def test_eval_stops_when_too_much_of_the_data_is_corrupt(capsys, tmp_path, models):
    samples = [drop_layer(s, 0) if i % 3 == 0 else s for i, s in enumerate(scenes(21, 2, size=16))]
    write_samples(tmp_path / "test-000000.tar", samples)
    argv = ["eval", "--model", models / "photo", "--data", tmp_path / "test-000000.tar",
            "--out", tmp_path / "m" / "metrics.json", "--sampling-steps", "1", "--no-unguided"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_refused(capsys, argv, "--data", "corrupt", watch=tmp_path)


# ------------------------------------------------------------------------------------------- depth


def test_depth_given_to_a_model_without_depth_is_an_error(capsys, tmp_path, models):
    np.save(tmp_path / "d.npy", np.ones((RES, RES), np.float32))
    base = ["infer", "--model", models / "photo", "--image", models / "photo.png", "--out", tmp_path / "o"]
    assert_refused(capsys, [*base, "--depth", tmp_path / "d.npy"], "--depth", watch=tmp_path)
    assert_refused(capsys, [*base, "--depth-model", "/nonexistent"], "--depth-model", watch=tmp_path)


def test_depth_model_without_depth_is_an_error(capsys, tmp_path, models):
    argv = ["infer", "--model", models / "depth", "--image", models / "photo.png", "--out", tmp_path / "o"]
    assert_refused(capsys, argv, "--depth", "depth-conditioned", watch=tmp_path)


@pytest.mark.parametrize(
    "name, values, fragment",
    [
        ("small.npy", np.ones((8, 8), np.float32), "smaller than"),
        ("nan.npy", np.full((RES, RES), np.nan, np.float32), "not finite"),
        ("zero.npy", np.zeros((RES, RES), np.float32), "> 0"),
        ("wide.npy", np.ones((RES, 2 * RES), np.float32), "aspect ratio"),
        ("flat.png", np.full((RES, RES), 7, np.uint8), "same value"),
        ("cube.npy", np.ones((RES, RES, 3), np.float32), "2-D"),
    ],
)
def test_depth_files_are_checked(capsys, tmp_path, models, name, values, fragment):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, values)
    else:
        Image.fromarray(values).save(path)
    argv = ["infer", "--model", models / "depth", "--image", models / "photo.png", "--depth", path,
            "--out", tmp_path / "o"]  # fmt: skip
    assert_refused(capsys, argv, "--depth", name, fragment, watch=tmp_path)


def test_a_float_image_outside_zero_one_is_refused(capsys, tmp_path, models):
    Image.fromarray(np.full((RES, RES), 5.0, np.float32)).save(tmp_path / "float.tif")
    argv = ["infer", "--model", models / "photo", "--image", tmp_path / "float.tif", "--out", tmp_path / "o"]
    assert_refused(capsys, argv, "float.tif", "outside", watch=tmp_path)
