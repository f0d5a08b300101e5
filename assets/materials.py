"""Random materials: procedural texture kinds over pleasant HSV palettes, and image textures from a folder.

Colours are sampled in HSV (harmonious hue schemes, bounded saturation/value so nothing is neon or black) and
stored as linear RGB, the space Blender's shader nodes work in.
"""

from __future__ import annotations

import colorsys
import functools
from pathlib import Path

import numpy as np

from core.policy import HDR_SUFFIXES, IMAGE_SUFFIXES
from core.spec import MaterialSpec, Vec3

TEXTURE_SUFFIXES = IMAGE_SUFFIXES + HDR_SUFFIXES  # Blender's image texture node reads HDR files too

# Relative frequency of each procedural kind for objects; "image" is added when a texture dir has images.
OBJECT_KIND_WEIGHTS: dict[str, float] = {
    "plain": 0.14,
    "noise": 0.18,
    "voronoi": 0.14,
    "wave": 0.14,
    "checker": 0.12,
    "stripes": 0.14,
    "gradient": 0.14,
}
IMAGE_KIND_WEIGHT = 0.3
TABLE_KIND_WEIGHTS: dict[str, float] = {
    "wave": 0.35,
    "noise": 0.3,
    "plain": 0.15,
    "checker": 0.1,
    "voronoi": 0.1,
}
# Texture frequency per kind: Blender texture "Scale" over each object's Generated (0..1 box) coordinates.
TEXTURE_SCALE: dict[str, tuple[float, float]] = {
    "plain": (1.0, 1.0),
    "noise": (3.0, 12.0),
    "voronoi": (4.0, 16.0),
    "wave": (2.0, 8.0),
    "checker": (3.0, 10.0),
    "stripes": (3.0, 12.0),
    "gradient": (0.5, 2.0),
    "image": (1.0, 3.0),
}
# The table's Generated coordinates span ~1.2 m (objects' ~10 cm), so its patterns need a higher frequency.
TABLE_TEXTURE_SCALE = 3.0
ROUGHNESS = (0.15, 0.9)
METALLIC_PROB = 0.15
SPECULAR = (0.3, 0.7)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def sample_palette(
    rng: np.random.Generator,
    n: int,
    saturation: tuple[float, float] = (0.25, 0.85),
    value: tuple[float, float] = (0.3, 0.95),
) -> tuple[Vec3, ...]:
    """``n`` linear-RGB colours from one harmonious hue scheme (analogous, complementary or triadic)."""
    base = rng.random()
    scheme = rng.choice(["analogous", "complementary", "triadic"])
    offsets = {
        "analogous": [0.0, 0.06, -0.06, 0.12],
        "complementary": [0.0, 0.5, 0.04, 0.54],
        "triadic": [0.0, 1 / 3, 2 / 3, 0.05],
    }[str(scheme)]
    colours = []
    for k in range(n):
        hue = (base + offsets[k % 4] + rng.normal(0.0, 0.015)) % 1.0
        rgb = colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), rng.uniform(*value))
        colours.append(tuple(float(x) for x in srgb_to_linear(np.array(rgb))))
    return tuple(colours)


@functools.lru_cache(maxsize=16)
def list_images(texture_dir: str) -> tuple[str, ...]:
    """Image files under ``texture_dir`` (recursive, sorted, absolute): the same list on every worker."""
    root = Path(texture_dir)
    return tuple(sorted(str(p.resolve()) for p in root.rglob("*") if p.suffix.lower() in TEXTURE_SUFFIXES))


def _choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = sorted(weights)
    p = np.array([weights[k] for k in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def sample_material(rng: np.random.Generator, texture_dir: str | Path | None = None) -> MaterialSpec:
    """A random object material; ``kind == "image"`` only when ``texture_dir`` holds images."""
    weights = dict(OBJECT_KIND_WEIGHTS)
    images = list_images(str(texture_dir)) if texture_dir else ()
    if images:
        weights["image"] = IMAGE_KIND_WEIGHT
    kind = _choose(rng, weights)
    n_colours = 1 if kind in ("plain", "image") else int(rng.integers(2, 5))
    metallic = float(rng.uniform(0.5, 1.0)) if rng.random() < METALLIC_PROB else 0.0
    return MaterialSpec(
        kind=kind,
        palette=sample_palette(rng, n_colours),
        texture_scale=float(rng.uniform(*TEXTURE_SCALE[kind])),
        roughness=float(rng.uniform(*ROUGHNESS)),
        metallic=metallic,
        specular=float(rng.uniform(*SPECULAR)),
        seed=int(rng.integers(0, 2**31 - 1)),
        image_path=images[int(rng.integers(len(images)))] if kind == "image" else None,
    )


def sample_table_material(rng: np.random.Generator, texture_dir: str | Path | None = None) -> MaterialSpec:
    """A calmer material for the table top: wood-like waves, muted noise, plain or checker cloth."""
    weights = dict(TABLE_KIND_WEIGHTS)
    images = list_images(str(texture_dir)) if texture_dir else ()
    if images:
        weights["image"] = IMAGE_KIND_WEIGHT
    kind = _choose(rng, weights)
    n_colours = 1 if kind in ("plain", "image") else 2
    return MaterialSpec(
        kind=kind,
        palette=sample_palette(rng, n_colours, saturation=(0.05, 0.5), value=(0.3, 0.75)),
        texture_scale=float(rng.uniform(*TEXTURE_SCALE[kind])) * TABLE_TEXTURE_SCALE,
        roughness=float(rng.uniform(0.4, 0.9)),
        metallic=0.0,
        specular=float(rng.uniform(0.3, 0.5)),
        seed=int(rng.integers(0, 2**31 - 1)),
        image_path=images[int(rng.integers(len(images)))] if kind == "image" else None,
    )
