"""Scene geometry without Blender: world-space meshes, projected boxes, per-object masks and depth.

The camera math (projection, pixel convention, intrinsics) is ``core.camera``'s; pixel ``(row j,
column i)`` covers ``[i, i+1) x [j, j+1)`` with row 0 at the TOP, the same as the renderer's PNGs and
``ids.png``. Depth is camera-space distance along the view axis (metres), 0 where a pixel sees nothing.
"""

from __future__ import annotations

import numpy as np
import trimesh

from assets.shapes import cached_mesh
from core.camera import NEAR, Resolution, cam_to_world, pixel_rays, project_points, resolution
from core.spec import CameraSpec, SceneSpec, object_to_world

RASTER_CHUNK = 1 << 20  # (triangle, pixel) pairs per vectorised batch: bounds memory on close-ups


def object_matrix(obj) -> np.ndarray:
    return np.array(object_to_world(obj), dtype=np.float64)


def world_meshes(spec: SceneSpec) -> list[trimesh.Trimesh]:
    """Each object's asset mesh moved to world space (new meshes; the asset cache is untouched)."""
    meshes = []
    for obj in spec.objects:
        mesh = cached_mesh(obj.asset).copy()
        mesh.apply_transform(object_matrix(obj))
        meshes.append(mesh)
    return meshes


def projected_boxes(
    spec: SceneSpec,
    res: Resolution = None,
    meshes: list[trimesh.Trimesh] | None = None,
    clip: bool = False,
) -> np.ndarray:
    """Conservative pixel boxes ``[N, 4]`` as (x0, y0, x1, y1) floats, from every projected vertex.

    A mesh's projection is the union of its projected triangles, so the vertices' box bounds it exactly.
    An object reaching behind the camera gets an infinite box. ``clip`` clamps boxes to the image.
    """
    meshes = world_meshes(spec) if meshes is None else meshes
    w, h = resolution(spec.camera, res)
    boxes = np.empty((len(meshes), 4))
    for n, mesh in enumerate(meshes):
        xy, depth = project_points(spec.camera, mesh.vertices, res)
        if np.any(depth <= NEAR):
            boxes[n] = (-np.inf, -np.inf, np.inf, np.inf)
        else:
            boxes[n] = (*xy.min(axis=0), *xy.max(axis=0))
    if clip:
        boxes = np.clip(boxes, 0.0, [w, h, w, h])
    return boxes


def raycast_masks(
    spec: SceneSpec,
    res: Resolution = None,
    meshes: list[trimesh.Trimesh] | None = None,
    method: str = "raster",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-object amodal masks ``[N, H, W]`` bool and depth ``[N, H, W]`` float32 (0 = miss).

    Each object is cast alone (so masks are amodal); one ray per pixel centre. ``method="raster"`` is an
    exact vectorised scan conversion of the same rays (pixel-centre coverage with perspective-correct depth),
    ~100x faster than ``method="trimesh"`` (trimesh's ray casts without Embree), which stays as the reference.
    """
    meshes = world_meshes(spec) if meshes is None else meshes
    w, h = resolution(spec.camera, res)
    depth = np.zeros((len(meshes), h, w), dtype=np.float32)
    for n, mesh in enumerate(meshes):
        if method == "raster":
            depth[n] = _raster_depth(spec.camera, mesh, (w, h))
        elif method == "trimesh":
            depth[n] = _trimesh_depth(spec.camera, mesh, (w, h))
        else:
            raise ValueError(f"raycast_masks: unknown method {method!r}; expected 'raster' or 'trimesh'")
    return depth > 0, depth


def modal_ids(depth: np.ndarray) -> np.ndarray:
    """Modal instance map ``[H, W]`` int from per-object depth ``[N, H, W]``: 0 = nothing, i + 1 = the nearest
    object i at the pixel (the ``ids.png`` convention with objects in spec order)."""
    if len(depth) == 0:
        return np.zeros(depth.shape[1:], dtype=np.int64)
    d = np.where(depth > 0, depth, np.inf)
    nearest = np.argmin(d, axis=0)
    return np.where(np.isfinite(d.min(axis=0)), nearest + 1, 0)


def _trimesh_depth(camera: CameraSpec, mesh: trimesh.Trimesh, res: tuple[int, int]) -> np.ndarray:
    w, h = res
    origin, directions = pixel_rays(camera, res)
    forward = -cam_to_world(camera)[:3, 2]
    out = np.zeros(w * h, dtype=np.float32)
    # Only the rays inside the object's projected box can hit it.
    xy, dz = project_points(camera, mesh.vertices, res)
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    if np.all(dz > NEAR):
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        inside = ((cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)).ravel()
    else:
        inside = np.ones(w * h, dtype=bool)
    idx = np.flatnonzero(inside)
    if len(idx) == 0:
        return out.reshape(h, w)
    origins = np.broadcast_to(origin, (len(idx), 3))
    locations, index_ray, _ = mesh.ray.intersects_location(origins, directions[idx], multiple_hits=True)
    if len(index_ray):
        along = (locations - origin) @ forward
        best = np.full(len(idx), np.inf)
        np.minimum.at(best, index_ray, along)
        hit = np.isfinite(best)
        out[idx[hit]] = best[hit]
    return out.reshape(h, w)


def _raster_depth(camera: CameraSpec, mesh: trimesh.Trimesh, res: tuple[int, int]) -> np.ndarray:
    """Nearest depth per pixel centre covered by the mesh: vectorised scan conversion in numpy.

    Hand-written: trimesh's ray casts without Embree take ~0.5 s per object at 40x40 and GL rasterisers need a
    display/EGL; this does the same pixel-centre sampling in a few ms. Triangles reaching behind the camera
    are dropped (the sampler keeps every object in front of it).
    """
    w, h = res
    xy, z = project_points(camera, mesh.vertices, res)
    faces = mesh.faces
    fz = z[faces]
    keep = np.all(fz > NEAR, axis=1)
    faces, fz = faces[keep], fz[keep]
    fx, fy = xy[faces, 0], xy[faces, 1]
    # Pixel centres (i + 0.5) inside each triangle's box: i from ceil(min - 0.5) to floor(max - 0.5).
    i0 = np.maximum(np.ceil(fx.min(axis=1) - 0.5), 0).astype(np.int64)
    i1 = np.minimum(np.floor(fx.max(axis=1) - 0.5), w - 1).astype(np.int64)
    j0 = np.maximum(np.ceil(fy.min(axis=1) - 0.5), 0).astype(np.int64)
    j1 = np.minimum(np.floor(fy.max(axis=1) - 0.5), h - 1).astype(np.int64)
    nx, ny = i1 - i0 + 1, j1 - j0 + 1
    area = (fx[:, 1] - fx[:, 0]) * (fy[:, 2] - fy[:, 0]) - (fx[:, 2] - fx[:, 0]) * (fy[:, 1] - fy[:, 0])
    live = (nx > 0) & (ny > 0) & (np.abs(area) > 1e-12)
    buf = np.full(w * h, np.inf)
    idx = np.flatnonzero(live)
    counts = (nx * ny)[idx]
    # Chunk the (triangle, pixel) pairs to bound memory on large, close-up objects.
    start = 0
    while start < len(idx):
        stop = start + max(1, int(np.searchsorted(np.cumsum(counts[start:]), RASTER_CHUNK)))
        _raster_chunk(buf, w, idx[start:stop], counts[start:stop], i0, j0, nx, fx, fy, fz, area)
        start = stop
    buf[~np.isfinite(buf)] = 0.0
    return buf.reshape(h, w).astype(np.float32)


def _raster_chunk(buf, w, tris, counts, i0, j0, nx, fx, fy, fz, area) -> None:
    total = int(counts.sum())
    if total == 0:
        return
    t = np.repeat(tris, counts)
    local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    px = i0[t] + local % nx[t]
    py = j0[t] + local // nx[t]
    cx, cy = px + 0.5, py + 0.5
    x, y, z, a = fx[t], fy[t], fz[t], area[t]
    # Barycentric weights from edge functions, normalised by the signed area (either winding works).
    w0 = ((x[:, 1] - cx) * (y[:, 2] - cy) - (x[:, 2] - cx) * (y[:, 1] - cy)) / a
    w1 = ((x[:, 2] - cx) * (y[:, 0] - cy) - (x[:, 0] - cx) * (y[:, 2] - cy)) / a
    w2 = 1.0 - w0 - w1
    eps = -1e-9
    inside = (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
    # 1/z is affine in screen space: perspective-correct depth of the triangle's plane at the pixel centre.
    inv_z = w0 / z[:, 0] + w1 / z[:, 1] + w2 / z[:, 2]
    np.minimum.at(buf, (py * w + px)[inside], 1.0 / inv_z[inside])
