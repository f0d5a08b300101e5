"""Tiny synthetic scene shards in the ``core.schema`` layout, for tests (no Blender needed).

Each scene: 1..max_objects flat coloured shapes (discs and boxes) on a gradient background, drawn with
numpy; ground-truth amodal layers, front-to-back order, ``ids.png`` and ``rgb.png`` are exact by construction
(the photo IS the composite of the layers over the background, via ``core.layers.composite``).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from core import schema
from core.layers import EMPTY_RGB, composite, modal_ids, to_channels_last


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def make_scene(rng: np.random.Generator, size: int, num_objects: int) -> dict[str, np.ndarray]:
    """Float arrays in [0,1]: layers [N,4,H,W] (front first), background [3,H,W], photo [3,H,W], ids [H,W]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0.2, 0.8, 3), rng.uniform(0.2, 0.8, 3)
    background = (c0[:, None, None] * (1 - yy) + c1[:, None, None] * yy).astype(np.float32)
    layers = np.zeros((num_objects, 4, size, size), np.float32)
    layers[:, :3] = np.asarray(EMPTY_RGB, np.float32)[:, None, None]
    for k in range(num_objects):
        cx, cy = rng.uniform(0.2, 0.8, 2)
        r = rng.uniform(0.12, 0.3)
        if rng.random() < 0.5:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        else:
            mask = (abs(xx - cx) < r) & (abs(yy - cy) < r * rng.uniform(0.5, 1.0))
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        layers[k, :3][:, mask] = colour[:, None]
        layers[k, 3][mask] = 1.0
    # Quantise first so the stored PNGs composite exactly to the stored photo.
    layers = np.round(layers * 255) / 255
    background = np.round(background * 255) / 255
    photo = np.round(composite(layers, background) * 255) / 255
    ids = modal_ids(layers[:, 3])
    return {"layers": layers, "background": background, "photo": photo, "ids": ids}


def scene_depth(ids: np.ndarray, num_objects: int) -> np.ndarray:
    """A depth map in metres consistent with the layer order: a table receding from 2 m (bottom row) to
    3 m (top row), and object k (front first) standing at 1 + 0.1 k m wherever it is visible."""
    h, w = ids.shape
    table = np.linspace(3.0, 2.0, h, dtype=np.float32)[:, None].repeat(w, 1)
    objects = 1.0 + 0.1 * np.arange(num_objects, dtype=np.float32)
    ids = np.asarray(ids, np.int64)
    nearest = objects[np.clip(ids - 1, 0, None)] if num_objects else table
    return np.where(ids > 0, nearest, table).astype(np.float32)


def scene_members(scene: dict[str, np.ndarray], max_layers: int, key: str) -> dict[str, bytes]:
    """The schema members of one scene (``max_layers`` layer PNGs, the unused ones fully transparent)."""
    u8 = lambda x: np.clip(np.round(x * 255), 0, 255).astype(np.uint8)  # noqa: E731
    n, _, h, w = scene["layers"].shape
    files = {
        schema.RGB: _png(u8(to_channels_last(scene["photo"]))),
        schema.BACKGROUND: _png(u8(to_channels_last(scene["background"]))),
        schema.IDS: _png(scene["ids"].astype(np.uint8)),
        schema.SCENE: json.dumps({"scene_id": key, "num_objects": n}).encode(),
    }
    depth = io.BytesIO()
    np.save(depth, scene_depth(scene["ids"], n))
    files[schema.DEPTH] = depth.getvalue()
    for k in range(max_layers):
        rgba = scene["layers"][k] if k < n else np.zeros((4, h, w), np.float32)
        files[schema.layer_name(k)] = _png(u8(to_channels_last(rgba)))
    return files


def write_shard(
    path: str | Path,
    num_scenes: int,
    size: int = 32,
    max_objects: int = 3,
    max_layers: int | None = None,
    seed: int = 0,
    key_prefix: str = "scene",
    corrupt: tuple[int, ...] = (),
) -> list[str]:
    """Write a tar shard of ``num_scenes`` scenes; ``corrupt`` indices get an unreadable ``rgb.png``.

    Returns the sample keys in order.
    """
    rng = np.random.default_rng(seed)
    max_layers = max_layers or max_objects
    keys = []
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(num_scenes):
            key = f"{key_prefix}{seed:03d}_{i:05d}"
            n = int(rng.integers(1, max_objects + 1))
            files = scene_members(make_scene(rng, size, n), max_layers, key)
            if i in corrupt:
                files[schema.RGB] = b"not a png"
            for name in schema.member_names(max_layers):
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(files[name])
                info.mtime = 0
                tar.addfile(info, io.BytesIO(files[name]))
            keys.append(key)
    return keys
