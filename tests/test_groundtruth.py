"""Ground-truth assembly, scene directories and contact sheets on synthetic passes (no Blender)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import schema
from core.errors import UserError
from core.groundtruth import GroundTruth, OcclusionEdge
from core.images import psnr
from core.policy import PSNR_CAP_DB
from core.spec import (
    AssetRef,
    CameraSpec,
    LightSpec,
    MaterialSpec,
    ObjectSpec,
    SceneSpec,
    TableSpec,
    WorldSpec,
)
from synth.render import groundtruth, regions
from synth.render.contact_sheet import contact_sheet
from synth.render.scene_dir import read_scene_dir, write_scene_dir

H = W = 32


def _spec(n: int = 2) -> SceneSpec:
    mat = MaterialSpec("plain", ((0.5, 0.5, 0.5),))
    cam = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.0, 1.0))
    objects = tuple(
        ObjectSpec(
            f"obj{i}",
            AssetRef(f"box-{i}", "procedural", "box", i),
            (0.0, 0.0, -0.1 * i),
            (1.0, 0.0, 0.0, 0.0),
            (1.0, 1.0, 1.0),
            mat,
            pass_index=i + 1,
        )
        for i in range(n)
    )
    return SceneSpec(
        "synthetic",
        0,
        TableSpec((1.0, 1.0), 0.03, mat),
        objects,
        CameraSpec(W, H, 35.0, 36.0, cam),
        (LightSpec("SUN", (0, 0, 1), (1, 0, 0, 0), 3.0, 0.1, (1, 1, 1), 5500.0),),
        WorldSpec("sky", 1.0),
    )


def _passes(spec: SceneSpec):
    """obj1 is a square partly hidden by obj0 (a square in front), spec order deliberately back to front."""
    bg = np.zeros((H, W, 4), np.float32)
    bg[..., :3] = 0.2
    bg[..., 3] = 1.0
    front = np.zeros((H, W, 4), np.float32)
    front[8:20, 8:20] = (0.9, 0.1, 0.1, 1.0)
    back = np.zeros((H, W, 4), np.float32)
    back[12:28, 12:28] = (0.1, 0.1, 0.9, 1.0)
    back[12, 12:28] = (0.04, 0.04, 0.36, 0.4)  # an antialiased edge row (premultiplied), outside the mask
    photo = bg.copy()
    for layer in (back, front):  # back to front, linear "over"
        photo = layer + (1 - layer[..., 3:4]) * photo
    index = np.zeros((H, W), np.float32)
    index[back[..., 3] > 0.5] = 1  # spec object 0 is `back`
    index[front[..., 3] > 0.5] = 2
    depth = np.full((H, W), 1e10, np.float32)
    depth[index > 0] = 1.0
    return photo, bg, [back, front], index, depth


@pytest.fixture(scope="module")
def synthetic():
    spec = _spec(2)
    photo, bg, renders, index, depth = _passes(spec)
    return spec, groundtruth.assemble(spec, photo, bg, renders, index, depth, {"engine": "test"})


def test_srgb_encode_matches_the_standard_curve():
    values = groundtruth.srgb_encode(np.array([0.0, 0.0031308, 0.18, 0.5, 1.0, 2.0]))
    assert values.tolist() == [0, 10, 118, 188, 255, 255]


def test_straight_layer_unpremultiplies_and_marks_empty_pixels():
    premult = np.array([[[0.25, 0.25, 0.25, 0.5], [0.0, 0.0, 0.0, 0.0]]], np.float32)
    layer = groundtruth.straight_layer(premult)
    assert layer[0, 0].tolist() == [188, 188, 188, 128]
    assert layer[0, 1].tolist() == [128, 128, 128, 0]


def test_order_ids_and_files_follow_the_occlusion(synthetic):
    spec, scene = synthetic
    gt = scene.ground_truth
    assert gt.order == ("obj1", "obj0")  # obj1 hides obj0 although it is listed second
    assert gt.occlusion_edges == (OcclusionEdge("obj1", "obj0", 56),)
    assert set(scene.files) == set(schema.member_names(2))
    ids = scene.image(schema.IDS)
    layers = scene.layers()
    assert layers[0][10, 10, 3] == 255 and layers[0][25, 25, 3] == 0  # layer_00 is the front square
    assert ids[10, 10] == 1 and ids[25, 25] == 2 and ids[0, 0] == 0
    back = gt.objects[1]
    assert back.amodal_pixels == 16 * 15 and back.modal_pixels == 16 * 15 - 56
    assert back.visible_fraction == pytest.approx((240 - 56) / 240)
    assert back.amodal_box == (12, 13, 28, 28)
    assert gt.ids_stack_agreement == 1.0 and gt.acyclic
    depth = scene.depth()
    assert depth.dtype == np.float32 and depth[0, 0] == 0.0 and depth[10, 10] == 1.0


def test_recomposition_is_near_exact_away_from_partial_alpha(synthetic):
    _, scene = synthetic
    assert scene.ground_truth.recomposition_psnr > 40.0
    recomposed = groundtruth.recomposite(list(scene.layers()), scene.image(schema.BACKGROUND))
    recomposed = np.moveaxis(np.round(recomposed * 255), 0, -1).astype(int)
    rgb = scene.image(schema.RGB).astype(int)
    opaque = np.ones((H, W), bool)
    opaque[12] = False
    assert np.abs(recomposed - rgb)[opaque].max() <= 1


def test_a_cycle_from_boundary_noise_is_broken_at_its_weakest_edge():
    spec = _spec(2)
    photo, bg, renders, index, depth = _passes(spec)
    index[14, 14] = 1  # one noisy pixel claims the back square is in front
    scene = groundtruth.assemble(spec, photo, bg, renders, index, depth)
    assert scene.ground_truth.order == ("obj1", "obj0")
    assert scene.ground_truth.dropped_edges == (OcclusionEdge("obj0", "obj1", 1),)
    assert not scene.ground_truth.acyclic


def test_scene_json_holds_the_spec_and_round_trips(synthetic, tmp_path):
    spec, scene = synthetic
    doc = json.loads(scene.files[schema.SCENE])
    assert SceneSpec.from_dict(doc["spec"]) == spec
    assert doc["ground_truth"]["camera"]["K"][0][0] == pytest.approx(35.0 / 36.0 * W)
    out = write_scene_dir(scene, tmp_path / "scene")
    back = read_scene_dir(out)
    assert back.files == scene.files and back.ground_truth == scene.ground_truth
    assert back.spec() == spec
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind


def test_scene_dir_refuses_files_off_the_schema(synthetic, tmp_path):
    _, scene = synthetic
    broken = type(scene)(scene.scene_id, {k: v for k, v in scene.files.items() if k != schema.IDS})
    with pytest.raises(ValueError, match="schema"):
        write_scene_dir(broken, tmp_path / "scene")
    assert not (tmp_path / "scene").exists()


def test_boxes_and_psnr_helpers():
    assert regions.pixel_box(np.array([[3.2, 4.7], [10.1, 8.0]]), 12, 12, 1) == (2, 3, 12, 10)
    assert regions.union_box([(1, 2, 3, 4), None, (0, 5, 2, 9)]) == (0, 2, 3, 9)
    assert psnr(np.zeros(4), np.zeros(4)) == PSNR_CAP_DB
    assert psnr(np.zeros(4), np.full(4, 0.1)) == pytest.approx(20.0)
    assert np.isnan(psnr(np.zeros(0), np.zeros(0)))


# -- the typed ground-truth record ---------------------------------------------------------------------------


def test_ground_truth_round_trips_through_its_dict_and_scene_json(synthetic):
    spec, scene = synthetic
    gt = scene.ground_truth
    doc = json.loads(scene.files[schema.SCENE])
    assert gt.to_dict() == doc["ground_truth"]
    assert GroundTruth.from_dict(doc["ground_truth"]) == gt
    assert GroundTruth.from_scene(doc) == gt
    assert groundtruth.scene_json(spec, GroundTruth.from_dict(gt.to_dict())) == scene.files[schema.SCENE]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (("recomposition_psnr",), "ground_truth.recomposition_psnr: missing"),
        (("objects", 1, "visible_fraction"), r"ground_truth.objects\[1\].visible_fraction: missing"),
        (("camera", "K"), "ground_truth.camera.K: missing"),
        (("occlusion_edges", 0, "back"), r"ground_truth.occlusion_edges\[0\].back: missing"),
    ],
)
def test_a_missing_ground_truth_field_is_a_one_line_user_error(synthetic, path, message):
    _, scene = synthetic
    data = scene.ground_truth.to_dict()
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    with pytest.raises(UserError, match=f"^{message}$") as err:
        GroundTruth.from_dict(data)
    assert "\n" not in str(err.value)


def test_a_malformed_ground_truth_field_is_named(synthetic):
    with pytest.raises(UserError, match="^scene.json: ground_truth: missing$"):
        GroundTruth.from_scene({"spec": {}})
    _, scene = synthetic
    data = scene.ground_truth.to_dict()
    data["objects"][0]["layer"] = "front"
    with pytest.raises(UserError, match=r"^ground_truth.objects\[0\].layer: expected an integer, got 'fr"):
        GroundTruth.from_dict(data)
    data = scene.ground_truth.to_dict()
    data["objects"][0]["amodal_box"] = [1, 2, 3]
    with pytest.raises(UserError, match=r"objects\[0\].amodal_box: expected \[x0, y0, x1, y1\]"):
        GroundTruth.from_dict(data)


def test_read_scene_dir_names_the_file_of_a_bad_record(synthetic, tmp_path):
    _, scene = synthetic
    out = write_scene_dir(scene, tmp_path / "scene")
    doc = json.loads((out / schema.SCENE).read_text())
    del doc["ground_truth"]["order"]
    (out / schema.SCENE).write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"scene.json: ground_truth.order: missing$"):
        read_scene_dir(out)


def test_contact_sheet_has_a_column_per_scene(synthetic):
    _, scene = synthetic
    sheet = contact_sheet([scene, scene])
    assert sheet.width > 2 * 160 and sheet.height > (2 + 3) * 160
