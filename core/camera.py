"""The pinhole camera's math, defined once: look-at, intrinsics, world -> camera, projection, pixel rays.

Conventions (those of ``core.spec.CameraSpec``): the camera looks down its local -Z with +Y up (OpenGL,
Blender); its focal length is measured against the sensor WIDTH (``CameraSpec.intrinsics``). Image x grows
right, y grows down, pixel ``(row j, column i)`` covers ``[i, i+1) x [j, j+1)``, its centre at
``(i + 0.5, j + 0.5)``. Depth is the distance along the view axis (> 0 in front of the camera).
"""

from __future__ import annotations

import numpy as np

from core.spec import CameraSpec, Mat4, Quat

NEAR = 1e-4  # metres: geometry closer to the camera plane than this is treated as behind the camera
Resolution = int | tuple[int, int] | None


def look_at_quaternion(position: np.ndarray, target: np.ndarray) -> Quat:
    """Unit quaternion (w, x, y, z) of a rotation whose local -Z points from ``position`` to ``target`` and
    whose local +Y is as close to world +Z as possible (Blender's light/camera convention)."""
    import trimesh

    z_axis = np.asarray(position, float) - np.asarray(target, float)
    z_axis /= np.linalg.norm(z_axis)
    x_axis = np.cross([0.0, 0.0, 1.0], z_axis)
    if np.linalg.norm(x_axis) < 1e-8:  # looking straight down
        x_axis = np.array([1.0, 0.0, 0.0])
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(z_axis, x_axis)
    m = np.eye(4)
    m[:3, :3] = np.column_stack([x_axis, y_axis, z_axis])
    q = trimesh.transformations.quaternion_from_matrix(m)
    if q[0] < 0:
        q = -q
    return (float(q[0]), float(q[1]), float(q[2]), float(q[3]))


def look_at(eye: np.ndarray, target: np.ndarray) -> Mat4:
    """Row-major cam_to_world of a camera at ``eye`` looking at ``target`` with world +Z up in the image."""
    import trimesh

    rotation = trimesh.transformations.quaternion_matrix(look_at_quaternion(eye, target))
    rotation[:3, 3] = eye
    return tuple(tuple(float(x) for x in row) for row in rotation)


def resolution(camera: CameraSpec, res: Resolution = None) -> tuple[int, int]:
    """(width, height): the camera's for None, ``(res, res * height / width)`` for an int, else ``res``."""
    if res is None:
        return camera.width, camera.height
    if isinstance(res, int | np.integer):
        return int(res), max(1, int(round(int(res) * camera.height / camera.width)))
    return int(res[0]), int(res[1])


def intrinsics(camera: CameraSpec, res: Resolution = None) -> np.ndarray:
    """3x3 pinhole K in pixels at ``res`` (the camera's K scaled to the requested resolution)."""
    w, h = resolution(camera, res)
    k = np.array(camera.intrinsics(), dtype=np.float64)
    k[0] *= w / camera.width
    k[1] *= h / camera.height
    return k


def cam_to_world(camera: CameraSpec) -> np.ndarray:
    return np.array(camera.cam_to_world, dtype=np.float64)


def world_to_camera(camera: CameraSpec) -> np.ndarray:
    """4x4 world -> camera transform (camera looks down its -Z); the rigid inverse of cam_to_world."""
    c2w = cam_to_world(camera)
    out = np.eye(4)
    out[:3, :3] = c2w[:3, :3].T
    out[:3, 3] = -c2w[:3, :3].T @ c2w[:3, 3]
    return out


def recorded_matrices(camera: CameraSpec) -> tuple[np.ndarray, np.ndarray]:
    """(K [3, 3], world_to_camera [4, 4]) as scene.json's ground truth records them.

    The recorded world_to_camera is the general inverse (``np.linalg.inv``) of cam_to_world: equal to
    :func:`world_to_camera` up to rounding (~1e-16), kept because it is what every published scene.json holds.
    """
    return np.asarray(camera.intrinsics(), dtype=np.float64), np.linalg.inv(cam_to_world(camera))


def camera_space(camera: CameraSpec, points: np.ndarray) -> np.ndarray:
    """World points [N, 3] -> camera-space points [N, 3] (in front of the camera: z < 0)."""
    m = world_to_camera(camera)
    return np.asarray(points, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]


def project_points(
    camera: CameraSpec, points: np.ndarray, res: Resolution = None
) -> tuple[np.ndarray, np.ndarray]:
    """World points [N, 3] -> (continuous pixel coordinates [N, 2] as (x right, y down), depth [N]).

    Depth is the distance along the view axis; points with depth <= NEAR are behind the camera and their
    pixel coordinates are meaningless.
    """
    pc = camera_space(camera, points)
    depth = -pc[:, 2]
    k = intrinsics(camera, res)
    safe = np.where(depth > NEAR, depth, NEAR)
    x = k[0, 2] + k[0, 0] * pc[:, 0] / safe
    y = k[1, 2] - k[1, 1] * pc[:, 1] / safe
    return np.column_stack([x, y]), depth


def pixel_rays(camera: CameraSpec, res: Resolution = None) -> tuple[np.ndarray, np.ndarray]:
    """World-space ray origin [3] and unit directions [H*W, 3] through every pixel centre, row-major from
    the top-left pixel."""
    w, h = resolution(camera, res)
    k = intrinsics(camera, res)
    xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    d_cam = np.column_stack(
        [(xs.ravel() - k[0, 2]) / k[0, 0], -(ys.ravel() - k[1, 2]) / k[1, 1], -np.ones(w * h)]
    )
    c2w = cam_to_world(camera)
    d = d_cam @ c2w[:3, :3].T
    return c2w[:3, 3].copy(), d / np.linalg.norm(d, axis=1, keepdims=True)
