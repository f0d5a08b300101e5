"""Scoring a predicted layer stack against ground truth: matching, per-scene rows, dataset summary.

Everything here is a pure function of arrays (numpy or torch, ``[K, 4, H, W]`` layers in [0, 1], slot 0
frontmost, as in ``cobl.layers``), so the same code scores the model, the unguided sampler and the baselines.

Definitions (the ones the report's table documents):
  * Masks are alphas above ``ALPHA_THRESHOLD``. Ground-truth slots with an empty mask are absent objects.
  * Matching: Hungarian assignment (scipy) maximising amodal-mask IoU; pairs with IoU 0 are not matches.
  * ``amodal_miou``: mean IoU over TRUE objects, an unmatched true object counts 0 (extra predicted layers are
    penalised by the count accuracy instead). Split by occlusion: a true object is occluded when its visible
    fraction (``cobl.layers.visible_weights``) is below ``OCCLUDED_BELOW``.
  * ``layer_psnr`` / ``layer_ssim``: a matched pair is compared as both layers look over neutral grey
    (``a * rgb + (1 - a) * EMPTY_RGB``), inside the TRUE amodal mask only: PSNR on the mask's pixels, SSIM as
    the mean of torchmetrics' full SSIM map over the mask's pixels (outside the mask both images hold the true
    layer, so the window straddling the mask border does not reward or punish what lies outside).
  * ``recomposition_psnr``: the predicted layers composited over the predicted background vs the photo.
  * ``order_accuracy``: over pairs of matched true objects whose true amodal masks overlap (so one hides the
    other), the fraction whose predicted slots are in the same front/back order.
  * ``count_accuracy``: 1 when the number of predicted layers equals the number of true objects.
PSNRs (cobl.core.images.psnr) are capped at ``PSNR_CAP_DB`` so a perfect prediction gives a finite number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics.functional.image import structural_similarity_index_measure

from cobl.core.images import psnr
from cobl.core.layers import ALPHA_CHANNEL, EMPTY_RGB, composite, visible_weights
from cobl.core.policy import ALPHA_THRESHOLD

OCCLUDED_BELOW = 0.95


@dataclass(frozen=True)
class Match:
    """Predicted slot ``pred`` explains true object ``true`` with amodal-mask IoU ``iou``."""

    pred: int
    true: int
    iou: float


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _torch(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float32)
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


def masks_from_alpha(alphas: Any, threshold: float = ALPHA_THRESHOLD) -> np.ndarray:
    """Binary amodal masks ``[K, H, W]`` from alphas ``[K, H, W]``."""
    return _np(alphas) > threshold


def iou_matrix(pred_masks: np.ndarray, true_masks: np.ndarray) -> np.ndarray:
    """IoU of every predicted mask against every true mask: ``[P, T]``; two empty masks have IoU 0."""
    p = pred_masks.reshape(len(pred_masks), -1).astype(np.float64)
    t = true_masks.reshape(len(true_masks), -1).astype(np.float64)
    inter = p @ t.T
    union = p.sum(1)[:, None] + t.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_layers(pred_alpha: Any, true_alpha: Any, threshold: float = ALPHA_THRESHOLD) -> list[Match]:
    """Hungarian matching of predicted to true layers by amodal-mask IoU (``[P, H, W]`` vs ``[T, H, W]``).

    Returns the matches sorted by true index; pairs the assignment makes with IoU 0 are dropped.
    """
    pred_masks, true_masks = masks_from_alpha(pred_alpha, threshold), masks_from_alpha(true_alpha, threshold)
    if len(pred_masks) == 0 or len(true_masks) == 0:
        return []
    iou = iou_matrix(pred_masks, true_masks)
    rows, cols = linear_sum_assignment(-iou)
    matches = [
        Match(int(p), int(t), float(iou[p, t])) for p, t in zip(rows, cols, strict=True) if iou[p, t] > 0
    ]
    return sorted(matches, key=lambda m: m.true)


def visible_fractions(alphas: Any) -> np.ndarray:
    """Fraction of each layer's alpha mass that is visible in the composite (1 = unoccluded), ``[K]``."""
    a = _np(alphas).astype(np.float64)
    mass = a.reshape(len(a), -1).sum(1)
    vis = visible_weights(a).reshape(len(a), -1).sum(1)
    return np.divide(vis, mass, out=np.zeros_like(vis), where=mass > 0)


def _over_grey(layer: torch.Tensor) -> torch.Tensor:
    """``[4, H, W]`` straight-alpha layer as it looks over the neutral grey of empty slots: ``[3, H, W]``."""
    alpha = layer[ALPHA_CHANNEL : ALPHA_CHANNEL + 1]
    grey = torch.tensor(EMPTY_RGB, dtype=layer.dtype)[:, None, None]
    return alpha * layer[:ALPHA_CHANNEL] + (1 - alpha) * grey


def masked_layer_psnr_ssim(
    pred_layer: Any, true_layer: Any, threshold: float = ALPHA_THRESHOLD
) -> tuple[float, float]:
    """PSNR and SSIM of one matched pair inside the true layer's amodal mask (see the module docstring)."""
    pred_img, true_img = _over_grey(_torch(pred_layer)), _over_grey(_torch(true_layer))
    mask = _torch(true_layer)[ALPHA_CHANNEL] > threshold
    if not bool(mask.any()):
        return float("nan"), float("nan")
    layer_psnr = psnr(pred_img[:, mask], true_img[:, mask])
    pred_in_mask = torch.where(mask[None], pred_img, true_img)
    _, ssim_map = structural_similarity_index_measure(
        pred_in_mask[None], true_img[None], data_range=1.0, return_full_image=True
    )
    layer_ssim = float(ssim_map[0].mean(0)[mask].mean())
    return layer_psnr, layer_ssim


def _present(layers: Any, threshold: float) -> np.ndarray:
    """Indices of slots whose amodal mask is not empty."""
    masks = masks_from_alpha(_np(layers)[:, ALPHA_CHANNEL], threshold)
    return np.flatnonzero(masks.reshape(len(masks), -1).any(1))


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def evaluate_scene(
    pred_layers: Any,
    pred_background: Any,
    true_layers: Any,
    photo: Any,
    *,
    true_visible_fraction: Any = None,
    threshold: float = ALPHA_THRESHOLD,
    occluded_below: float = OCCLUDED_BELOW,
) -> dict[str, Any]:
    """One scene's row. ``pred_layers [P, 4, H, W]`` are the layers the method reports (empty ones already
    dropped); ``true_layers [K, 4, H, W]`` may contain empty slots, which are ignored.
    ``true_visible_fraction`` (per true slot) defaults to the one computed from the true alphas."""
    pred, true = _np(pred_layers), _np(true_layers)
    keep = _present(true, threshold)
    if true_visible_fraction is None:
        vis_all = visible_fractions(true[:, ALPHA_CHANNEL])
    else:
        vis_all = np.asarray(_np(true_visible_fraction), dtype=np.float64)
    true, vis = true[keep], vis_all[keep]
    matches = match_layers(pred[:, ALPHA_CHANNEL], true[:, ALPHA_CHANNEL], threshold)
    by_true = {m.true: m for m in matches}

    objects = []
    for t in range(len(true)):
        m = by_true.get(t)
        row: dict[str, Any] = {
            "true_slot": int(keep[t]),
            "pred_slot": None if m is None else m.pred,
            "iou": 0.0 if m is None else m.iou,
            "visible_fraction": float(vis[t]),
            "occluded": bool(vis[t] < occluded_below),
            "psnr": None,
            "ssim": None,
        }
        if m is not None:
            row["psnr"], row["ssim"] = masked_layer_psnr_ssim(pred[m.pred], true[t], threshold)
        objects.append(row)

    # Order: true slot order is front-to-back; judge only pairs whose amodal masks overlap.
    true_masks = masks_from_alpha(true[:, ALPHA_CHANNEL], threshold)
    pairs = correct = 0
    for i, a in enumerate(matches):
        for b in matches[i + 1 :]:  # a.true < b.true, so a is in front in the ground truth
            if np.logical_and(true_masks[a.true], true_masks[b.true]).any():
                pairs += 1
                correct += int(a.pred < b.pred)

    recomposition = composite(_torch(pred), _torch(pred_background))
    ious = [o["iou"] for o in objects]
    return {
        "num_true": len(true),
        "num_pred": len(pred),
        "count_accuracy": float(len(pred) == len(true)),
        "amodal_miou": _mean(ious),
        "amodal_miou_occluded": _mean([o["iou"] for o in objects if o["occluded"]]),
        "amodal_miou_unoccluded": _mean([o["iou"] for o in objects if not o["occluded"]]),
        "layer_psnr": _mean([o["psnr"] for o in objects]),
        "layer_ssim": _mean([o["ssim"] for o in objects]),
        "recomposition_psnr": psnr(recomposition, _torch(photo)),
        "order_pairs": pairs,
        "order_correct": correct,
        "order_accuracy": correct / pairs if pairs else None,
        "objects": objects,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Dataset means. Object-level metrics (mIoU and its split, layer PSNR/SSIM) are pooled over all true
    objects, order accuracy over all judged pairs, recomposition PSNR and count accuracy averaged over
    scenes."""
    objects = [o for r in rows for o in r["objects"]]
    pairs = sum(r["order_pairs"] for r in rows)
    return {
        "scenes": len(rows),
        "objects": len(objects),
        "occluded_objects": sum(o["occluded"] for o in objects),
        "amodal_miou": _mean([o["iou"] for o in objects]),
        "amodal_miou_occluded": _mean([o["iou"] for o in objects if o["occluded"]]),
        "amodal_miou_unoccluded": _mean([o["iou"] for o in objects if not o["occluded"]]),
        "layer_psnr": _mean([o["psnr"] for o in objects]),
        "layer_ssim": _mean([o["ssim"] for o in objects]),
        "recomposition_psnr": _mean([r["recomposition_psnr"] for r in rows]),
        "order_pairs": pairs,
        "order_accuracy": sum(r["order_correct"] for r in rows) / pairs if pairs else None,
        "count_accuracy": _mean([r["count_accuracy"] for r in rows]),
    }
