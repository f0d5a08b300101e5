"""Blender node materials from a MaterialSpec: a procedural scalar field mapped through the palette."""

from __future__ import annotations

import random

import bpy

from core.spec import MaterialSpec


def build_material(spec: MaterialSpec, name: str, has_uv: bool) -> bpy.types.Material:
    """A Principled BSDF whose base colour is the spec's texture over its palette.

    Procedural kinds use Generated coordinates (0..1 over the mesh's bounding box) so that ``texture_scale``
    means "cycles across the object" whatever its size; image textures use the mesh UVs when it has them.
    """
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes.get("Principled BSDF")
    bsdf.inputs["Roughness"].default_value = float(spec.roughness)
    bsdf.inputs["Metallic"].default_value = float(spec.metallic)
    bsdf.inputs["Specular IOR Level"].default_value = float(spec.specular)
    colour = _base_colour(spec, nodes, links, has_uv)
    if isinstance(colour, tuple):
        bsdf.inputs["Base Color"].default_value = (*colour, 1.0)
    else:
        links.new(colour, bsdf.inputs["Base Color"])
    return mat


def _base_colour(spec: MaterialSpec, nodes, links, has_uv: bool):
    """Either a constant RGB tuple or an output socket carrying the base colour."""
    palette = [tuple(float(c) for c in rgb) for rgb in spec.palette] or [(0.5, 0.5, 0.5)]
    if spec.kind == "plain":
        return palette[0]
    coords = nodes.new("ShaderNodeTexCoord")
    if spec.kind == "image":
        if not spec.image_path:
            return palette[0]
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = bpy.data.images.load(spec.image_path, check_existing=True)
        if has_uv:
            links.new(coords.outputs["UV"], tex.inputs["Vector"])
        else:
            tex.projection = "BOX"
            tex.projection_blend = 0.2
            links.new(coords.outputs["Generated"], tex.inputs["Vector"])
        return tex.outputs["Color"]
    # Seeded offset so that two objects with the same kind and palette still differ.
    rng = random.Random(spec.seed)
    mapping = nodes.new("ShaderNodeMapping")
    mapping.inputs["Location"].default_value = tuple(rng.uniform(0.0, 100.0) for _ in range(3))
    links.new(coords.outputs["Generated"], mapping.inputs["Vector"])
    vector = mapping.outputs["Vector"]
    scale = float(spec.texture_scale)
    interpolation = "LINEAR"
    if spec.kind == "noise":
        tex = nodes.new("ShaderNodeTexNoise")
        tex.inputs["Scale"].default_value = scale
        tex.inputs["Detail"].default_value = 4.0
        links.new(vector, tex.inputs["Vector"])
        fac = tex.outputs["Fac"]
    elif spec.kind == "voronoi":
        tex = nodes.new("ShaderNodeTexVoronoi")
        tex.inputs["Scale"].default_value = scale
        links.new(vector, tex.inputs["Vector"])
        fac = tex.outputs["Distance"]
    elif spec.kind == "wave":
        tex = nodes.new("ShaderNodeTexWave")
        tex.inputs["Scale"].default_value = scale
        tex.inputs["Distortion"].default_value = 2.0
        links.new(vector, tex.inputs["Vector"])
        fac = tex.outputs["Fac"]
    elif spec.kind == "checker":
        tex = nodes.new("ShaderNodeTexChecker")
        tex.inputs["Scale"].default_value = scale
        links.new(coords.outputs["Generated"], tex.inputs["Vector"])
        fac = tex.outputs["Fac"]
        interpolation = "CONSTANT"
        palette = palette[:2]
    elif spec.kind == "stripes":
        # Hard bands along the object's x: fract(x * scale), one palette colour per band.
        sep = nodes.new("ShaderNodeSeparateXYZ")
        links.new(coords.outputs["Generated"], sep.inputs["Vector"])
        mul = nodes.new("ShaderNodeMath")
        mul.operation = "MULTIPLY"
        mul.inputs[1].default_value = scale
        links.new(sep.outputs["X"], mul.inputs[0])
        frac = nodes.new("ShaderNodeMath")
        frac.operation = "FRACT"
        links.new(mul.outputs["Value"], frac.inputs[0])
        fac = frac.outputs["Value"]
        interpolation = "CONSTANT"
    elif spec.kind == "gradient":
        tex = nodes.new("ShaderNodeTexGradient")
        links.new(coords.outputs["Generated"], tex.inputs["Vector"])
        fac = tex.outputs["Fac"]
    else:
        raise ValueError(f"material kind {spec.kind!r} unknown")
    ramp = nodes.new("ShaderNodeValToRGB")
    _fill_ramp(ramp.color_ramp, palette, interpolation)
    links.new(fac, ramp.inputs["Fac"])
    return ramp.outputs["Color"]


def _fill_ramp(ramp, palette: list[tuple[float, float, float]], interpolation: str) -> None:
    """Evenly spaced stops (band starts for CONSTANT interpolation)."""
    ramp.interpolation = interpolation
    n = len(palette)
    if n == 1:
        palette = palette * 2
        n = 2
    positions = [i / n for i in range(n)] if interpolation == "CONSTANT" else [i / (n - 1) for i in range(n)]
    elements = ramp.elements
    while len(elements) > 1:
        elements.remove(elements[-1])
    elements[0].position = positions[0]
    elements[0].color = (*palette[0], 1.0)
    # new() returns the inserted element; stops are added in increasing position so none is reordered.
    for pos, rgb in zip(positions[1:], palette[1:], strict=True):
        elements.new(pos).color = (*rgb, 1.0)
