"""A real Blender render: the layers recomposite to the photo, ids agree with the stack, masks and depth agree
with an independent rasteriser (pyrender), and the ground truth is consistent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core import schema
from core.layers import modal_ids
from core.spec import SceneSpec
from synth.render.groundtruth import RENDER_INFO_FIELDS, recomposite
from synth.scene.sampler import SamplerConfig, sample_scene

RES = 96
SEEDS = (3, 6)


@pytest.fixture(scope="module")
def rendered():
    from synth.render.blender.renderer import BlenderRenderer

    config = SamplerConfig(width=RES, height=RES, samples=8, min_objects=3, max_objects=4, check_res=RES)
    with BlenderRenderer(threads=2) as renderer:
        return [(spec, renderer.render(spec)) for spec in (sample_scene(s, config) for s in SEEDS)]


def test_layers_recomposite_to_the_photo(rendered):
    for _, scene in rendered:
        layers = scene.layers()
        recomposed = recomposite(list(layers), scene.image(schema.BACKGROUND))
        photo = np.moveaxis(scene.image(schema.RGB).astype(np.float64) / 255.0, -1, 0)
        psnr = 10 * np.log10(1.0 / np.mean((recomposed - photo) ** 2))
        assert psnr >= 30.0, f"{scene.scene_id}: recomposition {psnr:.1f} dB"
        assert psnr == pytest.approx(scene.ground_truth.recomposition_psnr, abs=1e-6)


def test_background_equals_photo_outside_the_objects(rendered):
    for _, scene in rendered:
        covered = (scene.layers()[..., 3] > 0).any(axis=0)
        diff = np.abs(scene.image(schema.BACKGROUND).astype(int) - scene.image(schema.RGB).astype(int))
        assert diff[~covered].max() <= 1
        assert diff[covered].max() > 10  # the objects really are gone from the background


def test_ids_agree_with_the_layer_stack(rendered):
    for spec, scene in rendered:
        ids = scene.image(schema.IDS)
        alphas = scene.layers()[..., 3].astype(np.float64) / 255.0
        stack_ids = modal_ids(alphas)
        objects = (ids > 0) | (stack_ids > 0)
        agreement = float(np.mean(ids[objects] == stack_ids[objects]))
        assert agreement >= 0.95, f"{scene.scene_id}: ids agree with the stack on {agreement:.3f}"
        assert set(np.unique(ids)) <= set(range(len(spec.objects) + 1))
        assert scene.num_layers == len(spec.objects)


def test_masks_and_depth_match_pyrender(rendered):
    from synth.render.pyrender_check import mask_iou, render_amodal

    for spec, scene in rendered:
        masks, depth = render_amodal(spec)
        names = [o.name for o in spec.objects]
        layers = scene.layers()
        blender_depth = scene.depth()
        ids = scene.image(schema.IDS)
        ious = []
        for k, name in enumerate(scene.ground_truth.order):
            i = names.index(name)
            ious.append(mask_iou(layers[k][..., 3] > 127, masks[i]))
            # A one-pixel boundary disagreement costs a small object much more IoU than a large one.
            assert ious[-1] >= (0.95 if masks[i].sum() >= 300 else 0.8), f"{name}: IoU {ious[-1]:.3f}"
            inner = (ids == k + 1) & (depth[i] > 0)
            assert np.median(np.abs(blender_depth[inner] - depth[i][inner])) < 0.005
        assert np.mean(ious) >= 0.93, f"{scene.scene_id}: IoUs {ious}"
        table = (ids == 0) & (blender_depth > 0)
        assert table.any() and (blender_depth[ids > 0] > 0).all()


def test_scene_json_is_consistent(rendered):
    for spec, scene in rendered:
        doc = json.loads(scene.files[schema.SCENE])
        gt = doc["ground_truth"]
        assert SceneSpec.from_dict(doc["spec"]) == spec
        assert sorted(gt["order"]) == sorted(o.name for o in spec.objects)
        assert [o["layer"] for o in gt["objects"]] == list(range(len(spec.objects)))
        ids = scene.image(schema.IDS)
        for obj in gt["objects"]:
            amodal = scene.image(schema.layer_name(obj["layer"]))[..., 3] > 127
            assert obj["amodal_pixels"] == int(amodal.sum())
            assert obj["modal_pixels"] == int(((ids == obj["layer"] + 1) & amodal).sum())
            assert 0.0 < obj["visible_fraction"] <= 1.0
        position = {name: k for k, name in enumerate(gt["order"])}
        dropped = {(e["front"], e["back"]) for e in gt["dropped_edges"]}
        for edge in gt["occlusion_edges"]:  # the kept edges agree with the order
            assert (edge["front"], edge["back"]) not in dropped
            assert position[edge["front"]] < position[edge["back"]]
        assert gt["render"]["view_transform"] == "Standard" and gt["render"]["samples"] == 8
        assert set(gt["render"]) == set(RENDER_INFO_FIELDS)  # the dataset card's features type these
        assert np.allclose(np.asarray(gt["camera"]["K"]), np.asarray(spec.camera.intrinsics()))


def test_partial_renders_equal_full_renders(monkeypatch):
    """Renders restricted to tight border boxes, and object pixels taken from the photo, are bit-identical
    to what plain renders over generous boxes give (same camera samples in every render)."""
    from synth.render.blender import renderer as renderer_module

    config = SamplerConfig(
        width=64, height=64, samples=4, min_objects=4, max_objects=4, check_res=64, min_object_area=0.002
    )
    spec = sample_scene(11, config)
    with renderer_module.BlenderRenderer(threads=2) as renderer:
        fast = renderer.render(spec)
        assert fast.ground_truth.render["layer_renders"] > 0
        monkeypatch.setattr(renderer_module, "_known_from_photo", lambda *args: None)
        monkeypatch.setattr(renderer_module, "RENDER_OVERHEAD_PX", 1e9)  # one box per object / cluster
        monkeypatch.setattr(renderer_module, "BOX_MARGIN", 4)  # generous margins around the projections
        plain = renderer.render(spec)
    for name in (schema.RGB, schema.BACKGROUND, schema.IDS, *(schema.layer_name(k) for k in range(4))):
        assert np.array_equal(fast.image(name), plain.image(name)), name


def test_cover_boxes_cover_the_mask_cheaply():
    from synth.render.regions import cover_boxes

    yy, xx = np.mgrid[:80, :90]
    disc = (xx - 40) ** 2 + (yy - 40) ** 2 < 30**2
    ring = disc & ((xx - 40) ** 2 + (yy - 40) ** 2 >= 26**2)
    blob = (xx - 80) ** 2 + (yy - 8) ** 2 < 5**2
    for mask in (disc, ring | blob, np.zeros_like(disc)):
        boxes = cover_boxes(mask, overhead_px=50)
        covered = np.zeros_like(mask)
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 90 and 0 <= y0 < y1 <= 80
            covered[y0:y1, x0:x1] = True
        assert not (mask & ~covered).any()
        assert bool(boxes) == bool(mask.any())
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in cover_boxes(ring, overhead_px=50))
    assert area < 0.6 * 60 * 60  # much less than the ring's bounding box: its inside is skipped


def test_hull_mask_contains_the_projection():
    from synth.render.regions import hull_mask

    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 2)) * 6 + 30
    mask = hull_mask(points, 64, 48, margin=0)
    inside = rng.dirichlet(np.ones(len(points)), size=500) @ points
    assert mask[inside[:, 1].astype(int), inside[:, 0].astype(int)].all()
    assert mask.sum() < 0.9 * (np.ptp(points[:, 0]) + 2) * (np.ptp(points[:, 1]) + 2)  # tighter than the box
    assert hull_mask(points, 64, 48, margin=2).sum() > mask.sum()


def test_every_object_matches_pyrender_at_095_when_objects_are_resolved():
    """The issue's criterion verbatim: per-object IoU >= 0.95 between Blender's alpha > 0.5 and pyrender's
    mask, on scenes whose objects cover at least 2% of a 128² frame (at 96² a one-pixel boundary shift alone
    costs a 100-pixel object ~0.1 IoU, which is what the test above allows for)."""
    from synth.render.blender.renderer import BlenderRenderer
    from synth.render.pyrender_check import mask_iou, render_amodal

    config = SamplerConfig(
        width=128, height=128, samples=4, min_objects=2, max_objects=4, check_res=64, min_object_area=0.02
    )
    with BlenderRenderer(threads=2) as renderer:
        for seed in (0, 3, 6):
            spec = sample_scene(seed, config)
            scene = renderer.render(spec)
            masks, _ = render_amodal(spec)
            names = [o.name for o in spec.objects]
            for k, name in enumerate(scene.ground_truth.order):
                iou = mask_iou(scene.layers()[k][..., 3] > 127, masks[names.index(name)])
                assert iou >= 0.95, f"seed {seed} {name}: IoU {iou:.3f}"


def _write_hdr(path, rgb: tuple[float, float, float], width: int = 16, height: int = 8) -> None:
    """A constant-colour Radiance .hdr (flat RGBE scanlines, no run-length encoding)."""
    value = np.asarray(rgb, dtype=np.float64)
    exponent = int(np.ceil(np.log2(value.max()))) + 1
    mantissa = np.round(value / 2.0**exponent * 256).clip(0, 255).astype(np.uint8)
    pixel = bytes([*mantissa, exponent + 128])
    header = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode()
    path.write_bytes(header + pixel * (width * height))


@pytest.fixture(scope="module")
def file_assets(tmp_path_factory):
    """An imported mesh, an HDRI (red) and an image texture (black/white checker), written by the test."""
    import dataclasses

    import trimesh
    from PIL import Image

    from core.spec import MaterialSpec, WorldSpec

    root = tmp_path_factory.mktemp("assets")
    (root / "meshes").mkdir()
    trimesh.creation.capsule(height=0.6, radius=0.3, count=(12, 12)).export(root / "meshes" / "pill.stl")
    _write_hdr(root / "red.hdr", (4.0, 0.3, 0.3))
    checker = (np.indices((64, 64)).sum(axis=0) // 8 % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([checker] * 3, axis=-1)).save(root / "checker.png")
    config = SamplerConfig(
        width=48, height=48, samples=4, min_objects=2, max_objects=2, check_res=48,
        assets_dir=str(root / "meshes"), file_asset_prob=1.0,
    )  # fmt: skip
    spec = sample_scene(2, config)
    table = dataclasses.replace(
        spec.table, material=MaterialSpec("image", ((1.0, 1.0, 1.0),), texture_scale=4.0,
                                          image_path=str(root / "checker.png"))
    )  # fmt: skip
    return dataclasses.replace(
        spec, table=table, world=WorldSpec("hdri", 1.0, hdri_path=str(root / "red.hdr"))
    )


def test_imported_mesh_hdri_world_and_image_texture_render(file_assets):
    import dataclasses

    from synth.render.blender.renderer import BlenderRenderer

    spec = file_assets
    with BlenderRenderer(threads=2) as renderer:
        scene = renderer.render(spec)
        plain = renderer.render(
            dataclasses.replace(
                spec, table=dataclasses.replace(spec.table, material=spec.objects[0].material)
            )
        )
    doc = json.loads(scene.files[schema.SCENE])
    assets = [o["asset"] for o in doc["spec"]["objects"]]
    assert all(a["source"] == "file" and a["path"].endswith("pill.stl") for a in assets)
    for k in range(len(spec.objects)):
        assert (scene.image(schema.layer_name(k))[..., 3] > 127).sum() > 20  # the imported mesh is there
    assert doc["spec"]["world"]["hdri_path"].endswith("red.hdr")
    assert doc["spec"]["table"]["material"]["image_path"].endswith("checker.png")
    photo = scene.image(schema.RGB).astype(np.float64)
    table = scene.image(schema.IDS) == 0
    # the checker texture is on the table: the same scene with a plain table looks clearly different there
    diff = np.abs(photo - plain.image(schema.RGB).astype(np.float64)).mean(axis=-1)
    assert diff[table].mean() > 10
    assert scene.ground_truth.recomposition_psnr >= 30.0


def test_eevee_renders_a_tiny_scene(tmp_path):
    """In a child process: EEVEE's GL context aborts a process whose pyrender tests already made one (EGL)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "scene"
    argv = ["synth", "scene", "--engine", "BLENDER_EEVEE", "--resolution", "32", "--samples", "1"]
    argv += ["--min-objects", "2", "--max-objects", "2", "--seed", "4", "--threads", "2", "--out", str(out)]
    # only the checkout: bpy puts Blender's own script folders on sys.path, which shadow the wheel's bpy
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", *argv], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr[-2000:]
    gt = json.loads((out / schema.SCENE).read_text())["ground_truth"]
    assert gt["render"]["engine"] == "BLENDER_EEVEE"
    from PIL import Image

    ids = np.asarray(Image.open(out / schema.IDS))
    assert set(np.unique(ids)) - {0}  # Workbench ids found the objects
    for k in range(2):
        assert (np.asarray(Image.open(out / schema.layer_name(k)))[..., 3] > 127).any()
    assert gt["recomposition_psnr"] >= 25.0


def test_denoised_scene_recomposites_and_has_a_clean_background():
    from synth.render.blender.renderer import BlenderRenderer
    from synth.render.groundtruth import footprint_dark_fraction

    config = SamplerConfig(
        width=64, height=64, samples=4, denoise=True, min_objects=3, max_objects=3, check_res=64
    )
    spec = sample_scene(5, config)
    with BlenderRenderer(threads=2) as renderer:
        scene = renderer.render(spec)
    assert scene.ground_truth.render["denoise"] is True
    assert scene.ground_truth.recomposition_psnr >= 30.0
    amodal = scene.layers()[..., 3] > 127
    assert footprint_dark_fraction(scene.image(schema.BACKGROUND), amodal) <= 0.05


def test_backgrounds_have_no_black_footprints(rendered):
    """Under the objects' amodal masks bg.png shows the table (at most 5 % near-black pixels, below 0.15 of
    the table's median brightness just around the objects; 24-37 % at 256^2 before the clean background)."""
    from synth.render.groundtruth import footprint_dark_fraction

    for _, scene in rendered:
        amodal = scene.layers()[..., 3] > 127
        fraction = footprint_dark_fraction(scene.image(schema.BACKGROUND), amodal)
        assert fraction <= 0.05, f"{scene.scene_id}: {fraction:.1%} of the footprints are near-black"


LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 luminance of 8-bit sRGB values


def _outline_pixels(bg8, clean8, photo8, layers8) -> tuple[int, int, int]:
    """(ring pixels, pixels drawing an outline, pixels the photo forces dark) of one background.

    The ring: pixels at the silhouettes' antialiased edges (0 < transmittance < 1). Each is compared with
    the median luminance of the background 3 px outside the objects within 5 px of it; the render noise is
    how far that 3-px ring's own pixels fall below the same median around them (at most). An outline pixel
    is darker than its surroundings by more than that noise and more than the clean table (the table
    without the objects, shadows of the others included) is there. The photo forces a pixel dark where
    even black edge colours leave no brighter background that keeps the compositing identity."""
    from scipy import ndimage

    from core.policy import BACKGROUND_SLACK

    alphas = layers8[..., 3].astype(np.float64) / 255.0
    transmit = np.prod(1.0 - alphas, axis=0)
    ring = (transmit > 0) & (transmit < 1)
    distance = ndimage.distance_transform_edt(~(alphas > 0).any(axis=0))
    far = (distance > 2.5) & (distance <= 3.5)
    lum_bg, lum_clean = bg8.astype(np.float64) @ LUMA, clean8.astype(np.float64) @ LUMA
    fixed, through = np.zeros(bg8.shape), np.ones(transmit.shape)  # what opaque layer pixels add
    for k in range(len(layers8)):
        opaque = alphas[k] == 1.0
        fixed += (through * opaque)[..., None] * layers8[k][..., :3] / 255.0
        through *= 1.0 - alphas[k]
    brightest = (photo8 / 255.0 - fixed + BACKGROUND_SLACK) / np.maximum(transmit, 1e-9)[..., None]
    lum_brightest = np.clip(brightest, 0.0, 1.0) @ LUMA * 255.0

    def surroundings(y: int, x: int) -> float | None:
        window = (slice(max(0, y - 5), y + 6), slice(max(0, x - 5), x + 6))
        return float(np.median(lum_bg[window][far[window]])) if far[window].any() else None

    noise = max(surroundings(y, x) - lum_bg[y, x] for y, x in np.argwhere(far))  # a far pixel is in its own
    outline = forced = 0
    for y, x in np.argwhere(ring):
        ref = surroundings(y, x)
        if ref is None:
            continue
        if lum_brightest[y, x] < ref - noise:
            forced += 1
        elif ref - lum_bg[y, x] > noise + max(0.0, ref - lum_clean[y, x]):
            outline += 1
    return int(ring.sum()), outline, forced


def test_background_has_no_silhouette_outline(monkeypatch):
    """At 128², 16 spp: bg.png shows no dark or tinted ring where the layers' antialiased edges meet the
    table (no ring pixel darker than the table 3 px away by more than the render noise, see
    _outline_pixels), while the layers still recomposite the photo (>= 50 dB; within the slack wherever
    the background shows). The background fitted to the unsettled layers of the same renders (the previous
    behaviour) fails the same check, so the check can fail."""
    from synth.render import groundtruth
    from synth.render.blender.renderer import BlenderRenderer

    inputs: list[tuple] = []  # (unsettled layers, photo, clean table) per scene, in render order
    settle = groundtruth.settle_edges

    def keep_inputs(layers8, photo8, clean8):
        inputs.append((np.stack(layers8), photo8, clean8))
        return settle(layers8, photo8, clean8)

    monkeypatch.setattr(groundtruth, "settle_edges", keep_inputs)
    config = SamplerConfig(width=128, height=128, samples=16, min_objects=3, max_objects=4, check_res=64)
    with BlenderRenderer(threads=2) as renderer:
        scenes = [renderer.render(sample_scene(seed, config)) for seed in (3, 6, 9)]
    from core.images import psnr
    from core.policy import BACKGROUND_SLACK

    for scene, (unsettled, photo, clean) in zip(scenes, inputs, strict=True):
        layers, bg = scene.layers(), scene.image(schema.BACKGROUND)
        assert np.array_equal(photo, scene.image(schema.RGB))
        ring, outline, forced = _outline_pixels(bg, clean, photo, layers)
        why = f"{scene.scene_id}: {outline} of {ring} ring pixels draw an outline ({forced} forced)"
        assert ring > 200 and outline == 0, why
        assert scene.ground_truth.recomposition_psnr >= 50.0, scene.ground_truth.recomposition_psnr
        recomposed = np.moveaxis(recomposite(list(layers), bg), 0, -1)
        shows = np.prod(1.0 - layers[..., 3] / 255.0, axis=0) > 0
        error = np.abs(recomposed - photo / 255.0)[shows].max()
        assert error <= BACKGROUND_SLACK + 0.5 / 255.0 + 1e-9, error * 255  # the slack, and bg's rounding
        old_bg = groundtruth.fit_background(list(unsettled), photo, clean)
        _, old_outline, _ = _outline_pixels(old_bg, clean, photo, unsettled)
        old_psnr = psnr(recomposite(list(unsettled), old_bg), np.moveaxis(photo / 255.0, -1, 0))
        print(  # the figures of docs/dataset.md (pytest -s)
            f"{scene.scene_id}: ring {ring} px, outline {old_outline} -> {outline} px ({forced} forced), "
            f"recomposition {old_psnr:.1f} -> {scene.ground_truth.recomposition_psnr:.1f} dB"
        )
        assert old_outline > 10, f"{scene.scene_id}: the unsettled background drew only {old_outline}"
