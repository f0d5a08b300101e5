"""The scene spec: the one definition of a scene, shared by the sampler, both renderers, the shards and tests.

Plain frozen dataclasses with an exact JSON round trip (``SceneSpec.from_json(spec.to_json()) == spec``).
Conventions (Blender's, which are also OpenGL's/pyrender's):
  * world units are metres, +Z up; the table top is the plane z = 0, centred on the origin;
  * ``CameraSpec.cam_to_world`` is a row-major 4x4; the camera looks down its local -Z with +Y up;
  * rotations are unit quaternions ``(w, x, y, z)``; an object's world transform is
    ``T(location) @ R(rotation) @ S(scale)`` applied to its asset mesh in asset-local coordinates;
  * colours are linear RGB in [0, 1].
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]
Mat4 = tuple[tuple[float, float, float, float], ...]


@dataclass(frozen=True)
class MaterialSpec:
    """A procedural (or image) Blender node material."""

    kind: str  # one of MATERIAL_KINDS
    palette: tuple[Vec3, ...]  # 1..4 linear RGB colours the texture blends between
    texture_scale: float = 5.0
    roughness: float = 0.5
    metallic: float = 0.0
    specular: float = 0.5
    seed: int = 0  # texture offset/variation
    image_path: str | None = None  # for kind == "image"


MATERIAL_KINDS = ("plain", "noise", "voronoi", "wave", "checker", "stripes", "gradient", "image")


@dataclass(frozen=True)
class AssetRef:
    """Where an object's mesh comes from. ``asset_id`` is stable: derived from (family, seed) or the file."""

    asset_id: str
    source: str  # "procedural" or "file"
    family: str  # procedural family name, or "file"
    seed: int = 0
    path: str | None = None  # for source == "file"
    target_size: float = 0.1  # metres: largest extent after import normalisation (files only)


@dataclass(frozen=True)
class ObjectSpec:
    name: str  # unique in the scene; scene.json and the renderers refer to objects by it
    asset: AssetRef
    location: Vec3
    rotation: Quat
    scale: Vec3
    material: MaterialSpec
    pass_index: int  # 1-based, unique; Blender's object index pass and ids use it


@dataclass(frozen=True)
class TableSpec:
    size: tuple[float, float]  # x, y extent in metres
    thickness: float
    material: MaterialSpec


@dataclass(frozen=True)
class CameraSpec:
    width: int
    height: int
    focal_mm: float
    sensor_width_mm: float
    cam_to_world: Mat4

    def intrinsics(self) -> tuple[tuple[float, float, float], ...]:
        """Pinhole K in pixels (x right, y down, principal point at the image centre)."""
        fx = self.focal_mm / self.sensor_width_mm * self.width
        return ((fx, 0.0, self.width / 2.0), (0.0, fx, self.height / 2.0), (0.0, 0.0, 1.0))


@dataclass(frozen=True)
class LightSpec:
    kind: str  # "AREA" or "SUN"
    location: Vec3
    rotation: Quat  # the light shines down its local -Z
    power: float  # watts for AREA, irradiance (W/m^2) for SUN
    size: float  # metres for AREA, angular diameter (radians) for SUN
    color: Vec3  # linear RGB from the colour temperature
    temperature_k: float


@dataclass(frozen=True)
class WorldSpec:
    kind: str  # "sky", "gradient" or "hdri"
    strength: float
    colors: tuple[Vec3, ...] = ()  # horizon/zenith for "gradient"
    sun_elevation: float = 0.8  # radians, for "sky"
    sun_rotation: float = 0.0
    hdri_path: str | None = None
    rotation_z: float = 0.0


@dataclass(frozen=True)
class RenderSettings:
    engine: str = "CYCLES"  # "CYCLES" or "BLENDER_EEVEE"
    samples: int = 16
    denoise: bool = False
    threads: int = 0  # 0 = all cores; Ray workers set 1
    seed: int = 0  # Cycles sampling seed


@dataclass(frozen=True)
class SceneSpec:
    scene_id: str  # no dots: it is the WebDataset key
    seed: int
    table: TableSpec
    objects: tuple[ObjectSpec, ...]
    camera: CameraSpec
    lights: tuple[LightSpec, ...]
    world: WorldSpec
    render: RenderSettings = field(default_factory=RenderSettings)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"scene spec: schema_version {version!r}, expected {SCHEMA_VERSION}")
        return _build(cls, data, "scene")

    @classmethod
    def from_json(cls, text: str) -> SceneSpec:
        return cls.from_dict(json.loads(text))

    def with_render(self, **changes: Any) -> SceneSpec:
        return dataclasses.replace(self, render=dataclasses.replace(self.render, **changes))


def _build(tp: Any, value: Any, where: str) -> Any:
    """Rebuild a value of (possibly nested, generic) type ``tp`` from its JSON form, exactly."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"scene spec: {where} should be an object")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{where}.{f.name}")
        unknown = set(value) - {f.name for f in dataclasses.fields(tp)}
        if unknown:
            raise ValueError(f"scene spec: unknown field(s) {sorted(unknown)} in {where}")
        return tp(**kwargs)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _build(next(a for a in args if a is not type(None)), value, where)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is float:
        return float(value)
    if tp is int:
        return int(value)
    if tp is bool:
        return bool(value)
    return value


def quat_to_matrix(q: Quat) -> tuple[tuple[float, float, float], ...]:
    """3x3 rotation matrix of a unit quaternion (w, x, y, z)."""
    w, x, y, z = q
    return (
        (1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)),
        (2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)),
        (2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)),
    )


def object_to_world(obj: ObjectSpec) -> tuple[tuple[float, float, float, float], ...]:
    """4x4 ``T @ R @ S`` of an object, row-major (the same matrix Blender builds from loc/rot/scale)."""
    r = quat_to_matrix(obj.rotation)
    s = obj.scale
    rows = tuple(
        (r[i][0] * s[0], r[i][1] * s[1], r[i][2] * s[2], obj.location[i]) for i in range(3)
    )
    return rows + ((0.0, 0.0, 0.0, 1.0),)
