"""Reference methods scored in the same table as the model.

The visible-only baseline is what a perfect instance segmenter without amodal completion would give: each
object's layer is the photo cut out by its ground-truth MODAL mask, with nothing filled in behind occluders. A
model whose amodal mIoU on occluded objects does not beat it is not completing anything. (The other baseline,
the unguided sampler, is the pipeline with ``guidance_scale=0``; see ``infer.evaluate``.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.layers import ALPHA_CHANNEL, EMPTY_RGB, modal_ids
from core.policy import ALPHA_THRESHOLD


def visible_only_layers(
    photo: Any, true_layers: Any, ids: Any = None, threshold: float = ALPHA_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Layers ``[N, 4, H, W]`` (front to back) and background ``[3, H, W]`` cut from ``photo [3, H, W]``.

    ``ids`` is the modal instance map (``ids.png`` convention, 0 = background, k+1 = slot k); by default it
    is derived from the true amodal alphas. Objects with no visible pixel are dropped: a segmenter cannot find
    them.
    The background is the photo where no object is visible and neutral grey behind the objects, so the stack
    still recomposes the photo exactly.
    """
    photo = np.asarray(photo, dtype=np.float32)
    true_layers = np.asarray(true_layers, dtype=np.float32)
    if ids is None:
        ids = modal_ids(true_layers[:, ALPHA_CHANNEL], threshold)
    ids = np.asarray(ids)
    grey = np.asarray(EMPTY_RGB, dtype=np.float32)[:, None, None]
    layers = []
    for k in range(len(true_layers)):
        visible = ids == k + 1
        if not visible.any():
            continue
        rgb = np.where(visible[None], photo, grey)
        layers.append(np.concatenate([rgb, visible[None].astype(np.float32)], axis=0))
    h, w = photo.shape[-2:]
    stack = np.stack(layers) if layers else np.zeros((0, 4, h, w), np.float32)
    background = np.where((ids == 0)[None], photo, grey).astype(np.float32)
    return stack, background
