"""A miniature `cobl demo` end to end: every artifact exists and parses, the report's numbers are the metrics
JSON's, and a rerun resumes instead of redoing finished stages."""

import json
import math
import re
import tarfile

import pytest
from PIL import Image

from app.cli import main
from app.report import METRIC_COLUMNS, format_cell

MINI = ["--scenes", "16", "--resolution", "32", "--samples", "4", "--min-objects", "2", "--max-objects", "3",
        "--num-objects", "3",
        "--max-steps", "4", "--batch-size", "2", "--val-scenes", "2", "--eval-scenes", "2",
        "--fit-scenes", "2", "--sampling-steps", "2", "--workers", "1",
        "--split", "train=0.5,val=0.25,test=0.25"]
KEYS = ("amodal_miou", "amodal_miou_occluded", "amodal_miou_strict", "hidden_recall", "hidden_precision",
        "fg_ari", "count_accuracy", "order_accuracy")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    assert main(["demo", "--out", str(out), *MINI]) == 0
    return out


def test_demo_leaves_no_ray_instance_behind(demo_out):
    import ray

    assert not ray.is_initialized()  # the data stage shuts down the local Ray it started


def test_every_artifact_exists_and_parses(demo_out):
    for png in ("dataset_samples.png", "loss_curve.png", "val_curve.png", "predictions.png",
                "predictions_val.png"):
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
    curve = [json.loads(line) for line in (demo_out / "run" / "val_curve.jsonl").read_text().splitlines()]
    assert curve[-1]["step"] == 4 and curve[-1]["scenes"] == 2  # the learning curve on val ends at the end
    # The default model is conditioned on the photo and a simulated monocular depth (cobl.depth), never
    # on the renderer's exact depth.
    config = json.loads((demo_out / "model_config.json").read_text())
    assert config["depth_condition"] is True and config["depth_source"] == "monocular"
    assert "simulated monocular depth" in (demo_out / "report.html").read_text()
    assert json.loads((demo_out / "data" / "manifest.json").read_text())["config"]["sampler"][
        "completion_fraction"] == 0.8
    assert "completion_fraction of 0.8" in (demo_out / "data" / "README.md").read_text()


def test_metrics_keys_protocol_and_intervals(demo_out):
    for split in ("val", "test", "train"):
        metrics = json.loads((demo_out / f"metrics_{split}.json").read_text())
        assert metrics["settings"]["depth_source"] == "monocular" and not metrics["settings"]["oracle_inputs"]
        assert metrics["settings"]["selection_split"] == "val" and metrics["settings"]["split"] == split
        assert metrics["num_scenes"] == 2
        for method in metrics["method_order"]:
            summary = metrics["methods"][method]
            for key in KEYS:
                assert key in summary and key + "_ci" in summary, (split, method, key)
                if summary[key] is not None:
                    low, high = summary[key + "_ci"]
                    assert low <= summary[key] + 1e-9 and summary[key] <= high + 1e-9, (split, method, key)
    assert json.loads((demo_out / "metrics_test.json").read_text())["method_order"] == [
        "model", "unguided", "visible_only"]
    records = [json.loads(line) for line in (demo_out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]  # 4 steps, logged at the first and every 10th
    assert math.isfinite(records[0]["loss"]) and records[0]["lr"] > 0


def test_report_numbers_equal_metrics_json(demo_out):
    page = (demo_out / "report.html").read_text()
    embedded = json.loads(re.search(r'<script type="application/json" id="metrics-json">(.*?)</script>',
                                    page, re.S).group(1))
    tables = {"test": 0, "val": 1, "train": 2}  # the report's table order
    for split, table in tables.items():
        metrics = json.loads((demo_out / f"metrics_{split}.json").read_text())
        assert embedded[split] == metrics["methods"]
        for method in metrics["method_order"]:
            rows = re.findall(rf'<tr data-method="{method}">(.*?)</tr>', page, re.S)
            assert len(rows) == (3 if method != "unguided" else 1), method
            row = rows[table if method != "unguided" else 0]
            for key, _, _ in METRIC_COLUMNS:
                shown = re.search(rf'<td data-key="{key}">(.*?)</td>', row).group(1)
                assert shown == format_cell(metrics["methods"][method], key), (split, method, key)


def test_rerun_resumes_without_redoing(demo_out, capsys):
    before = (demo_out / "run" / "final" / "model_index.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(demo_out), *MINI]) == 0
    printed = capsys.readouterr().out
    for stage in ("data", "publish", "train", "eval"):
        assert f"stage {stage} already done" in printed
    assert (demo_out / "run" / "final" / "model_index.json").stat().st_mtime_ns == before


def test_changed_option_retrains_from_scratch_and_unchanged_skips(demo_out, capsys):
    """The demo's stages are fingerprinted by their options: a changed lr and K retrain from scratch (the
    finished checkpoint is moved aside, never resumed, never a crash), then an unchanged rerun skips."""
    changed = [*MINI, "--lr", "0.002", "--num-objects", "4"]
    assert main(["demo", "--out", str(demo_out), *changed]) == 0
    printed = capsys.readouterr().out
    assert "stage data already done" in printed and "stage publish already done" in printed
    assert "stage train options changed (--lr 0.001 -> 0.002, --model-config" in printed
    assert "--num-objects 3 -> 4" in printed and "--resume" not in printed
    assert (demo_out / "run.previous" / "final" / "model_index.json").is_file()
    index = json.loads((demo_out / "run" / "final" / "model_index.json").read_text())
    assert index["cobl_config"]["num_objects"] == 4 and index["training"]["global_step"] == 4
    records = [json.loads(line) for line in (demo_out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert min(r["step"] for r in records if "step" in r) <= 1  # trained from step 0, not resumed
    assert main(["demo", "--out", str(demo_out), *changed]) == 0
    printed = capsys.readouterr().out
    for stage in ("data", "publish", "train", "eval"):
        assert f"stage {stage} already done" in printed


def test_stage_resumes_only_under_the_same_options(tmp_path):
    from app.demo import Stages

    stages, run = Stages(tmp_path), tmp_path / "run"
    assert stages.begin("train", {"lr": 1}, run) is False  # nothing to resume
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    assert stages.begin("train", {"lr": 1}, run) is True  # killed and rerun: resume inside
    assert stages.begin("train", {"lr": 2}, run) is False  # other options: from scratch
    assert not run.exists() and (tmp_path / "run.previous" / "checkpoints" / "step-4").is_dir()
    assert not stages.done("train", {"lr": 2})
    stages.mark("train", {"lr": 2}, 1.0)
    assert stages.done("train", {"lr": 2}) and not stages.done("train", {"lr": 1})


def test_bad_option_is_one_line_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--min-objects", "5", "--max-objects", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--min-objects" in err[0]
    with pytest.raises(SystemExit) as stop:  # the old spelling names the new one
        main(["demo", "--out", str(tmp_path / "d"), "--objects", "2-3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "replaced by --min-objects MIN" in err[0]
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("prior, message", [("/nonexistent", "expected a prior folder"),
                                            (None, "sample_size")])
def test_a_missing_or_mismatched_prior_is_a_one_line_error_before_anything_renders(tmp_path, capsys, prior,
                                                                                  message):
    """The shipped prior is for 64² and the 8x8 codec: the 32² miniature must say so (and a missing folder
    likewise) on one line, naming --prior, before a scene is rendered."""
    from app.demo import SHIPPED_PRIOR

    argv = ["demo", "--out", str(tmp_path / "d"), *MINI, "--prior", prior or str(SHIPPED_PRIOR)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prior" in err[0] and message in err[0], err
    assert not (tmp_path / "d").exists()


def test_gpu_scale_profile_is_the_sd_config_with_depth_and_needs_pretrained(tmp_path, capsys):
    import argparse

    from app.demo import gpu_scale_profile, register, write_model_config
    from cobl.configs import get_config

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
