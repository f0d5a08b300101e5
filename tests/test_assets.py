"""Procedural shapes, file meshes, materials and lights: the properties the sampler and renderer rely on."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import shapely
import trimesh

from assets.lighting import blackbody_rgb, sample_lights, sample_world
from assets.materials import sample_material, sample_table_material
from assets.meshes import scan_assets_dir
from assets.shapes import FAMILIES, SIZE_RANGE, build_mesh, make_asset_ref
from core.errors import UserError
from core.spec import MATERIAL_KINDS, quat_to_matrix

SEEDS = range(4)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_meshes_are_watertight_tabletop_sized_and_resting(family: str) -> None:
    for seed in SEEDS:
        ref = make_asset_ref(family, seed)
        assert ref.asset_id == f"{family}-{seed:08x}"
        mesh = build_mesh(ref)
        assert mesh.is_watertight and mesh.is_winding_consistent, (family, seed)
        assert mesh.volume > 0, (family, seed)
        assert len(mesh.faces) <= 3000
        assert SIZE_RANGE[0] - 1e-9 <= mesh.extents.max() <= SIZE_RANGE[1] + 1e-9
        assert mesh.extents.min() > 0.005
        lo, hi = mesh.bounds
        assert abs(lo[2]) < 1e-9 and abs(lo[0] + hi[0]) < 1e-9 and abs(lo[1] + hi[1]) < 1e-9
        # Resting: the centre of mass lies over the convex hull of the contact points (stable, not tipping).
        contact = mesh.vertices[mesh.vertices[:, 2] < 1e-4, :2]
        hull = shapely.MultiPoint(contact).convex_hull
        assert hull.distance(shapely.Point(mesh.center_mass[:2])) < 5e-4, (family, seed)
        uv = mesh.visual.uv
        assert uv is not None and uv.shape == (len(mesh.vertices), 2)
        assert np.all((uv >= 0) & (uv <= 1))


def test_build_mesh_is_deterministic_and_returns_private_copies() -> None:
    ref = make_asset_ref("vase", 123)
    a = build_mesh(ref)
    a.apply_translation([1.0, 0.0, 0.0])
    b = build_mesh(ref)
    assert abs(b.bounds[0][2]) < 1e-12 and abs(b.bounds.mean(axis=0)[0]) < 1e-9
    assert not np.allclose(build_mesh(make_asset_ref("vase", 124)).extents, b.extents)


def test_make_asset_ref_rejects_unknown_family_and_bad_seed() -> None:
    with pytest.raises(ValueError, match="unknown shape family"):
        make_asset_ref("teapot", 0)
    with pytest.raises(ValueError, match="out of range"):
        make_asset_ref("box", -1)


def _write_meshes(folder) -> None:
    tall = trimesh.creation.box([0.02, 0.03, 0.1])  # stands on end: its stable pose lies down
    tall.export(folder / "tall.obj")
    tall.export(folder / "tall.stl")
    trimesh.creation.icosphere(subdivisions=2).export(folder / "ball.ply")
    scene = trimesh.Scene(
        [trimesh.creation.box([1, 1, 1]), trimesh.creation.icosphere().apply_translation([2, 0, 0])]
    )
    scene.export(folder / "pair.glb")
    (folder / "broken.obj").write_text("v 1 2\nf 1 2 9\n garbage\n")
    (folder / "empty.stl").write_bytes(b"")
    (folder / "notes.txt").write_text("not a mesh")


def test_scan_assets_dir_imports_good_files_and_counts_bad_ones(tmp_path) -> None:
    _write_meshes(tmp_path)
    refs, errors = scan_assets_dir(tmp_path)
    assert sorted(r.path.rsplit("/", 1)[1] for r in refs) == ["ball.ply", "pair.glb", "tall.obj", "tall.stl"]
    assert len(errors) == 2
    assert any("broken.obj" in e for e in errors) and any("empty.stl" in e for e in errors)
    assert all("\n" not in e for e in errors)
    assert len({r.asset_id for r in refs}) == len(refs) and all("." not in r.asset_id for r in refs)
    assert scan_assets_dir(tmp_path)[0] == refs  # stable ids and order
    for ref in refs:
        assert ref.source == "file"
        mesh = build_mesh(dataclasses.replace(ref, target_size=0.08))
        assert mesh.extents.max() == pytest.approx(0.08)
        lo, hi = mesh.bounds
        assert abs(lo[2]) < 1e-9 and abs(lo[0] + hi[0]) < 1e-9 and abs(lo[1] + hi[1]) < 1e-9
        if ref.path.endswith("tall.obj"):
            assert mesh.extents[2] == pytest.approx(0.08 * 0.2)  # lying on its largest face
        if ref.path.endswith("pair.glb"):
            assert mesh.body_count == 2  # the scene's two geometries, concatenated


def test_scan_assets_dir_rejects_missing_folder(tmp_path) -> None:
    with pytest.raises(UserError, match="not a directory"):
        scan_assets_dir(tmp_path / "nope")


def test_sample_material_is_valid_and_seeded(tmp_path) -> None:
    (tmp_path / "wood.png").write_bytes(b"\x89PNG fake")
    kinds = set()
    for seed in range(60):
        m = sample_material(np.random.default_rng(seed), texture_dir=tmp_path)
        assert m == sample_material(np.random.default_rng(seed), texture_dir=tmp_path)
        assert m.kind in MATERIAL_KINDS
        assert 1 <= len(m.palette) <= 4 and all(0.0 <= c <= 1.0 for rgb in m.palette for c in rgb)
        assert 0 <= m.roughness <= 1 and 0 <= m.metallic <= 1 and m.texture_scale > 0
        assert (m.image_path is not None) == (m.kind == "image")
        kinds.add(m.kind)
    assert kinds == set(MATERIAL_KINDS)
    no_images = {sample_material(np.random.default_rng(s)).kind for s in range(60)}
    assert "image" not in no_images
    assert sample_table_material(np.random.default_rng(0)).metallic == 0.0


def test_lights_point_at_the_table_and_world_kinds(tmp_path) -> None:
    for seed in range(20):
        lights = sample_lights(np.random.default_rng(seed), 1, 3)
        assert 1 <= len(lights) <= 3
        for light in lights:
            assert light.kind in ("AREA", "SUN") and light.power > 0 and light.size > 0
            assert light.location[2] > 0.1
            shine = -np.array(quat_to_matrix(light.rotation))[:, 2]  # the light's local -Z
            to_table = -np.array(light.location) / np.linalg.norm(light.location)
            assert math.degrees(math.acos(np.clip(shine @ to_table, -1, 1))) < 8.0
            assert max(light.color) == pytest.approx(1.0)
    warm, daylight = blackbody_rgb(2700), blackbody_rgb(6500)
    assert warm[0] > warm[2] and min(daylight) > 0.8
    (tmp_path / "studio.hdr").write_bytes(b"#?RADIANCE")
    kinds = {sample_world(np.random.default_rng(s), hdri_dir=tmp_path).kind for s in range(30)}
    assert kinds == {"hdri", "sky", "gradient"}
    assert {sample_world(np.random.default_rng(s)).kind for s in range(30)} == {"sky", "gradient"}
