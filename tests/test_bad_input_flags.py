"""Bad input, class 2: values out of range, names not known, config files that do not say what they seem
to (issue 20, items 2, 5 and 6). Each case: exit 2, one line naming the flag or file, nothing written."""

from __future__ import annotations

import json

import pytest

from tests.badinput import assert_refused
from tests.shardmaker import write_shard


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("flags") / "shards" / "train-000000.tar"
    write_shard(path, 2, size=16, max_objects=2, seed=4)
    return path


SCENE = ["synth", "scene", "--seed", "1", "--samples", "1"]
RUN = ["synth", "run", "--scenes", "4"]


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--resolution", "100000"], "--resolution"),
        (["--samples", "10000000"], "--samples"),
        (["--seed", "-1"], "--seed"),
        (["--scenes", "0"], "--scenes"),
    ],
)
def test_scene_bounds(capsys, tmp_path, extra, flag):
    assert_refused(capsys, [*SCENE, *extra, "--out", tmp_path / "s"], flag, watch=tmp_path)


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--resolution", "100000"], "--resolution"),
        (["--progress-every", "0"], "--progress-every"),
        (["--progress-every", "nan"], "--progress-every"),
        (["--placement-timeout", "0"], "--placement-timeout"),
        (["--seed", "-1"], "--seed"),
        (["--workers", "0"], "--workers"),
        (["--shard-size", "0"], "--shard-size"),
        (["--scenes", "1000000000"], "--scenes"),
        (["--address", "127.0.0.1:1"], "--address"),
        (["--address", "not-an-address"], "--address"),
    ],
)
def test_synth_run_bounds_before_ray(capsys, tmp_path, extra, flag):
    assert_refused(capsys, [*RUN, *extra, "--out", tmp_path / "data"], flag, watch=tmp_path)


def test_address_that_does_not_answer_is_bounded(capsys, tmp_path):
    """A port nothing listens on: refused at once (and never more than RAY_CONNECT_TIMEOUT_S)."""
    line = assert_refused(capsys, [*RUN, "--address", "127.0.0.1:1", "--out", tmp_path / "d"], "--address")
    assert "no Ray cluster answers" in line


def test_publish_gallery_size(capsys, tmp_path):
    argv = ["synth", "publish", tmp_path, "--gallery-samples", "-1"]
    assert_refused(capsys, argv, "--gallery-samples", watch=tmp_path)


@pytest.mark.parametrize("flag", ["--dataset-seed", "--index"])
def test_synth_seed_negative(capsys, flag):
    argv = ["synth", "seed", "--dataset-seed", "3", "--index", "2"]
    argv[argv.index(flag) + 1] = "-1"
    assert_refused(capsys, argv, flag)


@pytest.mark.parametrize(
    "doc, fragments",
    [
        ({"min_objets": 2}, ["min_objets", "'min_objects'"]),
        ({"min_objects": "2"}, ["min_objects", "integer"]),
        ({"spread": [0.1, "wide"]}, ["spread"]),
        ([1, 2], ["JSON object"]),
    ],
)
def test_sampler_config_json_is_checked(capsys, tmp_path, doc, fragments):
    path = tmp_path / "sampler.json"
    path.write_text(json.dumps(doc))
    argv = [*RUN, "--sampler-config", path, "--out", tmp_path / "data"]
    assert_refused(capsys, argv, "sampler.json", *fragments, watch=tmp_path)


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--lr", "nan"], "--lr"),
        (["--lr", "-1"], "--lr"),
        (["--lr-scheduler", "bogus"], "--lr-scheduler"),
        (["--num-workers", "-1"], "--num-workers"),
        (["--checkpoint-every", "0"], "--checkpoint-every"),
        (["--resolution", "100000"], "--resolution"),
        (["--seed", "-1"], "--seed"),
        (["--ema-decay", "2"], "--ema-decay"),
        (["--cond-dropout", "1.5"], "--cond-dropout"),
        (["--min-lr", "1", "--lr", "0.001"], "--min-lr"),
        (["--mixed-precision", "fp8"], "--mixed-precision"),
        (["--num-objects", "0"], "--num-objects"),
        (["--log-every", "0"], "--log-every"),
        (["--threads", "-1"], "--threads"),
    ],
)
def test_train_values_before_any_work(capsys, tmp_path, shard, extra, flag):
    argv = ["train", "--data", shard, "--config", "tiny", "--out", tmp_path / "run", *extra]
    assert_refused(capsys, argv, flag, watch=tmp_path)


@pytest.mark.parametrize(
    "change, fragments",
    [
        ({"depth_conditon": True}, ["depth_conditon", "'depth_condition'"]),
        ({"num_objects": "4"}, ["num_objects", "integer"]),
        ({"photo_skip": "yes"}, ["photo_skip", "true/false"]),
        ({"codec": None}, ["codec"]),
    ],
)
def test_model_config_json_is_checked(capsys, tmp_path, shard, change, fragments):
    from cobl.configs import tiny_config

    doc = {**json.loads(tiny_config().to_json()), **change}
    path = tmp_path / "model.json"
    path.write_text(json.dumps(doc))
    argv = ["train", "--data", shard, "--config", path, "--out", tmp_path / "run"]
    assert_refused(capsys, argv, "model.json", *fragments, watch=tmp_path)
    assert_refused(capsys, ["model", "summary", "--config", path], "model.json", *fragments)


def test_model_config_missing_a_key(capsys, tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"name": "tiny", "num_objects": 4, "resolution": 64}))
    assert_refused(capsys, ["model", "summary", "--config", path], "model.json", "'codec'", watch=tmp_path)
