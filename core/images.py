"""Small image helpers every floor shares: PSNR, 8-bit conversion, layers over a checkerboard.

Images here are numpy arrays or torch tensors (converted with ``.detach().cpu().numpy()``, without importing
torch), so the synthetic-data side never needs torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.layers import ALPHA_CHANNEL
from core.policy import PSNR_CAP_DB

CHECKER_LIGHT, CHECKER_DARK = 200, 130  # 8-bit grey of the checkerboard's squares


def as_numpy(image: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device) or a nested sequence."""
    if hasattr(image, "detach"):
        return image.detach().cpu().numpy()
    return np.asarray(image)


def psnr(a: Any, b: Any) -> float:
    """PSNR in dB of two images with values in [0, 1] (data range 1), capped at ``PSNR_CAP_DB``; NaN when
    there are no values to compare.

    Computed in float64 with numpy rather than torchmetrics: scene.json records this value for every rendered
    scene and its bytes must stay put (torchmetrics works in the inputs' float32), and the renderer's
    processes do not import torch.
    """
    a64, b64 = np.asarray(as_numpy(a), np.float64), np.asarray(as_numpy(b), np.float64)
    if a64.size == 0:
        return float("nan")
    mse = float(np.mean((a64 - b64) ** 2))
    return PSNR_CAP_DB if mse <= 1e-10 else min(PSNR_CAP_DB, 10.0 * math.log10(1.0 / mse))


def to_uint8(image: Any) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] (numpy or torch) -> ``[H, W, C]`` uint8."""
    return np.round(np.clip(as_numpy(image), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def checkerboard(height: int, width: int, square: int = 8) -> np.ndarray:
    """``[H, W, 3]`` uint8 grey checkerboard with ``square``-pixel squares (dark at the top-left)."""
    yy, xx = np.mgrid[:height, :width]
    light = ((yy // square + xx // square) % 2).astype(bool)
    return np.where(light[..., None], CHECKER_LIGHT, CHECKER_DARK).astype(np.uint8).repeat(3, axis=2)


def over_checkerboard(rgba: np.ndarray) -> np.ndarray:
    """``[H, W, 4]`` uint8 straight-alpha image over a checkerboard (1/16 of its height per square), so that
    transparency shows: ``[H, W, 3]`` uint8."""
    alpha = rgba[..., ALPHA_CHANNEL : ALPHA_CHANNEL + 1].astype(np.float64) / 255.0
    board = checkerboard(*rgba.shape[:2], square=max(2, rgba.shape[0] // 16))
    return np.round(alpha * rgba[..., :ALPHA_CHANNEL] + (1 - alpha) * board).astype(np.uint8)
