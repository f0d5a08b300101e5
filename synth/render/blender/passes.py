"""Render passes through the compositor: a File Output node writes linear 32-bit EXRs we read back.

In Blender 5 the Viewer node never runs in background mode and the Render Result has no pixels, so the
combined RGBA, the Depth pass and the Object Index pass go through one File Output node (toolchain.md).
Renders that need only the combined RGBA skip the compositor (its File Output costs ~30-100 ms a call,
more than a small border render itself): ``read_render_result`` saves the Render Result to an EXR instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import bpy
import numpy as np

PASSES = {"rgba": ("RGBA", "Image"), "depth": ("FLOAT", "Depth"), "index": ("FLOAT", "Object Index")}


def setup_compositor(scene: bpy.types.Scene, out_dir: str) -> None:
    """Wire Render Layers -> File Output (one EXR per pass) and enable the data passes."""
    view_layer = scene.view_layers[0]
    view_layer.use_pass_z = True
    view_layer.use_pass_object_index = True
    tree = scene.compositing_node_group
    if tree is None:
        tree = bpy.data.node_groups.new("passes", "CompositorNodeTree")
        scene.compositing_node_group = tree
    tree.use_fake_user = True  # survives orphans_purge between scenes
    tree.nodes.clear()
    layers = tree.nodes.new("CompositorNodeRLayers")
    layers.scene = scene
    out = tree.nodes.new("CompositorNodeOutputFile")
    out.directory = out_dir
    out.file_name = ""
    fmt = out.format
    fmt.media_type = "IMAGE"  # before file_format: the default multilayer type hides OPEN_EXR's options
    fmt.file_format = "OPEN_EXR"
    fmt.color_depth = "32"
    fmt.exr_codec = "NONE"
    out.file_output_items.clear()
    for name, (socket_type, source) in PASSES.items():
        if source in layers.outputs:  # EEVEE has no Object Index pass
            out.file_output_items.new(socket_type, name)
            tree.links.new(layers.outputs[source], out.inputs[name])
    fmt.color_mode = "RGBA"
    scene.render.use_compositing = True


def setup_render_result_format(scene: bpy.types.Scene) -> None:
    """The output format ``Image.save_render`` uses: linear 32-bit RGBA EXR, like the File Output's."""
    fmt = scene.render.image_settings
    fmt.media_type = "IMAGE"
    fmt.file_format = "OPEN_EXR"
    fmt.color_depth = "32"
    fmt.exr_codec = "NONE"
    fmt.color_mode = "RGBA"


def read_render_result(scene: bpy.types.Scene, path: str) -> np.ndarray:
    """The last render's combined pass, top row first, premultiplied linear RGBA [h, w, 4] at the size of
    the (cropped) render."""
    bpy.data.images["Render Result"].save_render(path, scene=scene)
    pixels = _load_exr(path)
    if pixels.shape[-1] != 4:
        raise RuntimeError(f"render result {path} has {pixels.shape[-1]} channels, expected RGBA")
    return pixels


def _load_exr(path: str | Path) -> np.ndarray:
    """Load an EXR through Blender as raw data, delete the file, return [h, w, channels] top row first."""
    image = bpy.data.images.load(str(path))
    try:
        image.colorspace_settings.is_data = True
        width, height = image.size
        pixels = np.empty(width * height * image.channels, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        channels = image.channels
    finally:
        bpy.data.images.remove(image)
    os.unlink(path)
    return np.ascontiguousarray(pixels.reshape(height, width, channels)[::-1])  # Blender's rows go bottom-up


def read_passes(out_dir: str, height: int, width: int) -> dict[str, np.ndarray]:
    """The EXRs of the last render, top row first: rgba [H, W, 4] premultiplied linear, depth/index [H, W]
    (no index where the engine has no Object Index pass)."""
    result = {}
    files = {p.name: p for p in Path(out_dir).iterdir() if p.suffix == ".exr"}
    for name in PASSES:
        path = next((files[f] for f in sorted(files) if f.startswith(name)), None)
        if path is None:
            if name == "index":
                continue  # not wired for this engine
            raise RuntimeError(f"render pass {name!r} was not written to {out_dir}")
        array = _load_exr(path)
        if array.shape[:2] != (height, width):
            raise RuntimeError(f"render pass {name!r} is {array.shape[:2]}, expected {(height, width)}")
        result[name] = array if name == "rgba" else np.ascontiguousarray(array[..., 0])
    return result
