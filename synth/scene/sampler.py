"""Scene sampling: a seed and a SamplerConfig -> a SceneSpec that satisfies the dataset's constraints.

Pure Python (numpy, trimesh, shapely): no Blender. All randomness comes from one
``numpy.random.Generator(seed)``, so the same seed and config always give the same spec (and the same JSON).

Constraints, checked on the actual meshes: objects rest on the table (asset bases at z = 0, yaw-only rotation)
without interpenetration and at least ``gap`` apart (see ``_place_objects``); every object is inside the image
with a margin; each is at least ``min_visible`` visible (modal / amodal pixels of a ``check_res`` ray cast);
the occlusion graph is acyclic, so a front-to-back layer order exists; and at least ``min_occluded_fraction``
of the objects are partly hidden. The occlusion distribution can be pushed toward scenes that ask for amodal
completion: a ``completion_fraction`` of the scenes (chosen per seed, independently of the rest of the
sampling) must hold at least one object whose hidden fraction lies in ``completion_hidden`` (25-75 % by
default); the other scenes are exactly what the sampler gives without the option.

Objects in the spec are listed front to back (by the check-resolution
occlusion order; ties by nearest depth), so ``pass_index`` k + 1 is usually layer k.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter
from dataclasses import dataclass

import fcl
import numpy as np
import shapely
import trimesh
from scipy.spatial import ConvexHull

from assets.lighting import sample_lights, sample_world
from assets.materials import sample_material, sample_table_material
from assets.shapes import FAMILIES, cached_mesh, make_asset_ref
from core.camera import NEAR, look_at, project_points
from core.policy import DEFAULT_OBJECTS, SAMPLED_MIN_OBJECT_AREA
from core.spec import (
    AssetRef,
    CameraSpec,
    ObjectSpec,
    RenderSettings,
    SceneSpec,
    TableSpec,
)
from synth.scene import geometry
from synth.scene.occlusion import front_to_back_order, occlusion_edges, visible_fractions

ASSET_REDRAW_EVERY = 8  # arrangements tried with the same objects before drawing new ones


class SamplingError(RuntimeError):
    """The constraints could not be met within ``max_attempts``; the message says which failed most."""


@dataclass(frozen=True)
class SamplerConfig:
    """Every knob of the scene distribution. Flat and JSON-friendly (tuples become lists and back)."""

    min_objects: int = DEFAULT_OBJECTS[0]
    max_objects: int = DEFAULT_OBJECTS[1]  # the tiny model's K; 5-6 objects rarely all clear min_object_area
    min_visible: float = 0.15  # each object's visible (modal/amodal) fraction at least this
    min_occluded_fraction: float = 0.25  # at least ceil(this * n) objects partly hidden ...
    occluded_threshold: float = 0.05  # ... by at least this fraction of their amodal area
    # Scenes that ask for completion: this fraction of the scenes (drawn per seed) must hold an object whose
    # hidden fraction (1 - modal / amodal pixels) lies in completion_hidden.
    completion_fraction: float = 0.0
    completion_hidden: tuple[float, float] = (0.25, 0.75)
    # Radius (m) of the disc object centres are drawn from, for 4 objects; scaled by sqrt(n / 4) so the
    # density (and so the amount of occlusion) does not depend on the object count.
    spread: tuple[float, float] = (0.07, 0.16)
    gap: float = 0.003  # metres between objects
    collision: str = "footprint"  # "footprint" (convex footprints apart) or "mesh" (fcl mesh distance)
    object_scale: tuple[float, float] = (0.85, 1.15)  # uniform scale on top of the asset's own size
    width: int = 256
    height: int = 256
    table_size: tuple[float, float] = (0.9, 1.6)  # metres, each side
    table_thickness: tuple[float, float] = (0.025, 0.05)
    camera_elevation_deg: tuple[float, float] = (18.0, 65.0)
    camera_distance: tuple[float, float] = (0.25, 2.0)  # metres: hard limits on the framing distance
    frame_fill: tuple[float, float] = (0.55, 0.85)  # the objects span this fraction of the image
    align_camera_prob: float = 0.6  # aim along the line between two objects (makes occlusion likelier)
    focal_mm: tuple[float, float] = (35.0, 60.0)
    sensor_width_mm: float = 36.0
    margin: float = 0.02  # fraction of the image kept clear at each border
    families: tuple[str, ...] = FAMILIES
    assets_dir: str | None = None  # meshes to mix in (see assets.meshes.scan_assets_dir)
    file_asset_prob: float = 0.5  # probability an object uses a file mesh when assets_dir has any
    file_asset_size: tuple[float, float] = (0.06, 0.14)  # largest extent (m) of an imported mesh
    texture_dir: str | None = None
    hdri_dir: str | None = None
    lights: tuple[int, int] = (1, 3)
    engine: str = "CYCLES"
    samples: int = 16
    denoise: bool = False
    check_res: int = 64  # ray-cast resolution of the visibility/occlusion checks
    # each object's amodal area, fraction of the image (at check_res): the small-object rule plus a margin
    min_object_area: float = SAMPLED_MIN_OBJECT_AREA
    placement_tries: int = 30  # positions tried per object before giving up on it
    camera_tries: int = 4  # camera poses tried per arrangement
    max_attempts: int = 60  # arrangements tried before SamplingError

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.min_objects <= self.max_objects:
            problems.append(
                f"min_objects={self.min_objects}, max_objects={self.max_objects}: need 1 <= min <= max"
            )
        if self.max_objects > 99:
            problems.append(f"max_objects={self.max_objects}: at most 99 layers")
        if not 0.0 <= self.min_visible <= 1.0:
            problems.append(f"min_visible={self.min_visible}: expected a fraction in [0, 1]")
        if not 0.0 <= self.min_occluded_fraction <= 1.0:
            problems.append(
                f"min_occluded_fraction={self.min_occluded_fraction}: expected a fraction in [0, 1]"
            )
        if not 0.0 <= self.completion_fraction <= 1.0:
            problems.append(f"completion_fraction={self.completion_fraction}: expected a fraction in [0, 1]")
        lo, hi = self.completion_hidden
        if not 0.0 <= lo <= hi <= 1.0 or (self.completion_fraction > 0 and lo > 1.0 - self.min_visible):
            problems.append(
                f"completion_hidden={list(self.completion_hidden)}: expected 0 <= low <= high <= 1, "
                "low at most 1 - min_visible"
            )
        unknown = set(self.families) - set(FAMILIES)
        if not self.families or unknown:
            problems.append(
                f"families={list(self.families)}: expected a non-empty subset of {list(FAMILIES)}"
            )
        for name in (
            "spread",
            "table_size",
            "camera_elevation_deg",
            "camera_distance",
            "frame_fill",
            "focal_mm",
            "object_scale",
            "file_asset_size",
            "table_thickness",
            "lights",
        ):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                problems.append(f"{name}={getattr(self, name)}: expected (low, high) with 0 <= low <= high")
        if self.width < 1 or self.height < 1 or self.check_res < 8:
            problems.append(
                f"width/height/check_res = {self.width}/{self.height}/{self.check_res}: too small"
            )
        if self.collision not in ("footprint", "mesh"):
            problems.append(f"collision={self.collision!r}: expected 'footprint' or 'mesh'")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class _Placed:
    asset: AssetRef
    yaw: float
    location: tuple[float, float, float]
    scale: float
    mesh: trimesh.Trimesh  # in world space
    footprint: shapely.Polygon  # convex hull of the table footprint, world x, y
    body: fcl.CollisionObject | None  # posed BVH, for collision="mesh"


def sample_scene(seed: int, config: SamplerConfig | None = None, scene_id: str | None = None) -> SceneSpec:
    """The scene of ``seed`` under ``config``; raises SamplingError if no valid scene is found in
    ``config.max_attempts`` arrangements."""
    config = config or SamplerConfig()
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"scene seed {seed} should be >= 0")
    scene_id = scene_id if scene_id is not None else f"scene-{seed:010d}"
    if "." in scene_id or "/" in scene_id or not scene_id:
        raise ValueError(
            f"scene id {scene_id!r}: must be non-empty without dots or slashes (a WebDataset key)"
        )
    rng = np.random.default_rng(seed)
    file_assets = _file_assets(config.assets_dir)

    table_size = (float(rng.uniform(*config.table_size)), float(rng.uniform(*config.table_size)))
    table = TableSpec(
        size=table_size,
        thickness=float(rng.uniform(*config.table_thickness)),
        material=sample_table_material(rng, config.texture_dir),
    )
    lights = sample_lights(rng, *config.lights)
    world = sample_world(rng, config.hdri_dir)
    render = RenderSettings(
        engine=config.engine, samples=config.samples, denoise=config.denoise, seed=seed % (2**31)
    )

    n = int(rng.integers(config.min_objects, config.max_objects + 1))  # once: keeps the count uniform
    needs_completion = asks_for_completion(seed, config)
    failures: Counter[str] = Counter()
    for attempt in range(config.max_attempts):
        if attempt % ASSET_REDRAW_EVERY == 0:  # keep the (cached) meshes for a few arrangements: cheaper
            picks = [
                (_sample_asset(rng, config, file_assets), float(rng.uniform(*config.object_scale)))
                for _ in range(n)
            ]
        placed = _place_objects(rng, config, picks, table_size)
        if placed is None:
            failures["objects do not fit on the table without touching"] += 1
            continue
        materials = [sample_material(rng, config.texture_dir) for _ in placed]
        for _ in range(config.camera_tries):
            camera = _sample_camera(rng, config, placed)
            if camera is None:
                failures["objects do not fit in the camera frame"] += 1
                continue
            objects = tuple(
                _object_spec(f"object_{k:02d}", p, m, k + 1)
                for k, (p, m) in enumerate(zip(placed, materials, strict=True))
            )
            spec = SceneSpec(
                scene_id=scene_id,
                seed=seed,
                table=table,
                objects=objects,
                camera=camera,
                lights=lights,
                world=world,
                render=render,
            )
            order, why = _check_visibility(spec, [p.mesh for p in placed], config, needs_completion)
            if order is None:
                failures[why] += 1
                continue
            ordered = tuple(
                dataclasses.replace(objects[i], name=f"object_{k:02d}", pass_index=k + 1)
                for k, i in enumerate(order)
            )
            return dataclasses.replace(spec, objects=ordered)
    summary = ", ".join(f"{why} ({count}x)" for why, count in failures.most_common(3))
    raise SamplingError(
        f"scene seed {seed}: no scene met the constraints in {config.max_attempts} attempts: {summary}; "
        "loosen min_visible / min_occluded_fraction / completion_fraction, widen spread or lower max_objects"
    )


# Salt of the per-seed draw that picks the scenes asking for completion: a separate generator, so the draw
# leaves the main stream (and every scene it does not pick) unchanged.
_COMPLETION_SALT = 0xC0B1


def asks_for_completion(seed: int, config: SamplerConfig) -> bool:
    """Whether the scene of ``seed`` must hold an object hidden by a ``completion_hidden`` fraction."""
    if config.completion_fraction <= 0:
        return False
    return bool(np.random.default_rng([int(seed), _COMPLETION_SALT]).random() < config.completion_fraction)


def _object_spec(name: str, placed: _Placed, material, pass_index: int) -> ObjectSpec:
    half = placed.yaw / 2.0
    return ObjectSpec(
        name=name,
        asset=placed.asset,
        location=placed.location,
        rotation=(math.cos(half), 0.0, 0.0, math.sin(half)),
        scale=(placed.scale, placed.scale, placed.scale),
        material=material,
        pass_index=pass_index,
    )


def _file_assets(assets_dir: str | None) -> tuple[AssetRef, ...]:
    if not assets_dir:
        return ()
    from assets.meshes import scan_assets_dir_cached

    return scan_assets_dir_cached(str(assets_dir))


def _sample_asset(
    rng: np.random.Generator, config: SamplerConfig, file_assets: tuple[AssetRef, ...]
) -> AssetRef:
    if file_assets and rng.random() < config.file_asset_prob:
        ref = file_assets[int(rng.integers(len(file_assets)))]
        return dataclasses.replace(ref, target_size=round(float(rng.uniform(*config.file_asset_size)), 4))
    family = config.families[int(rng.integers(len(config.families)))]
    return make_asset_ref(family, int(rng.integers(0, 2**32)))


def _place_objects(
    rng: np.random.Generator,
    config: SamplerConfig,
    picks: list[tuple[AssetRef, float]],
    table_size: tuple[float, float],
) -> list[_Placed] | None:
    """Drop objects one by one at random positions in the spread disc, keeping a position when the new object
    stays ``gap`` away from every placed one.

    ``collision="footprint"``: the convex hulls of the objects' table footprints must be ``gap`` apart. Every
    object stands on z = 0 inside the vertical prism over its footprint hull, so this is an exact sufficient
    condition for no interpenetration, and ~100x cheaper than mesh distances (fcl BVH builds ~8 ms a mesh).
    ``collision="mesh"``: overlapping footprints are allowed when the meshes themselves stay ``gap`` apart
    (fcl distance, the engine of trimesh's CollisionManager, on one BVH per object posed by a transform
    rather than rebuilt per try), e.g. a flat object under a bowl's overhang. Objects fully inside another
    (no surface contact) are left to the visibility check, which rejects them.
    """
    spread = float(rng.uniform(*config.spread)) * math.sqrt(len(picks) / 4.0)
    placed: list[_Placed] = []
    half_table = np.array(table_size) / 2.0 - 0.02
    for asset, scale in picks:
        base = cached_mesh(asset)
        hull = _footprint_hull(asset) * scale
        for _ in range(config.placement_tries):
            yaw = float(rng.uniform(0.0, 2.0 * math.pi))
            r = spread * math.sqrt(rng.random())
            theta = rng.uniform(0.0, 2.0 * math.pi)
            c, s = math.cos(yaw), math.sin(yaw)
            xy = np.array([r * math.cos(theta), r * math.sin(theta)])
            footprint_xy = hull @ np.array([[c, s], [-s, c]]) + xy
            if np.any(np.abs(footprint_xy) > half_table):
                continue
            footprint = shapely.Polygon(footprint_xy)
            near = [p for p in placed if footprint.distance(p.footprint) < config.gap]
            location = (float(xy[0]), float(xy[1]), 0.0)
            body = None
            if config.collision == "mesh":
                body = fcl.CollisionObject(_bvh(asset, scale), fcl.Transform(_yaw_matrix(yaw), location))
                if any(_distance(body, p.body) < config.gap for p in near):
                    continue
            elif near:
                continue
            placed.append(
                _Placed(asset, yaw, location, scale, _world_mesh(base, yaw, location, scale), footprint, body)
            )
            break
        else:
            return None  # this object does not fit: a new arrangement (and spread) is drawn
    return placed


@functools.lru_cache(maxsize=256)
def _footprint_hull(asset: AssetRef) -> np.ndarray:
    """Counter-clockwise convex hull [m, 2] of an asset mesh projected on the table plane."""
    points = cached_mesh(asset).vertices[:, :2]
    return points[ConvexHull(points).vertices]


@functools.lru_cache(maxsize=64)
def _bvh(asset: AssetRef, scale: float) -> fcl.BVHModel:
    """fcl BVH of an asset mesh at ``scale`` (built once per object, posed per try by a transform)."""
    mesh = cached_mesh(asset)
    bvh = fcl.BVHModel()
    bvh.beginModel(len(mesh.vertices), len(mesh.faces))
    bvh.addSubModel(mesh.vertices * scale, mesh.faces)
    bvh.endModel()
    return bvh


def _distance(a: fcl.CollisionObject, b: fcl.CollisionObject) -> float:
    """Surface distance (<= 0 when the meshes touch or intersect)."""
    return float(fcl.distance(a, b, fcl.DistanceRequest(), fcl.DistanceResult()))


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _world_mesh(base: trimesh.Trimesh, yaw: float, location, scale: float) -> trimesh.Trimesh:
    c, s = math.cos(yaw) * scale, math.sin(yaw) * scale
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, scale]])
    vertices = base.vertices @ rot.T + np.asarray(location)
    return trimesh.Trimesh(vertices, base.faces, process=False)


def _sample_camera(
    rng: np.random.Generator, config: SamplerConfig, placed: list[_Placed]
) -> CameraSpec | None:
    """Look at the arrangement from a random azimuth/elevation; pick the distance so the objects span
    ``frame_fill`` of the image; None when the framing cannot keep every object inside the margins."""
    points = np.concatenate([p.mesh.vertices for p in placed])
    lo, hi = points.min(axis=0), points.max(axis=0)
    target = np.array([(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0, hi[2] * rng.uniform(0.2, 0.45)])
    if len(placed) >= 2 and rng.random() < config.align_camera_prob:
        a, b = rng.choice(len(placed), size=2, replace=False)
        d = np.subtract(placed[a].location[:2], placed[b].location[:2])
        azimuth = math.atan2(d[1], d[0]) + rng.normal(0.0, 0.25)
    else:
        azimuth = rng.uniform(0.0, 2.0 * math.pi)
    elevation = math.radians(rng.uniform(*config.camera_elevation_deg))
    direction = np.array(
        [
            math.cos(elevation) * math.cos(azimuth),
            math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
        ]
    )
    focal = float(rng.uniform(*config.focal_mm))
    fill = float(rng.uniform(*config.frame_fill))
    w, h = config.width, config.height
    fx = focal / config.sensor_width_mm * w
    half_fov = math.atan(min(w, h) / 2.0 / fx)
    radius = float(np.linalg.norm(points - target, axis=1).max())
    distance = radius / math.tan(half_fov) / fill
    lo_d, hi_d = config.camera_distance

    def camera_at(distance: float) -> CameraSpec:
        return CameraSpec(
            width=w,
            height=h,
            focal_mm=focal,
            sensor_width_mm=config.sensor_width_mm,
            cam_to_world=look_at(target + distance * direction, target),
        )

    for _ in range(4):
        distance = min(max(distance, lo_d), hi_d)
        camera = camera_at(distance)
        xy, depth = project_points(camera, points)
        if np.any(depth <= NEAR):
            distance *= 1.5
            continue
        # Largest offset from the image centre, as a fraction of the half image: ~1/distance.
        span = float(np.max(np.abs(xy - [w / 2.0, h / 2.0]) / [w / 2.0, h / 2.0]))
        distance *= span / fill
    distance = min(max(distance, lo_d), hi_d)
    camera = camera_at(distance)
    xy, depth = project_points(camera, points)
    m = config.margin
    inside = (
        np.all(depth > NEAR)
        and xy[:, 0].min() >= m * w
        and xy[:, 0].max() <= (1 - m) * w
        and xy[:, 1].min() >= m * h
        and xy[:, 1].max() <= (1 - m) * h
    )
    return camera if inside else None


def _check_visibility(
    spec: SceneSpec, meshes: list[trimesh.Trimesh], config: SamplerConfig, needs_completion: bool = False
) -> tuple[list[int] | None, str]:
    """(front-to-back order, "") when the visibility/occlusion constraints hold, else (None, reason)."""
    res = config.check_res
    amodal, depth = geometry.raycast_masks(spec, res, meshes=meshes)
    ids = geometry.modal_ids(depth)
    area = amodal.reshape(len(meshes), -1).mean(axis=1)
    if np.any(area < config.min_object_area):
        return None, "an object is too small in the image"
    visible = visible_fractions(amodal, ids)
    if np.any(visible < config.min_visible):
        return None, f"an object is less than min_visible={config.min_visible} visible"
    occluded = int(np.sum(1.0 - visible >= config.occluded_threshold))
    if occluded < math.ceil(config.min_occluded_fraction * len(meshes) - 1e-9):
        return (
            None,
            f"fewer than min_occluded_fraction={config.min_occluded_fraction} of the objects occluded",
        )
    lo, hi = config.completion_hidden
    if needs_completion and not np.any((1.0 - visible >= lo) & (1.0 - visible <= hi)):
        return None, f"no object {lo:.0%}-{hi:.0%} hidden (completion_fraction)"
    nearest = [float(d[d > 0].min()) if np.any(d > 0) else math.inf for d in depth]
    order = front_to_back_order(occlusion_edges(amodal, ids), len(meshes), nearest)
    if order is None:
        return None, "the occlusion graph has a cycle"
    return order, ""
