"""``cobl infer`` on a real rendered scene and a folder, ``cobl eval`` on a tiny shard, and bad inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import app.cli
from app.report import METRIC_COLUMNS
from cobl.configs import tiny_config
from cobl.factory import build
from core import schema
from core.outdir import MARKER
from infer.pipeline import CObLPipeline
from tests.shardmaker import make_scene, write_shard

torch.set_num_threads(1)
RES = 32
FAST = ["--sampling-steps", "3", "--seed", "1"]

# Renders one small Cycles scene through the renderer's Python interface, in its own process (bpy stays out of
# the test process).
RENDER = """
import sys
from synth.render.blender.renderer import BlenderRenderer
from synth.scene.sampler import SamplerConfig, sample_scene
from synth.render.scene_dir import write_scene_dir
config = SamplerConfig(width=64, height=64, samples=4, check_res=64, min_objects=2, max_objects=3)
spec = sample_scene(0, config).with_render(threads=1)
with BlenderRenderer(threads=1) as renderer:
    write_scene_dir(renderer.render(spec), sys.argv[1])
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_cli")
    torch.manual_seed(0)
    config = tiny_config(num_objects=3, resolution=RES)
    model, codec, scheduler = build(config)
    CObLPipeline.from_parts(model, scheduler, codec, config, global_step=0).save_pretrained(
        root / "run" / "final"
    )
    subprocess.run(
        [sys.executable, "-c", RENDER, str(root / "scene")],
        check=True,
        capture_output=True,
        env={**os.environ, "PYOPENGL_PLATFORM": "egl"},
    )
    write_shard(root / "shards" / "test-000000.tar", 3, size=RES, max_objects=3, seed=2)
    return root


@pytest.fixture
def cli(monkeypatch):
    """The real ``cobl`` entry point."""
    return app.cli.main


def _one_error_line(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cobl: error:"), err
    for fragment in fragments:
        assert fragment in err[0]


def test_infer_on_rendered_scene_writes_every_file(workdir, cli, tmp_path):
    photo = workdir / "scene" / schema.RGB
    assert (
        cli(
            [
                "infer",
                "--model",
                str(workdir / "run"),
                "--image",
                str(photo),
                "--out",
                str(tmp_path),
                "--min-area",
                "0",
                "--min-visible",
                "0",
                *FAST,
            ]
        )
        == 0
    )
    out = tmp_path / "rgb"
    order = json.loads((out / "order.json").read_text())
    layers = sorted(p.name for p in out.glob("layer_*.png"))
    assert order["num_objects"] == len(layers) >= 1
    assert [entry["file"] for entry in order["layers"]] == layers
    expected = {schema.BACKGROUND, "recomposition.png", "order.json", "contact_sheet.png", *layers}
    assert {p.name for p in out.iterdir()} == expected
    with Image.open(out / layers[0]) as im:
        assert im.mode == "RGBA" and im.size == (64, 64)  # back at the photo's size, not the model's 32
    with Image.open(out / schema.BACKGROUND) as im:
        assert im.mode == "RGB" and im.size == (64, 64)
    slots = [entry["slot"] for entry in order["layers"]]
    assert slots == sorted(slots)  # front to back
    for entry in order["layers"]:
        assert 0 < entry["area"] <= 1 and 0 < entry["visible_fraction"] <= 1
    assert order["settings"]["num_inference_steps"] == 3 and np.isfinite(order["recomposition_psnr"])


def test_infer_folder_with_odd_sizes_and_resume(workdir, cli, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    scene = make_scene(np.random.default_rng(0), 40, 2)
    rgb = np.round(scene["photo"].transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(rgb[:, :30]).save(photos / "tall.png")
    Image.fromarray(rgb[:25]).convert("L").save(photos / "wide.jpg")
    (photos / "notes.txt").write_text("not a photo, ignored")
    out = tmp_path / "out"
    model = str(workdir / "run" / "final")
    args = ["infer", "--model", model, "--image", str(photos), "--out", str(out), "--sampler", "dpm", *FAST]
    assert cli(args) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != MARKER) == ["tall", "wide"]
    with Image.open(out / "tall" / "recomposition.png") as im:
        assert im.size == (30, 40)
    with Image.open(out / "wide" / "bg.png") as im:
        assert im.size == (40, 25)
    stamp = (out / "tall" / "order.json").stat().st_mtime_ns
    capsys.readouterr()
    assert cli(args) == 0
    assert "2 kept" in capsys.readouterr().out
    assert (out / "tall" / "order.json").stat().st_mtime_ns == stamp


def test_eval_on_tiny_shard_writes_metrics(workdir, cli, tmp_path):
    out = tmp_path / "metrics.json"
    data = str(workdir / "shards" / "test-*.tar")
    assert (
        cli(
            [
                "eval",
                "--model",
                str(workdir / "run"),
                "--data",
                data,
                "--limit",
                "2",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    metrics = json.loads(out.read_text())
    assert metrics["num_scenes"] == 2 and metrics["method_order"] == ["model", "unguided", "visible_only"]
    for method in metrics["method_order"]:
        summary = metrics["methods"][method]
        assert {key for key, _, _ in METRIC_COLUMNS} <= set(summary)
        rows = [scene[method] for scene in metrics["scenes"]]  # the summary pools the scenes' own rows
        assert summary["amodal_miou"] == pytest.approx(
            sum(r["iou_sum"] for r in rows) / sum(r["num_true"] for r in rows)
        )
        assert summary["count_accuracy"] == pytest.approx(np.mean([r["count_accuracy"] for r in rows]))
        assert summary["small_objects_ignored"] == sum(r["small_objects_ignored"] for r in rows)
        for key in ("amodal_miou", "amodal_miou_occluded", "amodal_miou_strict", "hidden_recall",
                    "hidden_precision", "fg_ari", "count_accuracy", "order_accuracy"):
            assert key in summary and key + "_ci" in summary, (method, key)
    assert metrics["methods"]["visible_only"]["amodal_miou_unoccluded"] == pytest.approx(1.0)
    assert metrics["methods"]["visible_only"]["count_accuracy"] == 1.0
    assert metrics["methods"]["visible_only"]["hidden_recall"] in (0.0, None)
    assert metrics["settings"]["depth_source"] == "none" and metrics["settings"]["split"] == "test"
    assert metrics["settings"]["small_object_rule"] == "ignore"
    assert metrics["settings"]["selection_split"] is None
    assert len(metrics["scenes"]) == 2 and set(metrics["scenes"][0]) >= {"key", "model", "unguided"}
    assert metrics["guidance_time_ratio"] > 0
    check = metrics["amodal_completion_check"]
    assert check["visible_only_occluded_miou"] == metrics["methods"]["visible_only"]["amodal_miou_occluded"]


@pytest.mark.parametrize(
    "case", ["missing", "not_image", "bad_model", "bad_data", "bad_steps", "preset_conflict"]
)
def test_bad_inputs_exit_2_with_one_line(workdir, cli, tmp_path, capsys, case):
    photo = str(workdir / "scene" / schema.RGB)
    model = str(workdir / "run")
    out = tmp_path / "out"
    if case == "missing":
        argv, fragments = ["infer", "--model", model, "--image", str(tmp_path / "nope.png")], ["nope.png"]
    elif case == "not_image":
        (tmp_path / "fake.png").write_text("definitely not a PNG")
        argv, fragments = ["infer", "--model", model, "--image", str(tmp_path / "fake.png")], ["fake.png"]
    elif case == "bad_model":
        argv, fragments = ["infer", "--model", str(workdir / "scene"), "--image", photo], ["not a CObL model"]
    elif case == "bad_data":
        argv = ["eval", "--model", model, "--data", str(tmp_path / "none-*.tar")]
        fragments = ["--data"]
    elif case == "preset_conflict":  # the preset sets the step itself: never ignore a given option silently
        argv = ["infer", "--model", model, "--image", photo, "--preset", "authors"]
        argv += ["--guidance-step", "noise"]
        fragments = ["--preset authors", "--guidance-step"]
    else:
        argv = ["infer", "--model", model, "--image", photo, "--sampling-steps", "0"]
        fragments = ["--sampling-steps"]
    assert cli([*argv, "--out", str(out)]) == 2
    _one_error_line(capsys, *fragments)
    assert not out.exists()
