"""An independent rasteriser for the same SceneSpec (pyrender, OpenGL via EGL): per-object amodal masks and
depth. Comparing them with Blender's layers catches camera, pose and scale convention errors.

Both sample each pixel at its centre with the same K (no offset on either side), so a half-pixel error in
either renderer's camera shows as an IoU loss in tests/test_render.py."""

from __future__ import annotations

import os

import numpy as np
import trimesh

from core.spec import SceneSpec, object_to_world


def render_amodal(
    spec: SceneSpec, meshes: list[trimesh.Trimesh] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(masks [N, H, W] bool, depth [N, H, W] float32 view-axis metres, 0 = miss), each object alone.

    ``meshes[i]`` is the asset-local mesh of ``spec.objects[i]`` (default ``assets.shapes.build_mesh``).
    """
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    import pyrender

    if meshes is None:
        from assets.shapes import build_mesh

        meshes = [build_mesh(o.asset) for o in spec.objects]
    cam = spec.camera
    (fx, _, cx), (_, fy, cy), _ = cam.intrinsics()
    camera = pyrender.IntrinsicsCamera(fx=fx, fy=fy, cx=cx, cy=cy, znear=0.01, zfar=100.0)
    pose = np.asarray(cam.cam_to_world, dtype=np.float64)  # same OpenGL convention as the spec
    renderer = pyrender.OffscreenRenderer(cam.width, cam.height)
    try:
        depths = np.zeros((len(spec.objects), cam.height, cam.width), dtype=np.float32)
        for i, (obj, mesh) in enumerate(zip(spec.objects, meshes, strict=True)):
            scene = pyrender.Scene()
            node = scene.add(
                pyrender.Mesh.from_trimesh(mesh, smooth=False), pose=np.asarray(object_to_world(obj))
            )
            scene.add(camera, pose=pose)
            # SEG, not DEPTH_ONLY: pyrender draws into a 4x multisampled framebuffer and resolves depth with
            # a nearest blit, i.e. reads ONE sample per pixel, at that sample's off-centre position (~0.4 px
            # off in y). SEG renders with GL_MULTISAMPLE disabled: every sample then takes the pixel-centre
            # coverage, the convention of core.camera and of Blender.
            _, depths[i] = renderer.render(
                scene, flags=pyrender.RenderFlags.SEG, seg_node_map={node: (255, 255, 255)}
            )
    finally:
        renderer.delete()
    return depths > 0, depths


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
