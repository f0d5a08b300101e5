"""Random lights and world backgrounds for a tabletop around the origin.

Power ranges are named constants so the renderer can calibrate exposure (Standard view transform) in one
place.
Area light power is derived from a target irradiance at the table centre (``P = E * pi * d^2``: a one-sided
Lambertian emitter's on-axis intensity is P / pi), so exposure does not depend on how far a light was placed.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from core.camera import look_at_quaternion
from core.policy import HDR_SUFFIXES
from core.spec import LightSpec, Vec3, WorldSpec

# Total irradiance (W/m^2) the area lights put on the table centre; the key light gets the largest share.
AREA_IRRADIANCE = (4.5, 8.0)
FILL_SHARE = (0.15, 0.6)  # a fill light's irradiance relative to the key light's
AREA_SIZE = (0.15, 0.8)  # metres
SUN_STRENGTH = (3.0, 6.0)  # W/m^2
SUN_ANGLE = (0.01, 0.15)  # radians (angular diameter)
SUN_KEY_PROB = 0.3  # probability that the key light is a sun instead of an area light
LIGHT_DISTANCE = (0.6, 1.4)  # metres from the table centre
LIGHT_ELEVATION = (math.radians(25.0), math.radians(80.0))
TEMPERATURE_K = (3200.0, 7500.0)

WORLD_KIND_WEIGHTS = {"sky": 0.5, "gradient": 0.5}
HDRI_PROB = 0.6  # when an HDRI folder is given
WORLD_STRENGTH = {"sky": (0.2, 0.6), "gradient": (0.3, 1.0), "hdri": (0.5, 1.5)}


def blackbody_rgb(temperature_k: float) -> Vec3:
    """Linear RGB (max channel 1) of a black body, by Tanner Helland's fit to the CIE colour-matching data.

    Hand-written: a closed-form curve fit, no library needed; accurate to a few % over 1000-40000 K.
    """
    t = min(max(float(temperature_k), 1000.0), 40000.0) / 100.0
    r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    g = (
        99.4708025861 * math.log(t) - 161.1195681661
        if t <= 66
        else 288.1221695283 * (t - 60) ** -0.0755148492
    )
    if t >= 66:
        b = 255.0
    elif t <= 19:
        b = 0.0
    else:
        b = 138.5177312231 * math.log(t - 10) - 305.0447927307
    srgb = np.clip(np.array([r, g, b]) / 255.0, 0.0, 1.0)
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    linear = linear / linear.max()
    return (float(linear[0]), float(linear[1]), float(linear[2]))


def _position(rng: np.random.Generator, azimuth: float) -> np.ndarray:
    elevation = rng.uniform(*LIGHT_ELEVATION)
    d = rng.uniform(*LIGHT_DISTANCE)
    return d * np.array(
        [
            math.cos(elevation) * math.cos(azimuth),
            math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
        ]
    )


def sample_lights(rng: np.random.Generator, n_min: int = 1, n_max: int = 3) -> tuple[LightSpec, ...]:
    """1 key light (area or sun) and up to ``n_max - 1`` area fill lights around and above the table."""
    if not 1 <= n_min <= n_max:
        raise ValueError(f"sample_lights: need 1 <= n_min <= n_max, got {n_min}, {n_max}")
    n = int(rng.integers(n_min, n_max + 1))
    total = rng.uniform(*AREA_IRRADIANCE)
    shares = np.concatenate([[1.0], rng.uniform(*FILL_SHARE, n - 1)])
    shares /= shares.sum()
    key_azimuth = rng.uniform(0.0, 2.0 * math.pi)
    lights = []
    for k in range(n):
        # Fill lights come from other sides than the key light, so shadows are softened, not doubled.
        azimuth = key_azimuth + (0.0 if k == 0 else rng.uniform(0.6, 2.0 * math.pi - 0.6))
        position = _position(rng, azimuth)
        target = np.append(rng.uniform(-0.05, 0.05, 2), 0.0)
        temperature = float(rng.uniform(*TEMPERATURE_K))
        if k == 0 and rng.random() < SUN_KEY_PROB:
            kind, power, size = "SUN", float(rng.uniform(*SUN_STRENGTH)), float(rng.uniform(*SUN_ANGLE))
        else:
            dist2 = float(np.sum((position - target) ** 2))
            kind, size = "AREA", float(rng.uniform(*AREA_SIZE))
            power = float(total * shares[k] * math.pi * dist2)
        lights.append(
            LightSpec(
                kind=kind,
                location=(float(position[0]), float(position[1]), float(position[2])),
                rotation=look_at_quaternion(position, target),
                power=power,
                size=size,
                color=blackbody_rgb(temperature),
                temperature_k=temperature,
            )
        )
    return tuple(lights)


@functools.lru_cache(maxsize=16)
def list_hdris(hdri_dir: str) -> tuple[str, ...]:
    """HDRI files under ``hdri_dir`` (recursive, sorted, absolute)."""
    return tuple(
        sorted(str(p.resolve()) for p in Path(hdri_dir).rglob("*") if p.suffix.lower() in HDR_SUFFIXES)
    )


def sample_world(rng: np.random.Generator, hdri_dir: str | Path | None = None) -> WorldSpec:
    """A world background: an HDRI from ``hdri_dir`` (when it has any), a procedural sky or a gradient."""
    hdris = list_hdris(str(hdri_dir)) if hdri_dir else ()
    if hdris and rng.random() < HDRI_PROB:
        return WorldSpec(
            kind="hdri",
            strength=float(rng.uniform(*WORLD_STRENGTH["hdri"])),
            hdri_path=hdris[int(rng.integers(len(hdris)))],
            rotation_z=float(rng.uniform(0.0, 2.0 * math.pi)),
        )
    names = sorted(WORLD_KIND_WEIGHTS)
    p = np.array([WORLD_KIND_WEIGHTS[k] for k in names])
    kind = names[int(rng.choice(len(names), p=p / p.sum()))]
    strength = float(rng.uniform(*WORLD_STRENGTH[kind]))
    if kind == "sky":
        return WorldSpec(
            kind="sky",
            strength=strength,
            sun_elevation=float(rng.uniform(0.15, 1.3)),
            sun_rotation=float(rng.uniform(0.0, 2.0 * math.pi)),
        )
    from assets.materials import sample_palette

    horizon, zenith = sample_palette(rng, 2, saturation=(0.05, 0.45), value=(0.55, 1.0))
    return WorldSpec(
        kind="gradient",
        strength=strength,
        colors=(horizon, zenith),
        rotation_z=float(rng.uniform(0.0, 2.0 * math.pi)),
    )
