"""``cobl eval --tabletop DIR``: .h5 scenes in the CObL authors' TABLETOP layout (scene, background, layers,
masks; their loader Tabletop.py, github aneeldamaraju/cobl) converted to the project's ground-truth record
and scored with a tiny trained model exactly like ``cobl eval``; malformed files are one line naming the file
and the key."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import app.cli
from app.report import METRIC_COLUMNS
from cobl.configs import tiny_config
from cobl.data import decode_sample
from cobl.factory import build
from core.layers import composite
from infer.pipeline import CObLPipeline
from infer.tabletop import implied_order, scene_members
from tests.shardmaker import write_shard
from tests.test_depth_condition import _tiny_dpt
from train.loop import train
from train.options import TrainOptions

torch.set_num_threads(1)
RES = 32
K = 3
SLOTS = 6  # the authors' example stacks hold 6 slots
FAST = ["--sampling-steps", "2", "--seed", "1"]


def _objects(size: int, specs: list[tuple[float, float, float, tuple[int, int, int]]]) -> np.ndarray:
    """Float RGBA layers ``[N, 4, H, W]`` (front first): one box per spec (centre x, centre y, half side,
    colour), large enough to pass the 2 % small-object rule."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    layers = np.zeros((len(specs), 4, size, size), np.float32)
    for k, (cx, cy, r, colour) in enumerate(specs):
        mask = (abs(xx - cx) < r) & (abs(yy - cy) < r)
        layers[k, :3] = (np.asarray(colour, np.float32) / 255)[:, None, None]
        layers[k, 3] = mask
    return layers


def write_tabletop(path: Path, specs, slots: list[int], binary_masks: bool = False, size: int = RES) -> None:
    """One scene in the authors' layout: objects ``specs`` (front to back) stored at file ``slots``; the other
    slots empty. Each object's layer is the object on the bare table, as if photographed alone."""
    yy = np.linspace(0.3, 0.7, size, dtype=np.float32)[:, None, None]
    background = np.concatenate([np.broadcast_to(yy, (size, size, 1))] * 3, axis=-1).transpose(2, 0, 1)
    layers = _objects(size, specs)
    photo = composite(layers, background)
    u8 = lambda x: np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    stack_rgb = np.repeat(u8(background.transpose(1, 2, 0))[None], SLOTS, axis=0)
    stack_masks = np.zeros((SLOTS, size, size), np.uint8)
    for k, slot in enumerate(slots):
        alone = composite(layers[k : k + 1], background)
        stack_rgb[slot] = u8(alone.transpose(1, 2, 0))
        stack_masks[slot] = layers[k, 3].astype(np.uint8) * (1 if binary_masks else 255)
    with h5py.File(path, "w") as f:
        f["scene"] = u8(photo.transpose(1, 2, 0))
        f["background"] = u8(background.transpose(1, 2, 0))
        f["layers"] = stack_rgb
        f["masks"] = stack_masks


RED, GREEN, BLUE, YELLOW = (220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 220, 40)
# name -> (objects front to back, their file slots, 0/1 masks)
SCENES = {
    # the authors' convention: empty slots first, then the objects front to back
    "a_two": ([(0.4, 0.4, 0.2, RED), (0.55, 0.55, 0.25, GREEN)], [4, 5], False),
    # stored out of order (back object at slot 0), masks 0/1
    "b_three": (
        [(0.3, 0.3, 0.15, BLUE), (0.45, 0.4, 0.2, YELLOW), (0.6, 0.6, 0.3, RED)], [3, 5, 0], True,
    ),
    "c_one": ([(0.5, 0.5, 0.25, GREEN)], [5], False),  # fewer objects than K
    # more objects than K = 3: skipped and counted, as cobl eval does
    "d_four": (
        [(0.2, 0.2, 0.12, RED), (0.8, 0.2, 0.12, GREEN), (0.2, 0.8, 0.12, BLUE), (0.7, 0.7, 0.15, YELLOW)],
        [2, 3, 4, 5],
        False,
    ),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tabletop")
    for i in range(2):
        write_shard(root / "shards" / f"train-{i:06d}.tar", 6, size=RES, max_objects=K, seed=i)
    result = train(
        TrainOptions(
            data=str(root / "shards" / "train-{000000..000001}.tar"), out=str(root / "run"), num_objects=K,
            resolution=RES, max_steps=4, batch_size=2, checkpoint_every=4, validate_every=0, num_workers=0,
            log_every=1, progress=False, shuffle_buffer=4,
        )
    )
    assert result["global_step"] == 4
    (root / "scenes").mkdir()
    for name, (specs, slots, binary) in SCENES.items():
        write_tabletop(root / "scenes" / f"{name}.h5", specs, slots, binary)
    return root


def test_conversion_gives_the_layers_masks_and_order_the_file_implies(tmp_path):
    specs, slots, binary = SCENES["b_three"]
    write_tabletop(tmp_path / "s.h5", specs, slots, binary)
    members, record = scene_members(tmp_path / "s.h5", "s")
    assert record.order == (3, 5, 0) and not record.file_order_agrees  # found from the photo, not slot order
    assert record.mask_scale == 1 and record.slots == SLOTS and record.pairs_dropped == 0
    assert record.pairs_from_photo == 3  # every pair of the three boxes overlaps
    sample = decode_sample({"__key__": "s", **members}, K, RES, depth=False)
    truth = _objects(RES, specs)
    assert sample.num_objects == 3
    assert torch.equal(sample.layers[:, 3], torch.from_numpy(truth[:, 3]))  # alpha = the masks, in order
    with h5py.File(tmp_path / "s.h5") as f:
        assert torch.equal(sample.photo, torch.from_numpy(f["scene"][()]).permute(2, 0, 1).float() / 255)
        assert torch.equal(sample.background, torch.from_numpy(f["background"][()]).permute(2, 0, 1) / 255)
    # the modal map: the front box wins where boxes overlap
    assert sample.ids[int(0.3 * RES), int(0.3 * RES)] == 1 and sample.ids[int(0.8 * RES), int(0.8 * RES)] == 3


def test_a_cycle_in_the_photo_evidence_is_broken_and_counted():
    # three pixels; each pair of objects overlaps on one of them, and the photo (black) matches a different
    # object on each: 0 hides 1 (pixel 1), 1 hides 2 (pixel 2), 2 hides 0 (pixel 0)
    photo = np.zeros((1, 3, 3), np.uint8)
    alpha = np.zeros((3, 1, 3), np.uint8)
    alpha[0, 0, [0, 1]] = alpha[1, 0, [1, 2]] = alpha[2, 0, [2, 0]] = 255
    rgb = np.full((3, 1, 3, 3), 200, np.uint8)
    rgb[0, 0, 1] = rgb[1, 0, 2] = rgb[2, 0, 0] = 0
    order, counts = implied_order(photo, rgb, alpha, [0, 1, 2])
    assert counts["pairs_from_photo"] == 3 and counts["pairs_dropped"] == 1  # "2 hides 0" overruled
    assert order == [0, 1, 2] and not counts["file_order_agrees"]
    rgb[2, 0, 0] = 200  # no evidence left on pixel 0: no cycle, the order follows the two decided pairs
    order, counts = implied_order(photo, rgb, alpha, [2, 1, 0])
    assert order == [0, 1, 2] and counts["pairs_undecided"] == 1 and counts["pairs_dropped"] == 0


def test_eval_tabletop_writes_the_metrics_of_cobl_eval(workdir, tmp_path, capsys):
    model = str(workdir / "run")
    out = tmp_path / "tabletop.json"
    argv = ["eval", "--model", model, "--tabletop", str(workdir / "scenes"), "--out", str(out), *FAST]
    with pytest.warns(UserWarning, match="4 objects > K=3"):
        assert app.cli.main(argv) == 0
    metrics = json.loads(out.read_text())
    assert metrics["data"] == str(workdir / "scenes") and metrics["settings"]["split"] == "tabletop"
    assert metrics["num_scenes"] == 3 and metrics["skipped"]["too_many_objects"] == 1
    records = {r["file"]: r for r in metrics["tabletop"]["scenes"]}
    assert records["a_two.h5"]["order"] == [4, 5] and records["a_two.h5"]["file_order_agrees"]
    assert records["b_three.h5"]["order"] == [3, 5, 0] and records["d_four.h5"]["order"] == [2, 3, 4, 5]
    assert [s["num_objects"] for s in metrics["scenes"]] == [2, 3, 1]
    visible = metrics["methods"]["visible_only"]  # true modal masks: exact on every unoccluded object
    assert visible["amodal_miou_unoccluded"] == pytest.approx(1.0) and visible["count_accuracy"] == 1.0
    assert visible["objects"] == 6

    shard_out = tmp_path / "shards.json"
    data = str(workdir / "shards" / "train-000000.tar")
    assert app.cli.main(["eval", "--model", model, "--data", data, "--limit", "2", "--out", str(shard_out),
                         *FAST]) == 0
    shards = json.loads(shard_out.read_text())
    assert set(metrics) == set(shards) | {"tabletop"}
    assert set(metrics["settings"]) == set(shards["settings"])
    for method in shards["method_order"]:
        assert set(metrics["methods"][method]) == set(shards["methods"][method])
        assert {key for key, _, _ in METRIC_COLUMNS} <= set(metrics["methods"][method])
    assert "cobl eval: 3 scenes" in capsys.readouterr().out


def _write_bad(folder: Path, case: str) -> tuple[Path, list[str]]:
    path = folder / f"{case}.h5"
    write_tabletop(path, *SCENES["a_two"])
    if case == "not_hdf5":
        path.write_bytes(b"not an HDF5 file")
        return path, ["not a readable HDF5 file"]
    with h5py.File(path, "a") as f:
        if case == "missing_key":
            del f["masks"]
            return path, ["'masks'", "missing"]
        if case == "wrong_dtype":
            layers = f["layers"][()].astype(np.float32) / 255
            del f["layers"]
            f["layers"] = layers
            return path, ["'layers'", "expected uint8, got float32"]
        if case == "background_size":
            background = f["background"][()][:-1]
            del f["background"]
            f["background"] = background
            return path, ["'background'", f"got [{RES - 1}, {RES}, 3]"]
        masks = f["masks"][()][:-1]  # "mask_count": one mask fewer than layers
        del f["masks"]
        f["masks"] = masks
        return path, ["'masks'", f"got [{SLOTS - 1}, {RES}, {RES}]"]


@pytest.mark.parametrize(
    "case", ["missing_key", "wrong_dtype", "background_size", "mask_count", "not_hdf5", "empty_folder"]
)
def test_malformed_files_are_one_line_naming_file_and_key(workdir, tmp_path, capsys, case):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    if case == "empty_folder":
        fragments = [str(scenes), "no .h5 scene files"]
    else:
        write_tabletop(scenes / "good.h5", *SCENES["c_one"])
        path, fragments = _write_bad(scenes, case)
        fragments.append(str(path))
    out = tmp_path / "metrics.json"
    argv = ["eval", "--model", str(workdir / "run"), "--tabletop", str(scenes), "--out", str(out), *FAST]
    assert app.cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cobl: error: --tabletop: "), err
    for fragment in fragments:
        assert fragment in err[0]
    assert not out.exists()


def test_depth_models_need_an_estimator_and_data_or_tabletop_is_required(workdir, tmp_path, capsys):
    config = tiny_config(num_objects=K, resolution=RES).replace(depth_condition=True)
    model, codec, scheduler = build(config)
    CObLPipeline.from_parts(model, scheduler, codec, config, global_step=0).save_pretrained(tmp_path / "m")
    scenes = str(workdir / "scenes")
    common = ["eval", "--tabletop", scenes, "--out", str(tmp_path / "x.json"), *FAST]
    assert app.cli.main([*common, "--model", str(tmp_path / "m")]) == 2
    assert "--depth-model: the model is depth-conditioned" in capsys.readouterr().err
    estimator = _tiny_dpt(tmp_path / "dpt")  # a saved transformers depth estimator, as a user would give
    with_depth = [*common, "--model", str(tmp_path / "m"), "--depth-model", str(estimator), "--no-unguided"]
    with pytest.warns(UserWarning, match="4 objects > K=3"):
        assert app.cli.main(with_depth) == 0
    metrics = json.loads((tmp_path / "x.json").read_text())
    assert metrics["num_scenes"] == 3 and metrics["settings"]["depth_source"] == f"estimator:{estimator}"
    (tmp_path / "x.json").unlink()
    assert app.cli.main([*common, "--model", str(workdir / "run"), "--depth-source", "rendered"]) == 2
    assert "--depth-source: TABLETOP scenes carry no depth map" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        app.cli.main(["eval", "--model", str(workdir / "run")])
    assert exit_info.value.code == 2 and "--data --tabletop" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
