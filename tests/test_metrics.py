"""Matching and metrics on hand-made layer stacks with known answers."""

import numpy as np
import pytest

from core.layers import composite
from core.policy import PSNR_CAP_DB
from infer.baselines import visible_only_layers
from infer.metrics import evaluate_scene, iou_matrix, match_layers, summarize, visible_fractions


def _rect_layer(h, w, box, colour):
    y0, y1, x0, x1 = box
    layer = np.zeros((4, h, w), np.float32)
    layer[:3] = 0.5
    layer[:3, y0:y1, x0:x1] = np.asarray(colour, np.float32)[:, None, None]
    layer[3, y0:y1, x0:x1] = 1.0
    return layer


def _scene():
    """Three objects front to back: 0 hides part of 1, 2 is apart; one empty slot at the back."""
    h = w = 16
    layers = np.stack(
        [
            _rect_layer(h, w, (2, 8, 2, 8), (1.0, 0.0, 0.0)),
            _rect_layer(h, w, (5, 12, 5, 12), (0.0, 1.0, 0.0)),
            _rect_layer(h, w, (12, 16, 0, 4), (0.0, 0.0, 1.0)),
            np.concatenate([np.full((3, h, w), 0.5, np.float32), np.zeros((1, h, w), np.float32)]),
        ]
    )
    background = np.full((3, h, w), 0.2, np.float32)
    return layers, background, composite(layers, background)


def test_iou_matrix_known_values():
    a = np.zeros((1, 4, 4), bool)
    a[0, :2] = True  # 8 pixels
    b = np.zeros((2, 4, 4), bool)
    b[0, :1] = True  # 4 pixels inside a
    assert np.allclose(iou_matrix(a, b), [[0.5, 0.0]])


def test_perfect_prediction_scores_one():
    layers, bg, photo = _scene()
    row = evaluate_scene(layers[:3], bg, layers, photo)
    assert row["num_true"] == 3 and row["count_accuracy"] == 1.0
    assert row["amodal_miou"] == pytest.approx(1.0)
    assert row["layer_psnr"] == PSNR_CAP_DB and row["layer_ssim"] == pytest.approx(1.0)
    assert row["recomposition_psnr"] == PSNR_CAP_DB
    assert row["order_pairs"] == 1 and row["order_accuracy"] == 1.0
    # Object 1 is partly hidden by object 0: 9 of its 49 pixels.
    vis = [o["visible_fraction"] for o in row["objects"]]
    assert vis == pytest.approx([1.0, 40 / 49, 1.0])
    assert row["amodal_miou_occluded"] == pytest.approx(1.0)


def test_swapped_order_gives_order_accuracy_zero():
    layers, bg, photo = _scene()
    swapped = layers[[1, 0, 2]]
    row = evaluate_scene(swapped, bg, layers, photo)
    assert [o["pred_slot"] for o in row["objects"]] == [1, 0, 2]
    assert row["amodal_miou"] == pytest.approx(1.0)
    assert row["order_accuracy"] == 0.0
    assert row["recomposition_psnr"] < 30


def test_missing_object_counts_wrong_and_iou_zero():
    layers, bg, photo = _scene()
    row = evaluate_scene(layers[[0, 1]], bg, layers, photo)
    assert row["num_pred"] == 2 and row["count_accuracy"] == 0.0
    assert row["objects"][2]["pred_slot"] is None and row["objects"][2]["iou"] == 0.0
    assert row["amodal_miou"] == pytest.approx(2 / 3)


def test_half_mask_iou_and_matching_ignores_disjoint():
    layers, _, _ = _scene()
    pred = layers[:1].copy()
    pred[0, 3, 2:8, 5:8] = 0  # keep the left half (3 of 6 columns)
    matches = match_layers(pred[:, 3], layers[:, 3])
    assert len(matches) == 1 and matches[0].true == 0 and matches[0].iou == pytest.approx(0.5)
    far = np.zeros((1, 16, 16), np.float32)
    far[0, 0, 15] = 1  # touches no true object
    assert match_layers(far, layers[:3, 3]) == []


def test_masked_psnr_only_looks_inside_true_mask():
    layers, bg, photo = _scene()
    pred = layers[:3].copy()
    pred[0, :3, 0, 0] = 0.0  # outside every true mask: no effect
    row = evaluate_scene(pred, bg, layers, photo)
    assert row["objects"][0]["psnr"] == PSNR_CAP_DB
    pred[0, 0, 2:8, 2:8] = 0.9  # red 1.0 -> 0.9 inside the mask: MSE = 0.01 / 3
    row = evaluate_scene(pred, bg, layers, photo)
    assert row["objects"][0]["psnr"] == pytest.approx(10 * np.log10(3 / 0.01), abs=1e-3)
    assert row["objects"][0]["ssim"] < 1.0


def test_visible_only_baseline_recomposes_and_loses_hidden_part():
    layers, bg, photo = _scene()
    vis_layers, vis_bg = visible_only_layers(photo, layers)
    assert len(vis_layers) == 3
    assert np.allclose(composite(vis_layers, vis_bg), photo)
    row = evaluate_scene(vis_layers, vis_bg, layers, photo)
    assert row["amodal_miou_unoccluded"] == pytest.approx(1.0)
    assert row["amodal_miou_occluded"] == pytest.approx(40 / 49)


def test_summary_pools_objects_and_pairs():
    layers, bg, photo = _scene()
    rows = [evaluate_scene(layers[:3], bg, layers, photo), evaluate_scene(layers[[0, 1]], bg, layers, photo)]
    s = summarize(rows)
    assert s["scenes"] == 2 and s["objects"] == 6 and s["occluded_objects"] == 2
    assert s["amodal_miou"] == pytest.approx(5 / 6)
    assert s["count_accuracy"] == 0.5 and s["order_pairs"] == 2 and s["order_accuracy"] == 1.0


def test_visible_fractions_empty_slot_is_zero():
    layers, _, _ = _scene()
    assert visible_fractions(layers[:, 3])[3] == 0.0


# ------------------------------------------------------------------ metrics that cannot be flattered
def test_strict_miou_charges_an_extra_and_a_duplicated_layer():
    layers, bg, photo = _scene()
    exact = evaluate_scene(layers[:3], bg, layers, photo)
    assert exact["amodal_miou_strict"] == pytest.approx(1.0) and exact["unmatched_pred"] == 0
    extra = _rect_layer(16, 16, (0, 2, 10, 16), (1.0, 1.0, 0.0))  # 12 pixels where no object is
    duplicate = layers[1].copy()  # object 1 a second time, behind everything
    pred = np.stack([layers[0], layers[1], layers[2], extra, duplicate])
    row = evaluate_scene(pred, bg, layers, photo)
    # Every true object is still matched exactly, so the plain mIoU does not see the two extra layers ...
    assert row["amodal_miou"] == pytest.approx(1.0)
    # ... the strict one charges both: 3 matched IoUs of 1 over 3 true objects + 2 unmatched predictions.
    assert row["unmatched_pred"] == 2 and row["amodal_miou_strict"] == pytest.approx(3 / 5)
    assert row["count_accuracy"] == 0.0
    s = summarize([exact, row])
    assert s["amodal_miou_strict"] == pytest.approx(6 / 8) and s["unmatched_predictions"] == 2


def test_hidden_precision_and_recall_on_an_occluded_pair():
    """Object 1 (7x7 = 49 px) is hidden behind object 0 on rows/cols 5-7 (3x3 = 9 px)."""
    layers, bg, photo = _scene()
    perfect = evaluate_scene(layers[:3], bg, layers, photo)
    assert perfect["hidden_true"] == 9 and perfect["hidden_recall"] == 1.0
    assert perfect["hidden_precision"] == 1.0
    # The visible-only baseline fills in nothing: recall 0, precision undefined (no pixel guessed).
    vis_layers, vis_bg = visible_only_layers(photo, layers)
    baseline = evaluate_scene(vis_layers, vis_bg, layers, photo)
    assert baseline["hidden_recall"] == 0.0 and baseline["hidden_precision"] is None
    # Fill in only row 5 of the hidden corner (3 px) and spill 6 px onto the background above object 1.
    guess = vis_layers.copy()
    guess[1, 3, 5, 5:8] = 1.0
    guess[1, 3, 3:5, 9:12] = 1.0
    row = evaluate_scene(guess, vis_bg, layers, photo)
    assert row["hidden_hit"] == 3 and row["hidden_pred"] == 9
    assert row["hidden_recall"] == pytest.approx(3 / 9) and row["hidden_precision"] == pytest.approx(3 / 9)


def test_fg_ari_is_one_for_the_true_partition_and_drops_when_objects_merge():
    layers, bg, photo = _scene()
    assert evaluate_scene(layers[:3], bg, layers, photo)["fg_ari"] == pytest.approx(1.0)
    merged = layers[:3].copy()
    merged[0, 3] = np.maximum(merged[0, 3], merged[1, 3])  # objects 0 and 1 in one layer
    merged = merged[[0, 2]]
    assert evaluate_scene(merged, bg, layers, photo)["fg_ari"] < 0.5


def _scene_with_a_speck():
    """The three-object scene plus a true object under the 2 % rule: 4 px (1.6 % of 256) in slot 0, in front
    of object 1 (the green one), which it partly hides."""
    layers, bg, _ = _scene()
    speck = _rect_layer(16, 16, (10, 12, 9, 11), (1.0, 1.0, 0.0))
    stack = np.concatenate([speck[None], layers[:3]])
    return stack, bg, composite(stack, bg)


def test_small_object_rule_holds_on_both_sides():
    layers, bg, photo = _scene()
    speck = _rect_layer(16, 16, (0, 1, 15, 16), (1.0, 1.0, 1.0))  # 1 px = 0.4 % of the image
    row = evaluate_scene(np.concatenate([layers[:3], speck[None]]), bg, layers, photo)
    assert row["num_pred"] == 3 and row["unmatched_pred"] == 0 and row["count_accuracy"] == 1.0
    # A true object under the rule is ignored: not a miss, not in the count or the mIoU denominator.
    stack, bg, photo = _scene_with_a_speck()
    without = evaluate_scene(stack[1:], bg, stack, photo)
    assert without["small_objects_ignored"] == 1 and without["ignored_objects"] == [0]
    assert without["num_true"] == 3 and without["count_accuracy"] == 1.0
    assert without["amodal_miou"] == pytest.approx(1.0)
    assert [o["true_slot"] for o in without["objects"]] == [1, 2, 3]
    # Under the old convention it would have been charged: with no rule it is an occluded-free miss.
    assert evaluate_scene(stack[1:], bg, stack, photo, min_area=0.0)["amodal_miou"] == pytest.approx(3 / 4)


def test_a_prediction_of_an_ignored_object_is_neither_credited_nor_charged():
    stack, bg, photo = _scene_with_a_speck()
    grown = stack.copy()
    grown[0, 3, 9:12, 8:12] = 1.0  # the speck predicted as 12 px (4.7 %): above the rule, so reported
    row = evaluate_scene(grown, bg, stack, photo)
    assert row["neutral_pred"] == 1 and row["unmatched_pred"] == 0 and row["num_pred"] == 3
    assert row["count_accuracy"] == 1.0 and row["amodal_miou_strict"] == pytest.approx(1.0)


def test_perfect_prediction_scores_one_on_every_metric_with_an_ignored_object():
    """The ground truth itself fed through the metric, on a scene holding an object under the rule."""
    stack, bg, photo = _scene_with_a_speck()
    row = evaluate_scene(stack, bg, stack, photo)
    assert row["small_objects_ignored"] == 1 and row["num_occluded"] == 1
    summary = summarize([row, evaluate_scene(stack, bg, stack, photo, min_area=0.0)])
    for name in ("amodal_miou", "amodal_miou_occluded", "amodal_miou_unoccluded", "amodal_miou_strict",
                 "amodal_miou_occluded_min_area_0", "hidden_recall", "hidden_precision", "fg_ari",
                 "order_accuracy", "count_accuracy"):
        assert row[name] if name in row else True
        assert summary[name] == pytest.approx(1.0), name
    assert row["layer_psnr"] == PSNR_CAP_DB and row["layer_ssim"] == pytest.approx(1.0)


def test_the_oracle_keeps_its_exact_sliver():
    """Object 1 (49 px, 19 %) hidden but for 4 px (1.6 %, under the rule) behind a large front object: the
    visible-only oracle's exact sliver is scored (IoU 4/49), not thrown away by the rule."""
    h = w = 16
    front = _rect_layer(h, w, (2, 16, 2, 16), (1.0, 0.0, 0.0))
    front[3, 14:, 14:] = 0  # a 2x2 notch in the front object's corner
    back = _rect_layer(h, w, (9, 16, 9, 16), (0.0, 1.0, 0.0))  # 7x7, visible only through the notch
    layers = np.stack([front, back])
    bg = np.full((3, h, w), 0.2, np.float32)
    photo = composite(layers, bg)
    vis_layers, vis_bg = visible_only_layers(photo, layers)
    exact = evaluate_scene(vis_layers, vis_bg, layers, photo, filter_predictions=False)
    assert exact["objects"][1]["iou"] == pytest.approx(4 / 49) and exact["count_accuracy"] == 1.0
    filtered = evaluate_scene(vis_layers, vis_bg, layers, photo)
    assert filtered["objects"][1]["iou"] == 0.0 and filtered["count_accuracy"] == 0.0


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    layers, bg, photo = _scene()
    rows = [evaluate_scene(layers[: 1 + i % 3], bg, layers, photo) for i in range(30)]
    s = summarize(rows)
    low, high = s["amodal_miou_ci"]
    assert low < s["amodal_miou"] < high and 0 <= low and high <= 1
    assert summarize(rows)["amodal_miou_ci"] == s["amodal_miou_ci"]
    assert summarize(rows[:1])["count_accuracy_ci"] == [0.0, 0.0]
    for name in ("amodal_miou_occluded", "amodal_miou_strict", "hidden_recall", "fg_ari", "order_accuracy"):
        assert name + "_ci" in s
