"""The depth condition: per-image relative inverse depth in [0, 1], 1 = nearest, 0 = farthest or no hit.

The authors condition CObL on a depth map as well as the photo (a depth adapter fed by a monocular
estimator). Depth is the cue that says which of two touching objects is in front and where an object ends
and the table begins, which a small model otherwise has to infer from shading alone. Relative inverse depth
is what monocular estimators (MiDaS, Depth Anything) output, so a model trained on the renderer's depth
normalised this way can take such an estimate for a real photo; metric scale is deliberately thrown away.

The renderer's depth is still better than any estimate: it has exact silhouettes, which give away every object
outline and the occlusion order. ``depth_source="monocular"`` (``DEPTH_SOURCES``) therefore degrades it the
way a monocular estimator's output differs from it (``simulate_monocular``): Gaussian blur (sigma
``MONOCULAR_BLUR_SIGMA_64`` px at 64x64, scaled with the resolution) for the smoothed edges, a gamma
jitter (``MONOCULAR_GAMMA``) for the unknown non-linear relation between the estimate and true inverse
depth, additive Gaussian noise (``MONOCULAR_NOISE``), then re-normalised to [0, 1] (scale and shift free).
The draw is seeded by the sample (``seed``), so a scene gets the same degraded depth at training and at
evaluation, as a real estimator gives the same estimate for the same photo. ``"rendered"`` keeps the exact
depth (an oracle input).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from core.policy import DEPTH_SOURCES, IMAGE_SUFFIXES  # noqa: F401  (DEPTH_SOURCES re-exported)

MONOCULAR_BLUR_SIGMA_64 = 1.5  # px at 64x64; scaled linearly with the image side
MONOCULAR_GAMMA = (0.7, 1.4)
MONOCULAR_NOISE = 0.02


def _min_max(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``values [..., H, W]`` scaled per image so its ``valid`` pixels span [0, 1]; invalid pixels -> 0."""
    flat, ok = values.flatten(-2), valid.flatten(-2)
    any_ok = ok.any(-1)
    low = torch.where(any_ok, torch.where(ok, flat, torch.inf).amin(-1), 0.0)[..., None, None]
    high = torch.where(any_ok, torch.where(ok, flat, -torch.inf).amax(-1), 0.0)[..., None, None]
    scaled = ((values - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
    return torch.where(valid, scaled, torch.zeros_like(values))


def relative_disparity(depth: torch.Tensor) -> torch.Tensor:
    """``depth [..., H, W]`` in metres (0 = no hit) -> inverse depth min-max scaled per image to [0, 1]."""
    depth = depth.float()
    hit = depth > 0
    return _min_max(1 / depth.clamp_min(1e-6), hit)


def normalise_relative(disparity: torch.Tensor) -> torch.Tensor:
    """An estimator's relative inverse depth (any range, larger = nearer) min-max scaled to [0, 1]."""
    disparity = disparity.float()
    return _min_max(disparity, torch.ones_like(disparity, dtype=torch.bool))


def simulate_monocular(disparity: torch.Tensor, seed: int) -> torch.Tensor:
    """Relative disparity ``[..., H, W]`` in [0, 1] degraded like a monocular estimate (module docstring):
    blur, gamma, noise, re-normalised to [0, 1]. Deterministic in ``seed``; float32, same shape."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    d = disparity.detach().cpu().numpy().astype(np.float32)
    sigma = MONOCULAR_BLUR_SIGMA_64 * d.shape[-1] / 64
    axes_sigma = (0,) * (d.ndim - 2) + (sigma, sigma)
    d = gaussian_filter(d, sigma=axes_sigma, mode="nearest").clip(0, 1)
    d = d ** np.float32(rng.uniform(*MONOCULAR_GAMMA))
    d += np.float32(MONOCULAR_NOISE) * rng.standard_normal(d.shape, dtype=np.float32)
    # per image min-max (numpy: this runs per training sample)
    low, high = d.min(axis=(-2, -1), keepdims=True), d.max(axis=(-2, -1), keepdims=True)
    return torch.from_numpy((d - low) / np.maximum(high - low, np.float32(1e-6)))


def depth_from_npy_bytes(data: bytes) -> torch.Tensor:
    """A dataset ``depth.npy`` member (float32 [H, W] metres, 0 = no hit) -> relative disparity [H, W]."""
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.ndim != 2:
        raise ValueError(f"depth.npy: expected a [H, W] array, got shape {array.shape}")
    return relative_disparity(torch.from_numpy(np.asarray(array, np.float32)))


def load_depth_file(path: str | Path) -> torch.Tensor:
    """A user's depth map -> relative disparity ``[H, W]``.

    ``.npy``: metric depth in metres, 0 = unknown (the dataset's own format). An image: an estimator's
    relative inverse depth, brighter = nearer (what Depth Anything / MiDaS write), any bit depth.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            return depth_from_npy_bytes(path.read_bytes())
        if path.suffix.lower() in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(path) as im:
                grey = np.asarray(im.convert("I;16") if im.mode.startswith("I") else im.convert("L"))
            return normalise_relative(torch.from_numpy(grey.astype(np.float32)))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read a depth map ({err})", option="depth") from None
    raise UserError(
        f"{path}: expected a .npy depth in metres or an image of relative inverse depth "
        f"({', '.join(IMAGE_SUFFIXES)})",
        option="depth",
    )
