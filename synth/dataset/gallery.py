"""A static HTML gallery of dataset samples: photo, background, ids, depth and the layer stack (front first,
with each layer's object name and visible fraction), browsable from the file system with no server.

Images are extracted next to ``index.html`` (``gallery/img/<key>/...``) and referenced by relative paths.
Layers are shown over a CSS checkerboard so that transparency is visible; ids and depth, which are nearly
black as stored, are shown false-coloured (the originals are extracted too).
"""

from __future__ import annotations

import html
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from core import schema
from core.groundtruth import GroundTruth

_CSS = """
body { font-family: system-ui, sans-serif; margin: 16px; background: #f4f4f4; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px 0; } .meta { color: #555; font-size: 13px; margin-bottom: 14px; }
.sample { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px; margin-bottom: 14px; }
.sample h2 { font-size: 15px; margin: 0 0 8px 0; font-family: monospace; }
.row { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
figure { margin: 0; text-align: center; font-size: 12px; }
figure img { width: 128px; height: 128px; image-rendering: pixelated; border: 1px solid #ccc;
  display: block; }
figcaption { max-width: 128px; margin-top: 2px; line-height: 1.25; }
.layers { border-left: 3px solid #888; padding-left: 8px; margin-left: 4px; }
.checker { background-color: #fff;
  background-image: linear-gradient(45deg, #ccc 25%, transparent 25%),
    linear-gradient(-45deg, #ccc 25%, transparent 25%),
    linear-gradient(45deg, transparent 75%, #ccc 75%), linear-gradient(-45deg, transparent 75%, #ccc 75%);
  background-size: 16px 16px; background-position: 0 0, 0 8px, 8px -8px, -8px 0; }
.vis { font-weight: 600; } .low { color: #b00; }
"""

_PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [220, 190, 255],
        [170, 110, 40],
        [255, 250, 200],
        [128, 0, 0],
        [170, 255, 195],
    ],
    dtype=np.uint8,
)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def colour_ids(ids_png: bytes) -> bytes:
    with Image.open(io.BytesIO(ids_png)) as im:
        ids = np.asarray(im)
    return _png(_PALETTE[ids % len(_PALETTE)])


def colour_depth(depth_npy: bytes) -> bytes:
    """Near = bright, far = dark, no hit = black."""
    depth = np.load(io.BytesIO(depth_npy), allow_pickle=False)
    hit = depth > 0
    out = np.zeros(depth.shape, np.uint8)
    if hit.any():
        lo, hi = float(depth[hit].min()), float(depth[hit].max())
        scaled = 1.0 - (depth[hit] - lo) / (hi - lo) if hi > lo else np.ones(int(hit.sum()))
        out[hit] = np.round(40 + 215 * scaled).astype(np.uint8)
    return _png(out)


def write_gallery(
    out_dir: str | os.PathLike,
    samples: list[tuple[str, str, dict[str, bytes]]],
    title: str,
    subtitle: str = "",
) -> Path:
    """Write ``out_dir/index.html`` and its images for ``(split, key, members)`` "
    "samples; return the html path."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "img").mkdir(parents=True)
    blocks = []
    for split, key, members in samples:
        blocks.append(_sample_block(out_dir, split, key, members))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f'<h1>{html.escape(title)}</h1><div class="meta">{html.escape(subtitle)}</div>\n'
        + "\n".join(blocks)
        + "\n</body></html>\n"
    )
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _figure(src: str, caption: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<figure><img{klass} src="{html.escape(src)}" alt="{html.escape(caption)}" loading="lazy">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _sample_block(out_dir: Path, split: str, key: str, members: dict[str, bytes]) -> str:
    img_dir = out_dir / "img" / key
    img_dir.mkdir(parents=True)
    gt = GroundTruth.from_scene(json.loads(members[schema.SCENE]), f"{key}.{schema.SCENE}")
    objects = gt.objects
    for name in (schema.RGB, schema.BACKGROUND, schema.IDS):
        (img_dir / name).write_bytes(members[name])
    (img_dir / "ids_colour.png").write_bytes(colour_ids(members[schema.IDS]))
    (img_dir / "depth.png").write_bytes(colour_depth(members[schema.DEPTH]))
    rel = f"img/{key}/"
    figs = [
        _figure(rel + schema.RGB, "photo"),
        _figure(rel + schema.BACKGROUND, "background"),
        _figure(rel + "ids_colour.png", "ids (modal)"),
        _figure(rel + "depth.png", "depth (near = bright)"),
    ]
    layer_figs = []
    for k, obj in enumerate(objects):
        name = schema.layer_name(k)
        (img_dir / name).write_bytes(members[name])
        vis = float(obj.visible_fraction)
        cls = "vis low" if vis < 0.5 else "vis"
        where = "front" if k == 0 else ("back" if k == len(objects) - 1 else f"#{k}")
        caption = (
            f"layer {k:02d} ({where})<br>{html.escape(obj.name)}<br>"
            f'<span class="{cls}">visible {100 * vis:.0f}%</span>'
        )
        layer_figs.append(_figure(rel + name, caption, "checker"))
    empty = sum(1 for m in members if schema.layer_index(m) is not None) - len(objects)
    info = f"{split} &middot; {len(objects)} objects"
    if empty > 0:
        info += f" &middot; {empty} empty slot(s)"
    info += f" &middot; recomposition PSNR {gt.recomposition_psnr:.1f} dB"
    edges = gt.occlusion_edges
    if edges:
        info += (
            " &middot; occlusions: "
            + ", ".join(html.escape(f"{e.front} > {e.back}") for e in edges[:6])
            + (" ..." if len(edges) > 6 else "")
        )
    return (
        f'<div class="sample" id="{html.escape(key)}"><h2>{html.escape(key)}</h2>'
        f'<div class="meta">{info}</div><div class="row">{"".join(figs)}'
        f'<div class="row layers">{"".join(layer_figs)}</div></div></div>'
    )
