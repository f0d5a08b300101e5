"""Reset the Blender scene and build a SceneSpec in it: table, objects (trimesh meshes), camera, lights."""

from __future__ import annotations

import math
from dataclasses import dataclass

import bpy
import numpy as np
import trimesh
from mathutils import Matrix

from core.spec import CameraSpec, SceneSpec
from synth.render.blender.lighting import build_light, build_world
from synth.render.blender.materials import build_material

# Faces meeting at a sharper angle than this keep a hard edge; smoother ones are shaded smooth.
SHARP_ANGLE = math.radians(35.0)


@dataclass
class BuiltScene:
    """Handles on what was built; ``objects`` follows ``spec.objects`` order."""

    table: bpy.types.Object
    objects: list[bpy.types.Object]
    camera: bpy.types.Object


def clear_scene(scene: bpy.types.Scene) -> None:
    """Remove every object and data block a previous scene created, so a long-lived process does not grow."""
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj, do_unlink=True)
    keep = scene.compositing_node_group
    for collection in (
        bpy.data.meshes,
        bpy.data.materials,
        bpy.data.lights,
        bpy.data.cameras,
        bpy.data.worlds,
        bpy.data.textures,
        bpy.data.node_groups,
    ):
        for block in list(collection):
            if keep is None or block.name != keep.name or not isinstance(block, bpy.types.CompositorNodeTree):
                collection.remove(block)
    for image in list(bpy.data.images):
        if image.type == "IMAGE":
            bpy.data.images.remove(image)
    bpy.data.orphans_purge(do_local_ids=True, do_linked_ids=True, do_recursive=True)


def mesh_from_trimesh(mesh: trimesh.Trimesh, name: str) -> tuple[bpy.types.Mesh, bool]:
    """A Blender mesh with the same vertices/faces (and per-corner UVs when the trimesh has them)."""
    verts = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.faces, dtype=np.int32)
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(verts))
    me.vertices.foreach_set("co", verts.ravel())
    me.loops.add(faces.size)
    me.loops.foreach_set("vertex_index", faces.ravel())
    me.polygons.add(len(faces))
    me.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    uv = getattr(mesh.visual, "uv", None)
    has_uv = uv is not None and len(uv) == len(verts)
    if has_uv:
        layer = me.uv_layers.new(name="UVMap")
        layer.data.foreach_set("uv", np.asarray(uv, dtype=np.float32)[faces.ravel()].ravel())
    me.update(calc_edges=True)
    me.validate(clean_customdata=False)
    me.shade_smooth()
    me.set_sharp_from_angle(angle=SHARP_ANGLE)
    return me, has_uv


def table_mesh(size: tuple[float, float], thickness: float) -> trimesh.Trimesh:
    """A box whose top face is the plane z = 0, with planar UVs in metres over x, y."""
    box = trimesh.creation.box(extents=(size[0], size[1], thickness))
    box.apply_translation((0.0, 0.0, -thickness / 2.0))
    uv = np.asarray(box.vertices)[:, :2] / max(size)
    box.visual = trimesh.visual.TextureVisuals(uv=uv)
    return box


def setup_camera(spec: CameraSpec, scene: bpy.types.Scene) -> bpy.types.Object:
    """Exact intrinsics: horizontal sensor fit, square pixels, principal point at the centre."""
    cam = bpy.data.cameras.new("camera")
    cam.sensor_fit = "HORIZONTAL"
    cam.sensor_width = float(spec.sensor_width_mm)
    cam.lens = float(spec.focal_mm)
    cam.shift_x = cam.shift_y = 0.0
    cam.clip_start = 0.01
    cam.clip_end = 1000.0
    obj = bpy.data.objects.new("camera", cam)
    obj.matrix_world = Matrix([list(row) for row in spec.cam_to_world])
    scene.collection.objects.link(obj)
    scene.camera = obj
    render = scene.render
    render.resolution_x, render.resolution_y = int(spec.width), int(spec.height)
    render.resolution_percentage = 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    return obj


def build_scene(spec: SceneSpec, meshes: list[trimesh.Trimesh], scene: bpy.types.Scene) -> BuiltScene:
    """Build ``spec`` into the (cleared) scene; ``meshes[i]`` is the asset mesh of ``spec.objects[i]``."""
    collection = scene.collection
    table_me, has_uv = mesh_from_trimesh(table_mesh(spec.table.size, spec.table.thickness), "table")
    table_me.materials.append(build_material(spec.table.material, "table", has_uv))
    table = bpy.data.objects.new("table", table_me)
    table.pass_index = 0
    collection.objects.link(table)
    objects = []
    for obj_spec, mesh in zip(spec.objects, meshes, strict=True):
        me, has_uv = mesh_from_trimesh(mesh, obj_spec.name)
        me.materials.append(build_material(obj_spec.material, obj_spec.name, has_uv))
        obj = bpy.data.objects.new(obj_spec.name, me)
        obj.rotation_mode = "QUATERNION"
        obj.location = obj_spec.location
        obj.rotation_quaternion = obj_spec.rotation
        obj.scale = obj_spec.scale
        obj.pass_index = int(obj_spec.pass_index)
        collection.objects.link(obj)
        objects.append(obj)
    for i, light in enumerate(spec.lights):
        build_light(light, f"light_{i}", collection)
    scene.world = build_world(spec.world)
    camera = setup_camera(spec.camera, scene)
    return BuiltScene(table=table, objects=objects, camera=camera)
