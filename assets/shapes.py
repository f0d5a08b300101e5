"""Procedural tabletop shapes: watertight trimesh meshes from a (family, seed) pair.

Every mesh is built in asset-local metres, upright on a flat or stable base: its lowest point is at z = 0 and
its x, y bounding box is centred on the origin, so the sampler only adds a yaw rotation and a table position.
Largest extents are 5-14 cm and face counts stay under ~2.5k so ray casts and Blender stay fast.

Most families are *lofts*: a star-shaped outline (circle, rounded rectangle, random polygon) swept along
a profile of (scale, height) pairs that starts and ends on the axis. That one construction gives closed,
consistently wound meshes for boxes, cylinders, cones, bottles, vases and hollow cups/bowls, and leaves rings
at many heights so smooth taper/twist/bend deformations stay smooth. Each deformation maps every horizontal
slice bijectively onto itself, so it cannot introduce self-intersections.

UVs are per vertex and seam-free (the angular coordinate is mirrored: 0 -> 1 -> 0 around the axis), so the
mesh stays watertight by vertex index; procedural textures in Blender may prefer object coordinates anyway.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import trimesh
from scipy.interpolate import PchipInterpolator

from core.spec import AssetRef

FAMILIES: tuple[str, ...] = (
    "box",
    "cylinder",
    "cone",
    "sphere",
    "capsule",
    "torus",
    "superquadric",
    "bottle",
    "vase",
    "vessel",
    "extrusion",
)

# Largest extent of a built shape, metres (a tabletop object).
SIZE_RANGE = (0.05, 0.14)
_OUTLINE_POINTS = 40  # points around a loft outline
_CACHE_SIZE = 128  # per process: a scene needs <= ~20 meshes (sampler redraws + renderer)


def make_asset_ref(family: str, seed: int) -> AssetRef:
    """The reference of procedural shape ``seed`` of ``family``; its id is stable across runs and machines."""
    if family not in FAMILIES:
        raise ValueError(f"unknown shape family {family!r}; expected one of {', '.join(FAMILIES)}")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"shape seed {seed} out of range 0..2**32-1")
    return AssetRef(asset_id=f"{family}-{seed:08x}", source="procedural", family=family, seed=seed)


def build_mesh(ref: AssetRef) -> trimesh.Trimesh:
    """The asset mesh of ``ref`` (procedural or file), resting on z = 0, centred in x, y.

    Cached per ref; the returned mesh is a private copy, so callers may transform it in place.
    """
    return cached_mesh(ref).copy()


@functools.lru_cache(maxsize=_CACHE_SIZE)
def cached_mesh(ref: AssetRef) -> trimesh.Trimesh:
    """The shared cached mesh of ``ref``: read it, never modify it (``build_mesh`` returns a copy)."""
    if ref.source == "file":
        from assets.meshes import load_file_mesh

        return load_file_mesh(ref)
    if ref.source != "procedural":
        raise ValueError(
            f"asset {ref.asset_id}: unknown source {ref.source!r}; expected 'procedural' or 'file'"
        )
    if ref.family not in _BUILDERS:
        raise ValueError(f"asset {ref.asset_id}: unknown shape family {ref.family!r}")
    rng = np.random.default_rng([int(ref.seed), zlib.crc32(ref.family.encode())])
    mesh = _BUILDERS[ref.family](rng)
    size = rng.uniform(*SIZE_RANGE)
    return finalize(mesh, size)


def finalize(mesh: trimesh.Trimesh, size: float) -> trimesh.Trimesh:
    """Scale to largest extent ``size``, put the lowest point on z = 0 and centre the x, y bounding box."""
    mesh.apply_scale(size / float(mesh.extents.max()))
    lo, hi = mesh.bounds
    mesh.apply_translation([-(lo[0] + hi[0]) / 2.0, -(lo[1] + hi[1]) / 2.0, -lo[2]])
    return mesh


# --------------------------------------------------------------------------------------------- loft machinery


def loft(outline: np.ndarray, profile: np.ndarray) -> trimesh.Trimesh:
    """Sweep a counter-clockwise, star-shaped (about the origin) ``outline [n, 2]`` along ``profile [m, 2]``
    of (scale, z) rows whose first and last scale are 0: a closed, outward-wound mesh with per-vertex UVs.

    Hand-written because trimesh's ``revolve`` only sweeps circles and ``extrude_polygon`` has no profile.
    """
    outline = np.asarray(outline, dtype=np.float64)
    profile = np.asarray(profile, dtype=np.float64)
    n = len(outline)
    rings = profile[1:-1]
    r = len(rings)
    ring_xy = rings[:, 0, None, None] * outline[None]  # [r, n, 2]
    ring_z = np.broadcast_to(rings[:, 1, None], (r, n))
    vertices = np.concatenate(
        [
            [[0.0, 0.0, profile[0, 1]]],
            np.concatenate([ring_xy, ring_z[..., None]], axis=-1).reshape(-1, 3),
            [[0.0, 0.0, profile[-1, 1]]],
        ]
    )
    top = 1 + r * n
    i = np.arange(n)
    j = (i + 1) % n
    faces = [np.column_stack([np.zeros(n, int), 1 + j, 1 + i])]
    for k in range(r - 1):
        a, b = 1 + k * n + i, 1 + k * n + j
        c, d = b + n, a + n
        faces.append(np.column_stack([a, b, c]))
        faces.append(np.column_stack([a, c, d]))
    last = 1 + (r - 1) * n
    faces.append(np.column_stack([np.full(n, top), last + i, last + j]))
    faces = np.concatenate(faces)

    # v: normalised arc length along the profile; u: mirrored angle fraction (seam-free).
    radius = float(np.mean(np.linalg.norm(outline, axis=1)))
    steps = np.linalg.norm(np.diff(profile * [radius, 1.0], axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    arc /= max(arc[-1], 1e-12)
    t = i / n
    u_ring = 1.0 - np.abs(2.0 * t - 1.0)
    uv = np.concatenate(
        [[[0.5, 0.0]], np.column_stack([np.tile(u_ring, r), np.repeat(arc[1:-1], n)]), [[0.5, 1.0]]]
    )
    # Outward winding follows from a counter-clockwise outline; check it cheaply via the signed volume.
    tri = vertices[faces]
    if np.einsum("ij,ij->", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) < 0:
        faces = faces[:, ::-1]
    return trimesh.Trimesh(vertices, faces, process=False, visual=trimesh.visual.TextureVisuals(uv=uv))


def circle(n: int = _OUTLINE_POINTS, aspect: float = 1.0) -> np.ndarray:
    a = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.column_stack([np.cos(a), aspect * np.sin(a)])


def superellipse(n: int, power: float, aspect: float) -> np.ndarray:
    """|x|^p + |y/aspect|^p = 1: a rounded rectangle for large p."""
    a = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False) + np.pi / n
    c, s = np.cos(a), np.sin(a)
    return np.column_stack(
        [np.sign(c) * np.abs(c) ** (2.0 / power), aspect * np.sign(s) * np.abs(s) ** (2.0 / power)]
    )


def random_polygon(rng: np.random.Generator, n: int = _OUTLINE_POINTS) -> np.ndarray:
    """A random star-shaped polygon with 3-8 corners, resampled to ``n`` points along its edges."""
    k = int(rng.integers(3, 9))
    angles = np.sort((np.arange(k) + rng.uniform(-0.3, 0.3, k)) / k * 2.0 * np.pi)
    radii = rng.uniform(0.55, 1.0, k)
    corners = np.column_stack([radii * np.cos(angles), radii * np.sin(angles)])
    closed = np.vstack([corners, corners[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    # Keep every corner exactly, spread the remaining points by edge length.
    per_edge = np.maximum(1, np.round(seg / cum[-1] * n).astype(int))
    points = []
    for e in range(k):
        f = np.arange(per_edge[e]) / per_edge[e]
        points.append(closed[e] + f[:, None] * (closed[e + 1] - closed[e]))
    return np.concatenate(points)


def wall(z0: float, z1: float, s0: float, s1: float, count: int) -> np.ndarray:
    """``count`` evenly spaced (scale, z) rows from (s0, z0) to (s1, z1), both ends included."""
    f = np.linspace(0.0, 1.0, count)
    return np.column_stack([s0 + f * (s1 - s0), z0 + f * (z1 - z0)])


def capped_profile(side: np.ndarray, bevel: float) -> np.ndarray:
    """Close a side profile (scale, z rows, bottom to top) with bevelled bottom and top caps on the axis."""
    s_bot, z_bot = side[0]
    s_top, z_top = side[-1]
    rows = [[0.0, z_bot], [s_bot * (1 - bevel), z_bot]]
    rows.append([s_bot, z_bot + bevel * 0.5])
    rows.extend(side[1:-1])
    rows.append([s_top, z_top - bevel * 0.5])
    rows.extend([[s_top * (1 - bevel), z_top], [0.0, z_top]])
    return np.asarray(rows)


def deform(mesh: trimesh.Trimesh, rng: np.random.Generator) -> trimesh.Trimesh:
    """Random smooth taper, twist and bend; each maps every z-slice bijectively (no self-intersections)."""
    v = mesh.vertices.copy()
    z0, z1 = v[:, 2].min(), v[:, 2].max()
    h = max(z1 - z0, 1e-9)
    f = (v[:, 2] - z0) / h
    if rng.random() < 0.3:
        taper = rng.uniform(-0.45, 0.35)
        v[:, :2] *= (1.0 + taper * f)[:, None]
    if rng.random() < 0.3:
        angle = rng.uniform(-0.5, 0.5) * np.pi * f
        c, s = np.cos(angle), np.sin(angle)
        v[:, :2] = np.column_stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1]])
    if rng.random() < 0.25:
        width = float(np.ptp(v[:, 0]) + np.ptp(v[:, 1])) / 2.0
        amount = rng.uniform(-0.2, 0.2) * width
        phi = rng.uniform(0.0, 2.0 * np.pi)
        v[:, :2] += (amount * f**2)[:, None] * [np.cos(phi), np.sin(phi)]
    mesh.vertices = v
    return mesh


def random_stretch(mesh: trimesh.Trimesh, rng: np.random.Generator, amount: float = 0.2) -> trimesh.Trimesh:
    """Random anisotropic scale along x, y, z."""
    mesh.apply_scale(rng.uniform(1.0 - amount, 1.0 + amount, 3))
    return mesh


def radial_uv(vertices: np.ndarray) -> np.ndarray:
    """Seam-free per-vertex UVs for non-loft shapes: mirrored azimuth, normalised height."""
    centre = vertices.mean(axis=0)
    d = vertices - centre
    t = (np.arctan2(d[:, 1], d[:, 0]) + np.pi) / (2.0 * np.pi)
    z = vertices[:, 2]
    return np.column_stack([1.0 - np.abs(2.0 * t - 1.0), (z - z.min()) / max(np.ptp(z), 1e-12)])


def with_uv(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    mesh.visual = trimesh.visual.TextureVisuals(uv=radial_uv(mesh.vertices))
    return mesh


# ------------------------------------------------------------------------------------------------- families


def _box(rng: np.random.Generator) -> trimesh.Trimesh:
    outline = superellipse(_OUTLINE_POINTS, rng.uniform(5.0, 14.0), rng.uniform(0.4, 1.0))
    h = rng.uniform(0.5, 2.4)
    profile = capped_profile(wall(0.0, h, 1.0, 1.0, 10), rng.uniform(0.02, 0.08))
    return random_stretch(deform(loft(outline, profile), rng), rng)


def _cylinder(rng: np.random.Generator) -> trimesh.Trimesh:
    outline = circle(aspect=rng.uniform(0.75, 1.0))
    h = rng.uniform(0.4, 3.0)
    profile = capped_profile(wall(0.0, h, 1.0, 1.0, 12), rng.uniform(0.02, 0.08))
    return random_stretch(deform(loft(outline, profile), rng), rng, 0.1)


def _cone(rng: np.random.Generator) -> trimesh.Trimesh:
    h = rng.uniform(0.6, 2.4)
    bevel = rng.uniform(0.02, 0.06)
    if rng.random() < 0.4:  # pointed
        side = wall(0.0, h * 0.92, 1.0, 0.08, 10)
        profile = np.vstack([[[0.0, 0.0], [1.0 - bevel, 0.0]], side, [[0.0, h]]])
    else:  # frustum
        profile = capped_profile(wall(0.0, h, 1.0, rng.uniform(0.2, 0.7), 10), bevel)
    return random_stretch(deform(loft(circle(), profile), rng), rng, 0.1)


def _radial_shape(axes: np.ndarray, e1: float, e2: float, subdivisions: int = 3) -> trimesh.Trimesh:
    """Superquadric by radially projecting an icosphere onto its inside-outside surface F = 1.

    F is homogeneous of degree 2/e1 in the radius, so the ray along unit d meets F = 1 at F(d)^(-e1/2);
    every superquadric is star-shaped about its centre, so the projection keeps the icosphere's topology.
    """
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    d = sphere.vertices
    x, y, z = (np.abs(d) / axes).T + 1e-12
    f = (x ** (2.0 / e2) + y ** (2.0 / e2)) ** (e2 / e1) + z ** (2.0 / e1)
    vertices = d * (f ** (-e1 / 2.0))[:, None]
    return with_uv(trimesh.Trimesh(vertices, sphere.faces, process=False))


def _sphere(rng: np.random.Generator) -> trimesh.Trimesh:
    # Shortest axis vertical: the ellipsoid's stable resting pose.
    axes = np.sort(rng.uniform(0.6, 1.0, 3))[::-1]
    return _radial_shape(axes, 1.0, 1.0)


def _superquadric(rng: np.random.Generator) -> trimesh.Trimesh:
    # Exponents <= 2 keep it convex and it is symmetric about its three axes, so its most stable resting
    # pose is on the face across its shortest axis (cheaper than trimesh's compute_stable_poses, ~0.2 s).
    axes = np.sort(rng.uniform(0.5, 1.0, 3))[::-1]
    return _radial_shape(axes, rng.uniform(0.2, 1.2), rng.uniform(0.2, 1.2))


def _capsule(rng: np.random.Generator) -> trimesh.Trimesh:
    mesh = trimesh.creation.capsule(height=rng.uniform(0.5, 3.0), radius=1.0, count=[24, 12])
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2.0, [1.0, 0.0, 0.0]))  # lying down
    mesh.apply_scale([1.0, 1.0, rng.uniform(0.75, 1.0)])
    return with_uv(mesh)


def _torus(rng: np.random.Generator) -> trimesh.Trimesh:
    mesh = trimesh.creation.torus(1.0, rng.uniform(0.25, 0.5), major_sections=32, minor_sections=14)
    mesh.apply_scale([1.0, rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0)])
    return with_uv(mesh)


def _bottle(rng: np.random.Generator) -> trimesh.Trimesh:
    h = rng.uniform(2.0, 3.6)
    body = rng.uniform(0.4, 0.65) * h
    shoulder = body + rng.uniform(0.12, 0.3) * h
    neck = rng.uniform(0.25, 0.45)
    z = np.linspace(0.0, h * 0.94, 18)
    blend = np.clip((z - body) / (shoulder - body), 0.0, 1.0)
    blend = blend * blend * (3.0 - 2.0 * blend)  # smoothstep shoulder
    s = (1.0 - blend) * 1.0 + blend * neck
    side = np.vstack([np.column_stack([s, z]), [[neck * 1.15, h * 0.96], [neck * 1.15, h]]])
    profile = capped_profile(side, 0.04)
    outline = circle() if rng.random() < 0.75 else superellipse(_OUTLINE_POINTS, rng.uniform(3.0, 6.0), 1.0)
    return random_stretch(deform(loft(outline, profile), rng), rng, 0.1)


def _vase(rng: np.random.Generator) -> trimesh.Trimesh:
    h = rng.uniform(1.0, 2.8)
    k = int(rng.integers(4, 7))
    knots = np.linspace(0.0, h, k)
    radii = rng.uniform(0.45, 1.0, k)
    radii[0] = max(radii[0], 0.65)  # a base wide enough to stand on
    z = np.linspace(0.0, h, 18)
    s = PchipInterpolator(knots, radii)(z)
    profile = capped_profile(np.column_stack([s, z]), rng.uniform(0.03, 0.08))
    return random_stretch(deform(loft(circle(), profile), rng), rng, 0.1)


def _vessel(rng: np.random.Generator) -> trimesh.Trimesh:
    """Hollow cup, mug or bowl: outer wall up, rim, inner wall down (offset by the wall thickness), inner
    floor; half the cups get a handle."""
    cup = rng.random() < 0.5
    if cup:  # cup / mug / glass
        h = rng.uniform(0.8, 1.8)
        s_base = rng.uniform(0.7, 1.0)
        z = np.linspace(0.0, h, 10)
        s = s_base + (1.0 - s_base) * z / h
    else:  # bowl
        h = rng.uniform(0.35, 0.75)
        s_base = rng.uniform(0.45, 0.65)
        z = np.linspace(0.0, h, 10)
        s = s_base + (1.0 - s_base) * np.sqrt(z / h)
    thick = rng.uniform(0.05, 0.1)
    floor = rng.uniform(0.05, 0.12) * h + 0.03
    bevel = 0.03
    inner_z = np.linspace(h, floor, 9)
    inner_s = np.interp(inner_z, z, s) - thick
    profile = np.vstack(
        [
            [[0.0, 0.0], [s_base * (1 - bevel), 0.0]],
            np.column_stack([s, z])[:-1],
            [[s[-1], h], [s[-1] - thick, h]],
            np.column_stack([inner_s, inner_z])[1:],
            [[0.0, floor]],
        ]
    )
    profile[2, 1] = max(profile[2, 1], bevel * 0.5)  # lift the first wall ring off the floor: a bevel
    outline = circle() if rng.random() < 0.8 else superellipse(_OUTLINE_POINTS, rng.uniform(3.0, 8.0), 1.0)
    mesh = loft(outline, profile)
    if cup and rng.random() < 0.5:
        mesh = _with_handle(mesh, loft(outline, capped_profile(np.column_stack([s, z]), bevel)), h, rng)
    return random_stretch(deform(mesh, rng), rng, 0.1)


def _with_handle(
    vessel: trimesh.Trimesh, solid: trimesh.Trimesh, h: float, rng: np.random.Generator
) -> trimesh.Trimesh:
    """Union a half torus on the +x side: the torus minus the vessel's outer solid (so nothing reaches into
    the cavity), then joined to the wall. Booleans by manifold3d, whose results are watertight."""
    major, minor = rng.uniform(0.25, 0.33) * h, rng.uniform(0.05, 0.09)
    torus = trimesh.creation.torus(major, minor, major_sections=24, minor_sections=10)
    torus.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2.0, [1.0, 0.0, 0.0]))
    wall_x = float(solid.vertices[:, 0].max())
    torus.apply_translation([wall_x * 0.95, 0.0, h * rng.uniform(0.48, 0.55)])
    handle = trimesh.boolean.difference([torus, solid], engine="manifold")
    return with_uv(trimesh.boolean.union([vessel, handle], engine="manifold"))


def _extrusion(rng: np.random.Generator) -> trimesh.Trimesh:
    h = rng.uniform(0.35, 1.6)
    profile = capped_profile(wall(0.0, h, 1.0, 1.0, 8), rng.uniform(0.02, 0.06))
    return random_stretch(deform(loft(random_polygon(rng), profile), rng), rng)


_BUILDERS = {
    "box": _box,
    "cylinder": _cylinder,
    "cone": _cone,
    "sphere": _sphere,
    "capsule": _capsule,
    "torus": _torus,
    "superquadric": _superquadric,
    "bottle": _bottle,
    "vase": _vase,
    "vessel": _vessel,
    "extrusion": _extrusion,
}
assert set(_BUILDERS) == set(FAMILIES)
