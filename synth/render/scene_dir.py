"""One rendered scene in memory (RenderedScene) and on disk (a directory of core.schema files).

A scene directory is written under a temporary name and renamed when complete (core.atomic), so a killed
job never leaves a half-written scene under its final name.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import schema
from core.atomic import atomic_path
from core.groundtruth import GroundTruth
from core.spec import SceneSpec


@dataclass
class RenderedScene:
    """The files of one scene keyed by schema name (one layer per object, layer_00 front) + ground truth
    (None for a scene assembled from shard members, whose scene.json holds it)."""

    scene_id: str
    files: dict[str, bytes]
    ground_truth: GroundTruth | None = None

    @property
    def num_layers(self) -> int:
        return sum(1 for name in self.files if schema.layer_index(name) is not None)

    def spec(self) -> SceneSpec:
        return SceneSpec.from_dict(json.loads(self.files[schema.SCENE])["spec"])

    def image(self, name: str) -> np.ndarray:
        """A PNG member decoded to a uint8 array in its own mode (RGB, RGBA or grey)."""
        from PIL import Image

        with Image.open(io.BytesIO(self.files[name])) as im:
            return np.asarray(im).copy()

    def depth(self) -> np.ndarray:
        return np.load(io.BytesIO(self.files[schema.DEPTH]), allow_pickle=False)

    def layers(self) -> np.ndarray:
        """[K, H, W, 4] uint8 straight-alpha layers, front first."""
        return np.stack([self.image(schema.layer_name(k)) for k in range(self.num_layers)])


def write_scene_dir(scene: RenderedScene, out_dir: str | os.PathLike) -> Path:
    """Write every file of ``scene`` into ``out_dir`` (replacing it) atomically; returns the path."""
    expected = set(schema.member_names(scene.num_layers))
    if set(scene.files) != expected:
        raise ValueError(f"scene {scene.scene_id}: files {sorted(scene.files)} do not match the schema")
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name in schema.member_names(scene.num_layers):
            (tmp / name).write_bytes(scene.files[name])
    return out_dir


def read_scene_dir(path: str | os.PathLike) -> RenderedScene:
    """Read a scene directory written by write_scene_dir."""
    path = Path(path)
    files = {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}
    missing = [
        n for n in (schema.RGB, schema.BACKGROUND, schema.IDS, schema.DEPTH, schema.SCENE) if n not in files
    ]
    if missing:
        raise ValueError(f"scene dir {path}: missing {missing}")
    files = {n: b for n, b in files.items() if n in schema.MEMBER_DOCS or schema.layer_index(n) is not None}
    doc = json.loads(files[schema.SCENE])
    ground_truth = GroundTruth.from_scene(doc, str(path / schema.SCENE))
    return RenderedScene(scene_id=doc["spec"]["scene_id"], files=files, ground_truth=ground_truth)
