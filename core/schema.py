"""The per-scene file names: one scene directory and one WebDataset sample hold exactly these members.

This module is the single definition of the sample schema; writers, readers, the dataset card and tests import
it. In shards every sample carries ``max_layers`` layer members (fully transparent PNGs for absent objects),
because Ray Data's webdataset reader needs the same member set in every sample.
"""

from __future__ import annotations

import re

RGB = "rgb.png"  # composite photo, 8-bit sRGB RGB, Standard view transform
BACKGROUND = "bg.png"  # table + world without the objects (clean under them, shadows around them), sRGB RGB
IDS = "ids.png"  # modal instance map, 8-bit grey: 0 = background, k + 1 = layer k
DEPTH = "depth.npy"  # float32 [H, W] camera-space depth in metres along the view axis, 0 = no hit
# the SceneSpec plus the derived ground truth (core.groundtruth, computed by synth.render.groundtruth)
SCENE = "scene.json"
LAYER_PATTERN = re.compile(r"^layer_(\d{2})\.png$")  # straight-alpha RGBA, layer_00 frontmost

# Human-readable schema for the dataset card: member -> (dtype/format, meaning).
MEMBER_DOCS: dict[str, tuple[str, str]] = {
    RGB: ("PNG, uint8 RGB, sRGB", "the rendered photo"),
    BACKGROUND: (
        "PNG, uint8 RGB, sRGB",
        "table and world without the objects: under each object the table as if it were absent, its shadows "
        "around it kept",
    ),
    "layer_XX.png": (
        "PNG, uint8 RGBA, straight alpha",
        "amodal object layer XX (00 = frontmost); fully transparent when the slot is empty",
    ),
    IDS: ("PNG, uint8 grey", "modal instance map: 0 = background, k+1 = layer_k visible at the pixel"),
    DEPTH: ("NPY, float32 [H, W]", "camera-space depth in metres (distance along the view axis), 0 = no hit"),
    SCENE: ("JSON, UTF-8", "scene spec (objects, materials, camera, lights, render settings) + ground truth"),
}


def layer_name(k: int) -> str:
    """Member name of the k-th layer from the front."""
    if not 0 <= k < 100:
        raise ValueError(f"layer index {k} out of range 0..99")
    return f"layer_{k:02d}.png"


def member_names(num_layers: int) -> list[str]:
    """All members of a sample with ``num_layers`` layer slots, in the order they are written."""
    return [RGB, BACKGROUND, *(layer_name(k) for k in range(num_layers)), IDS, DEPTH, SCENE]


def layer_index(member: str) -> int | None:
    """``k`` for ``layer_k.png``, else None."""
    m = LAYER_PATTERN.match(member)
    return int(m.group(1)) if m else None
