"""World (sky, gradient or HDRI environment) and area/sun lights from the spec."""

from __future__ import annotations

import math

import bpy

from core.spec import LightSpec, WorldSpec


def build_world(spec: WorldSpec) -> bpy.types.World:
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    nodes, links = world.node_tree.nodes, world.node_tree.links
    background = nodes.get("Background") or nodes.new("ShaderNodeBackground")
    background.inputs["Strength"].default_value = float(spec.strength)
    if spec.kind != "hdri":
        # Smooth skies need no fine importance map; Cycles' automatic 1024-wide map costs ~0.5 s per scene.
        world.cycles.sampling_method = "MANUAL"
        world.cycles.sample_map_resolution = 64
    if spec.kind == "sky":
        sky = nodes.new("ShaderNodeTexSky")
        # Analytic Hosek-Wilkie: the Nishita-type models precompute a sky table for 0.2-0.3 s every scene.
        sky.sky_type = "HOSEK_WILKIE"
        sky.turbidity = 2.5
        elevation, rotation = float(spec.sun_elevation), float(spec.sun_rotation)
        sky.sun_direction = (
            math.cos(elevation) * math.sin(rotation),
            math.cos(elevation) * math.cos(rotation),
            math.sin(elevation),
        )
        links.new(sky.outputs["Color"], background.inputs["Color"])
    elif spec.kind == "gradient":
        colours = list(spec.colors) or [(0.6, 0.6, 0.6), (0.3, 0.4, 0.6)]
        coords = nodes.new("ShaderNodeTexCoord")
        sep = nodes.new("ShaderNodeSeparateXYZ")
        links.new(coords.outputs["Generated"], sep.inputs["Vector"])  # the view direction for a world
        ramp = nodes.new("ShaderNodeValToRGB")
        ramp.color_ramp.elements[0].position = 0.0
        ramp.color_ramp.elements[0].color = (*colours[0], 1.0)
        ramp.color_ramp.elements[1].position = 1.0
        ramp.color_ramp.elements[1].color = (*colours[-1], 1.0)
        links.new(sep.outputs["Z"], ramp.inputs["Fac"])
        links.new(ramp.outputs["Color"], background.inputs["Color"])
    elif spec.kind == "hdri":
        if not spec.hdri_path:
            raise ValueError("world kind 'hdri' needs hdri_path")
        coords = nodes.new("ShaderNodeTexCoord")
        mapping = nodes.new("ShaderNodeMapping")
        mapping.inputs["Rotation"].default_value = (0.0, 0.0, float(spec.rotation_z))
        env = nodes.new("ShaderNodeTexEnvironment")
        env.image = bpy.data.images.load(spec.hdri_path, check_existing=True)
        links.new(coords.outputs["Generated"], mapping.inputs["Vector"])
        links.new(mapping.outputs["Vector"], env.inputs["Vector"])
        links.new(env.outputs["Color"], background.inputs["Color"])
    else:
        raise ValueError(f"world kind {spec.kind!r} unknown")
    return world


def build_light(spec: LightSpec, name: str, collection: bpy.types.Collection) -> bpy.types.Object:
    if spec.kind not in ("AREA", "SUN"):
        raise ValueError(f"light kind {spec.kind!r} unknown")
    light = bpy.data.lights.new(name, type=spec.kind)
    light.energy = float(spec.power)
    light.color = tuple(float(c) for c in spec.color)
    if spec.kind == "AREA":
        light.size = float(spec.size)
    else:
        light.angle = float(spec.size)
    obj = bpy.data.objects.new(name, light)
    obj.location = spec.location
    obj.rotation_mode = "QUATERNION"
    obj.rotation_quaternion = spec.rotation
    collection.objects.link(obj)
    return obj
