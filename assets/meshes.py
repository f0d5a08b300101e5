"""Meshes from files (``--assets-dir``): .obj/.glb/.gltf/.ply/.stl through trimesh, normalised like the
procedural shapes (resting in their most probable stable pose, base at z = 0, centred in x, y, largest extent
``AssetRef.target_size``).

An unreadable file never stops a dataset: ``scan_assets_dir`` reports it in one line and counts it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import numpy as np
import trimesh

from core.errors import UserError
from core.spec import AssetRef

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl")


def file_asset_id(path: Path, data: bytes) -> str:
    """Stable id from the file name and its bytes (the same file gives the same id on every machine)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:40] or "mesh"
    return f"file-{slug}-{hashlib.sha1(data).hexdigest()[:10]}"


def scan_assets_dir(assets_dir: str | Path) -> tuple[list[AssetRef], list[str]]:
    """(usable refs, one-line error per unreadable file) for every mesh file under ``assets_dir``, sorted by
    path so every worker sees the same list."""
    root = Path(assets_dir)
    if not root.is_dir():
        raise UserError(
            f"{root}: not a directory (expected a folder of {'/'.join(MESH_SUFFIXES)})", option="assets_dir"
        )
    refs: list[AssetRef] = []
    errors: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MESH_SUFFIXES):
        try:
            data = path.read_bytes()
            _load_unit_mesh(str(path.resolve()))
        except Exception as err:  # any loader failure: report and skip, never crash mid-dataset
            detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            errors.append(f"{path}: unreadable mesh, skipped ({detail})")
            continue
        refs.append(
            AssetRef(
                asset_id=file_asset_id(path, data), source="file", family="file", path=str(path.resolve())
            )
        )
    return refs, errors


@functools.lru_cache(maxsize=8)
def scan_assets_dir_cached(assets_dir: str) -> tuple[AssetRef, ...]:
    """Usable refs of ``assets_dir``, scanned once per process (the sampler calls this for every scene)."""
    refs, _ = scan_assets_dir(assets_dir)
    return tuple(refs)


def load_file_mesh(ref: AssetRef) -> trimesh.Trimesh:
    """The mesh of a file asset, normalised to ``ref.target_size`` (a new mesh each call)."""
    if not ref.path:
        raise ValueError(f"asset {ref.asset_id}: a file asset needs a path")
    mesh = _load_unit_mesh(str(Path(ref.path).resolve())).copy()
    mesh.apply_scale(float(ref.target_size))
    return mesh


@functools.lru_cache(maxsize=64)
def _load_unit_mesh(path: str) -> trimesh.Trimesh:
    """Load, concatenate a scene into one mesh, bake the most probable stable pose (of the convex hull, which
    is watertight even when the file is not), then scale to unit largest extent on z = 0, centred in x, y."""
    mesh = trimesh.load_mesh(path, process=True)
    if isinstance(mesh, trimesh.Scene):
        mesh = mesh.to_mesh()
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError("no triangles")
    if not np.all(np.isfinite(mesh.vertices)) or float(mesh.extents.max()) <= 0:
        raise ValueError("degenerate geometry")
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    mesh.apply_scale(1.0 / float(mesh.extents.max()))
    hull = mesh.convex_hull
    poses, _ = trimesh.poses.compute_stable_poses(hull)
    if len(poses):
        mesh.apply_transform(poses[0])
    mesh.apply_scale(1.0 / float(mesh.extents.max()))
    lo, hi = mesh.bounds
    mesh.apply_translation([-(lo[0] + hi[0]) / 2.0, -(lo[1] + hi[1]) / 2.0, -lo[2]])
    return mesh
