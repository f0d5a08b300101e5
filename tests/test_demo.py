"""A miniature `cobl demo` end to end: every artifact exists and parses, the report's numbers are the metrics
JSON's, and a rerun resumes instead of redoing finished stages."""

import json
import re
import tarfile

import pytest
from PIL import Image

from cobl.app.cli import main
from cobl.app.report import METRIC_COLUMNS, format_value

MINI = ["--scenes", "16", "--resolution", "32", "--samples", "4", "--objects", "2-3", "--num-objects", "3",
        "--max-steps", "4", "--batch-size", "2", "--eval-scenes", "2", "--sampling-steps", "2",
        "--workers", "1"]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    assert main(["demo", "--out", str(out), *MINI]) == 0
    return out


def test_demo_leaves_no_ray_instance_behind(demo_out):
    import ray

    assert not ray.is_initialized()  # the data stage shuts down the local Ray it started


def test_every_artifact_exists_and_parses(demo_out):
    for png in ("dataset_samples.png", "loss_curve.png", "predictions.png"):
        with Image.open(demo_out / png) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    manifest = json.loads((demo_out / "data" / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 16
    for shard in (demo_out / "data" / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            assert any(m.name.endswith(".rgb.png") for m in tar.getmembers())
    card = (demo_out / "data" / "README.md").read_text()
    assert card.startswith("---\n") and "\n---\n\n# " in card  # Hub front matter, then the title
    assert (demo_out / "data" / "croissant.json").is_file()
    assert (demo_out / "data" / "gallery" / "index.html").is_file()
    assert (demo_out / "run" / "final" / "model_index.json").is_file()
    # The default model is conditioned on the photo and the renderer's depth (cobl.depth).
    assert json.loads((demo_out / "model_config.json").read_text())["depth_condition"] is True
    assert "the photo and the renderer" in (demo_out / "report.html").read_text()
    lines = (demo_out / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    assert losses and all(loss > 0 for loss in losses)


def test_report_numbers_equal_metrics_json(demo_out):
    page = (demo_out / "report.html").read_text()
    embedded = json.loads(re.search(r'<script type="application/json" id="metrics-json">(.*?)</script>',
                                    page, re.S).group(1))
    for split in ("test", "train"):
        metrics = json.loads((demo_out / f"metrics_{split}.json").read_text())
        assert embedded[split] == metrics["summary"]
        for method in metrics["methods"]:
            rows = re.findall(rf'<tr data-method="{method}">(.*?)</tr>', page, re.S)
            assert rows, method
            row = rows[0] if split == "test" else rows[-1]
            for key, _, _ in METRIC_COLUMNS:
                shown = re.search(rf'<td data-key="{key}">(.*?)</td>', row).group(1)
                assert shown == format_value(metrics["summary"][method].get(key)), (split, method, key)


def test_rerun_resumes_without_redoing(demo_out, capsys):
    before = (demo_out / "run" / "final" / "model_index.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(demo_out), *MINI]) == 0
    printed = capsys.readouterr().out
    for stage in ("data", "publish", "train", "eval"):
        assert f"stage {stage} already done" in printed
    assert (demo_out / "run" / "final" / "model_index.json").stat().st_mtime_ns == before


def test_bad_option_is_one_line_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--objects", "5-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--objects" in err[0]
    assert not (tmp_path / "d").exists()


def test_gpu_scale_profile_is_the_sd_config_with_depth_and_needs_pretrained(tmp_path, capsys):
    import argparse

    from cobl.app.demo import gpu_scale_profile, register, write_model_config
    from cobl.model.configs import get_config

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["demo", "--out", str(tmp_path), "--gpu-scale", "--pretrained", "/models/sd"])
    gpu_scale_profile(args)
    config = get_config(str(write_model_config(tmp_path, args)))
    assert (config.name, config.codec, config.num_objects, config.resolution) == ("sd", "vae", 6, 512)
    assert config.depth_condition and not config.train_base
    assert (args.scenes, args.batch_size, args.lr) == (2500, 2, 1e-4)
    assert main(["demo", "--out", str(tmp_path / "g"), "--gpu-scale"]) == 2
    assert "--pretrained" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
