"""The layer-stack layout and the compositing equation: the one place both are defined.

Layout (channels-first, values in [0, 1], 8-bit sRGB-encoded values divided by 255):
  * ``layers``: ``[..., K, 4, H, W]`` straight-alpha RGBA object layers, slot 0 the FRONTMOST object;
    empty slots have alpha 0 and RGB = ``EMPTY_RGB``.
  * ``background``: ``[..., 3, H, W]``, the table and world with the objects' shadows.
Compositing is back to front, starting from the background: ``C <- a_k * rgb_k + (1 - a_k) * C``.

Every function works on numpy arrays and torch tensors alike (only ``*``, ``+`` and indexing are used), so the
renderer's ground-truth check, the trainer and the inference guidance share the same code.
Images stored channels-last (PIL/numpy ``H, W, C``) go through ``to_channels_first`` first.
"""

from __future__ import annotations

from typing import Any

from core.policy import ALPHA_THRESHOLD

# Fixed neutral colour of empty slots (and of the transparent parts of a layer), in [0, 1].
EMPTY_RGB = (0.5, 0.5, 0.5)
ALPHA_CHANNEL = 3
NUM_LAYER_CHANNELS = 4


def composite(layers: Any, background: Any) -> Any:
    """Composite ``layers [..., K, 4, H, W]`` (slot 0 frontmost) over ``background [..., 3, H, W]``."""
    out = background
    for k in range(layers.shape[-4] - 1, -1, -1):
        alpha = layers[..., k, ALPHA_CHANNEL : ALPHA_CHANNEL + 1, :, :]
        out = alpha * layers[..., k, :ALPHA_CHANNEL, :, :] + (1 - alpha) * out
    return out


def visible_weights(alphas: Any) -> Any:
    """Per-slot visible (modal) weight ``a_k * prod_{j<k} (1 - a_j)`` for ``alphas [..., K, H, W]``.

    With binary alphas this is the modal mask of each slot: the frontmost covering slot wins.
    """
    weights = []
    transmitted = 1 - alphas.sum(-3) * 0  # ones of shape [..., H, W], same type/device (also for K = 0)
    for k in range(alphas.shape[-3]):
        weights.append(alphas[..., k, :, :] * transmitted)
        transmitted = transmitted * (1 - alphas[..., k, :, :])
    if not weights:
        return alphas * 0
    return _stack_like(alphas, weights)


def modal_ids(alphas: Any, threshold: float = ALPHA_THRESHOLD) -> Any:
    """Modal instance map from amodal alphas ``[..., K, H, W]``: 0 = background, k+1 = frontmost slot k with
    alpha > threshold at that pixel. The same convention as ``ids.png``."""
    covered = alphas > threshold
    ids = covered.sum(-3) * 0  # zeros of shape [..., H, W] (also for K = 0)
    for k in range(alphas.shape[-3] - 1, -1, -1):
        ids = ids * (1 - covered[..., k, :, :] * 1) + covered[..., k, :, :] * (k + 1)
    return ids


def to_channels_first(image: Any) -> Any:
    """``[..., H, W, C]`` -> ``[..., C, H, W]`` for numpy arrays or torch tensors."""
    return _moveaxis(image, -1, -3)


def to_channels_last(image: Any) -> Any:
    """``[..., C, H, W]`` -> ``[..., H, W, C]``."""
    return _moveaxis(image, -3, -1)


def _moveaxis(x: Any, src: int, dst: int) -> Any:
    if hasattr(x, "movedim"):
        return x.movedim(src, dst)
    import numpy as np

    return np.moveaxis(x, src, dst)


def _stack_like(like: Any, items: list) -> Any:
    if hasattr(like, "movedim"):
        import torch

        return torch.stack(items, dim=-3)
    import numpy as np

    return np.stack(items, axis=-3)
