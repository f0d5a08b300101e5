"""Scoring a predicted layer stack against ground truth: matching, per-scene rows, dataset summary.

Everything here is a pure function of arrays (numpy or torch, ``[K, 4, H, W]`` layers in [0, 1], slot 0
frontmost, as in ``core.layers``), so the same code scores the model, the unguided sampler and the baselines.

Definitions (the ones the report's table documents):
  * Masks are alphas above ``ALPHA_THRESHOLD``. Ground-truth slots with an empty mask are absent objects.
  * Matching: Hungarian assignment (scipy) maximising amodal-mask IoU; pairs with IoU 0 are not matches.
  * Small-object rule, the same for every method: a predicted layer counts only when its alpha mass exceeds
    ``MIN_OBJECT_AREA`` of the image (the pipeline's own object-discovery rule, ``core.policy``); smaller
    predicted layers are dropped before matching. True objects of any size are scored (``small_objects``
    counts those under the rule, which no method can report).
  * ``amodal_miou``: mean IoU over TRUE objects, an unmatched true object counts 0 (extra predicted layers are
    not seen by it). Split by occlusion: a true object is occluded when its visible fraction
    (``core.layers.visible_weights``) is below ``OCCLUDED_BELOW``.
  * ``amodal_miou_strict``: extra and duplicate layers charged: the matched IoUs summed over the true objects
    AND the unmatched predicted layers, each unmatched prediction counting IoU 0
    (``sum(matched IoU) / (true objects + unmatched predictions)``).
  * ``hidden_recall`` / ``hidden_precision``: on occluded true objects only, the hidden part ``H`` of object
    k is its true amodal mask minus its true visible (modal) mask; the predicted hidden part ``P`` is the
    matched prediction's amodal mask minus the same true visible mask (nothing for an unmatched object).
    Pixels are pooled: recall ``sum|P & H| / sum|H|``, precision ``sum|P & H| / sum|P|`` (None when no
    predicted pixel lies outside the visible masks, e.g. the visible-only baseline).
  * ``fg_ari``: the adjusted Rand index (torchmetrics) of the predicted MODAL segmentation (frontmost
    predicted layer per pixel, 0 = background) against the true modal map, over the pixels where the true map
    is an object (the paper's segmentation metric); the mean over scenes.
  * ``layer_psnr`` / ``layer_ssim``: a matched pair is compared as both layers look over neutral grey
    (``a * rgb + (1 - a) * EMPTY_RGB``), inside the TRUE amodal mask only: PSNR on the mask's pixels, SSIM as
    the mean of torchmetrics' full SSIM map over the mask's pixels (outside the mask both images hold the true
    layer, so the window straddling the mask border does not reward or punish what lies outside).
  * ``recomposition_psnr``: the predicted layers composited over the predicted background vs the photo.
  * ``order_accuracy``: over pairs of matched true objects whose true amodal masks overlap (so one hides the
    other), the fraction whose predicted slots are in the same front/back order.
  * ``count_accuracy``: 1 when the number of predicted layers equals the number of true objects.
PSNRs (core.images.psnr) are capped at ``PSNR_CAP_DB`` so a perfect prediction gives a finite number.

``summarize`` pools the scenes and adds, for the metrics in ``CI_METRICS``, ``<name>_ci = [low, high]``: a
95 % percentile bootstrap over SCENES (seeded numpy, ``BOOTSTRAP_RESAMPLES`` resamples), each resample
pooling its scenes the same way the point estimate does (a ratio of per-scene sums).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics.functional.clustering import adjusted_rand_score
from torchmetrics.functional.image import structural_similarity_index_measure

from core import policy
from core.images import psnr
from core.layers import ALPHA_CHANNEL, EMPTY_RGB, composite, modal_ids, visible_weights
from core.policy import ALPHA_THRESHOLD

OCCLUDED_BELOW = 0.95
BOOTSTRAP_RESAMPLES = 2000
CI_LEVEL = 0.95

# summary metric -> (per-scene numerator, per-scene denominator): pooled = sum(num) / sum(den).
POOLED: dict[str, tuple[str, str]] = {
    "amodal_miou": ("iou_sum", "num_true"),
    "amodal_miou_occluded": ("iou_sum_occluded", "num_occluded"),
    "amodal_miou_unoccluded": ("iou_sum_unoccluded", "num_unoccluded"),
    "amodal_miou_strict": ("iou_sum", "strict_count"),
    "hidden_recall": ("hidden_hit", "hidden_true"),
    "hidden_precision": ("hidden_hit", "hidden_pred"),
    "order_accuracy": ("order_correct", "order_pairs"),
    "count_accuracy": ("count_accuracy", "one"),
    "fg_ari": ("fg_ari", "has_fg_ari"),
    "recomposition_psnr": ("recomposition_psnr", "one"),
}
CI_METRICS = (
    "amodal_miou",
    "amodal_miou_occluded",
    "amodal_miou_strict",
    "hidden_recall",
    "hidden_precision",
    "fg_ari",
    "count_accuracy",
    "order_accuracy",
)


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


def keep_large(pred_layers: Any, min_area: float = policy.MIN_OBJECT_AREA) -> np.ndarray:
    """The predicted layers ``[P, 4, H, W]`` the small-object rule keeps: alpha mass above ``min_area`` of the
    image (the same test as ``cobl.slots.occupied_slots``)."""
    pred = _np(pred_layers)
    if len(pred) == 0:
        return pred
    mass = pred[:, ALPHA_CHANNEL].reshape(len(pred), -1).astype(np.float64).mean(1)
    return pred[mass > min_area]


def fg_ari(pred_ids: Any, true_ids: Any) -> float | None:
    """Foreground ARI: adjusted Rand index of the predicted modal labels against the true ones over the pixels
    where the true map is an object (label > 0); None when the scene has no object pixel."""
    pred, true = _np(pred_ids).reshape(-1), _np(true_ids).reshape(-1)
    fg = true > 0
    if not fg.any():
        return None
    with warnings.catch_warnings():  # torchmetrics builds its contingency table as a sparse tensor
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        value = adjusted_rand_score(
            torch.from_numpy(pred[fg].astype(np.int64)), torch.from_numpy(true[fg].astype(np.int64))
        )
    return float(value)


def evaluate_scene(
    pred_layers: Any,
    pred_background: Any,
    true_layers: Any,
    photo: Any,
    *,
    true_visible_fraction: Any = None,
    true_ids: Any = None,
    threshold: float = ALPHA_THRESHOLD,
    occluded_below: float = OCCLUDED_BELOW,
    min_area: float = policy.MIN_OBJECT_AREA,
) -> dict[str, Any]:
    """One scene's row. ``pred_layers [P, 4, H, W]`` are the layers the method reports, front to back; the
    small-object rule (``min_area``) is applied here to every method alike. ``true_layers [K, 4, H, W]`` may
    contain empty slots, which are ignored. ``true_visible_fraction`` (per true slot) defaults to the one
    computed from the true alphas; ``true_ids`` (modal map, ``ids.png`` convention over the K true slots)
    defaults to ``core.layers.modal_ids`` of the true alphas."""
    pred, true = keep_large(pred_layers, min_area), _np(true_layers)
    keep = _present(true, threshold)
    if true_visible_fraction is None:
        vis_all = visible_fractions(true[:, ALPHA_CHANNEL])
    else:
        vis_all = np.asarray(_np(true_visible_fraction), dtype=np.float64)
    ids_all = modal_ids(true[:, ALPHA_CHANNEL], threshold) if true_ids is None else _np(true_ids)
    area_all = true[:, ALPHA_CHANNEL].reshape(len(true), -1).astype(np.float64).mean(1)
    true, vis = true[keep], vis_all[keep]
    matches = match_layers(pred[:, ALPHA_CHANNEL], true[:, ALPHA_CHANNEL], threshold)
    by_true = {m.true: m for m in matches}
    true_masks = masks_from_alpha(true[:, ALPHA_CHANNEL], threshold)
    pred_masks = masks_from_alpha(pred[:, ALPHA_CHANNEL], threshold)

    objects = []
    for t in range(len(true)):
        m = by_true.get(t)
        row: dict[str, Any] = {
            "true_slot": int(keep[t]),
            "pred_slot": None if m is None else m.pred,
            "iou": 0.0 if m is None else m.iou,
            "visible_fraction": float(vis[t]),
            "occluded": bool(vis[t] < occluded_below),
            "small": bool(area_all[keep[t]] <= min_area),
            "psnr": None,
            "ssim": None,
        }
        if m is not None:
            row["psnr"], row["ssim"] = masked_layer_psnr_ssim(pred[m.pred], true[t], threshold)
        if row["occluded"]:
            outside_visible = ids_all != keep[t] + 1
            hidden = true_masks[t] & outside_visible
            guessed = pred_masks[m.pred] & outside_visible if m is not None else np.zeros_like(hidden)
            row["hidden_true"] = int(hidden.sum())
            row["hidden_pred"] = int(guessed.sum())
            row["hidden_hit"] = int((guessed & hidden).sum())
        objects.append(row)

    # Order: true slot order is front-to-back; judge only pairs whose amodal masks overlap.
    pairs = correct = 0
    for i, a in enumerate(matches):
        for b in matches[i + 1 :]:  # a.true < b.true, so a is in front in the ground truth
            if np.logical_and(true_masks[a.true], true_masks[b.true]).any():
                pairs += 1
                correct += int(a.pred < b.pred)

    recomposition = composite(_torch(pred), _torch(pred_background))
    ious = [o["iou"] for o in objects]
    occluded = [o for o in objects if o["occluded"]]
    unmatched_pred = len(pred) - len(matches)
    hidden = {k: sum(o[k] for o in occluded) for k in ("hidden_true", "hidden_pred", "hidden_hit")}
    scene_ari = fg_ari(modal_ids(pred[:, ALPHA_CHANNEL], threshold), ids_all)
    return {
        "num_true": len(true),
        "num_pred": len(pred),
        "num_occluded": len(occluded),
        "num_unoccluded": len(objects) - len(occluded),
        "small_objects": sum(o["small"] for o in objects),
        "unmatched_pred": unmatched_pred,
        "strict_count": len(true) + unmatched_pred,
        "iou_sum": float(sum(ious)),
        "iou_sum_occluded": float(sum(o["iou"] for o in occluded)),
        "iou_sum_unoccluded": float(sum(o["iou"] for o in objects if not o["occluded"])),
        "count_accuracy": float(len(pred) == len(true)),
        "amodal_miou": _mean(ious),
        "amodal_miou_occluded": _mean([o["iou"] for o in occluded]),
        "amodal_miou_unoccluded": _mean([o["iou"] for o in objects if not o["occluded"]]),
        "amodal_miou_strict": _ratio(sum(ious), len(true) + unmatched_pred),
        **hidden,
        "hidden_recall": _ratio(hidden["hidden_hit"], hidden["hidden_true"]),
        "hidden_precision": _ratio(hidden["hidden_hit"], hidden["hidden_pred"]),
        "fg_ari": scene_ari,
        "layer_psnr": _mean([o["psnr"] for o in objects]),
        "layer_ssim": _mean([o["ssim"] for o in objects]),
        "recomposition_psnr": psnr(recomposition, _torch(photo)),
        "order_pairs": pairs,
        "order_correct": correct,
        "order_accuracy": correct / pairs if pairs else None,
        "objects": objects,
    }


def _ratio(num: float, den: float) -> float | None:
    return float(num) / den if den else None


def _scene_terms(rows: list[dict[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-scene numerators and denominators of a pooled metric (``POOLED``)."""
    num_key, den_key = POOLED[metric]
    nums, dens = [], []
    for r in rows:
        if den_key == "one":
            value = r[num_key]
            ok = value is not None and not math.isnan(value)
            nums.append(value if ok else 0.0)
            dens.append(1.0 if ok else 0.0)
        elif den_key == "has_fg_ari":
            nums.append(r[num_key] or 0.0)
            dens.append(0.0 if r[num_key] is None else 1.0)
        else:
            nums.append(float(r[num_key]))
            dens.append(float(r[den_key]))
    return np.asarray(nums, np.float64), np.asarray(dens, np.float64)


def bootstrap_ci(
    nums: np.ndarray, dens: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
    level: float = CI_LEVEL,
) -> list[float] | None:
    """Percentile bootstrap interval of ``sum(nums) / sum(dens)`` over scenes (resampled with replacement,
    seeded); None when no scene has a denominator."""
    n = len(nums)
    if n == 0 or dens.sum() == 0:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    num_s, den_s = nums[idx].sum(1), dens[idx].sum(1)
    stats = np.divide(num_s, den_s, out=np.full(resamples, np.nan), where=den_s > 0)
    alpha = (1 - level) / 2
    low, high = np.nanquantile(stats, [alpha, 1 - alpha])
    return [float(low), float(high)]


def summarize(
    rows: list[dict[str, Any]], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Dataset means. Object-level metrics (mIoU and its splits, layer PSNR/SSIM) are pooled over all true
    objects, the strict mIoU over true objects and unmatched predictions, hidden precision/recall over the
    pixels of all occluded objects, order accuracy over all judged pairs; recomposition PSNR, count accuracy
    and fg-ARI are averaged over scenes. ``<metric>_ci`` for ``CI_METRICS``: 95 % bootstrap over scenes."""
    objects = [o for r in rows for o in r["objects"]]
    out: dict[str, Any] = {
        "scenes": len(rows),
        "objects": len(objects),
        "occluded_objects": sum(o["occluded"] for o in objects),
        "small_objects": sum(o.get("small", False) for o in objects),
        "unmatched_predictions": sum(r["unmatched_pred"] for r in rows),
        "layer_psnr": _mean([o["psnr"] for o in objects]),
        "layer_ssim": _mean([o["ssim"] for o in objects]),
        "order_pairs": sum(r["order_pairs"] for r in rows),
    }
    for metric in POOLED:
        nums, dens = _scene_terms(rows, metric)
        out[metric] = float(nums.sum() / dens.sum()) if dens.sum() > 0 else None
    for metric in CI_METRICS:
        out[metric + "_ci"] = bootstrap_ci(*_scene_terms(rows, metric), resamples=resamples, seed=seed)
    out["ci"] = {"level": CI_LEVEL, "resamples": resamples, "over": "scenes", "method": "percentile"}
    return out
