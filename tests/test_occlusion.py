"""Occlusion edges, front-to-back order and visible fractions on hand-made masks."""

from __future__ import annotations

import numpy as np

from core.layers import modal_ids as layer_modal_ids
from synth.scene.occlusion import front_to_back_order, occlusion_edges, occlusion_matrix, visible_fractions


def _masks(*spans: tuple[int, int], width: int = 10) -> np.ndarray:
    out = np.zeros((len(spans), 1, width), dtype=bool)
    for k, (a, b) in enumerate(spans):
        out[k, 0, a:b] = True
    return out


def test_chain_gives_edges_and_order() -> None:
    amodal = _masks((0, 4), (2, 7), (5, 10))  # A in front of B in front of C
    ids = np.array([[1, 1, 1, 1, 2, 2, 2, 3, 3, 3]])
    edges = occlusion_edges(amodal, ids)
    assert edges == [(0, 1, 2), (1, 2, 2)]
    assert front_to_back_order(edges, 3, [5.0, 1.0, 0.5]) == [0, 1, 2]  # edges beat depths
    np.testing.assert_allclose(visible_fractions(amodal, ids), [1.0, 3 / 5, 3 / 5])


def test_cycle_returns_none() -> None:
    # Three pixels: A hides B at p0, B hides C at p1, C hides A at p2.
    amodal = np.array([[[1, 0, 1]], [[1, 1, 0]], [[0, 1, 1]]], dtype=bool)
    ids = np.array([[1, 2, 3]])
    edges = occlusion_edges(amodal, ids)
    assert sorted((f, b) for f, b, _ in edges) == [(0, 1), (1, 2), (2, 0)]
    assert front_to_back_order(edges, 3, [1.0, 2.0, 3.0]) is None


def test_unrelated_objects_are_ordered_by_depth_then_index() -> None:
    amodal = _masks((0, 2), (4, 6), (7, 9))
    ids = np.array([[1, 1, 0, 0, 2, 2, 0, 3, 3, 0]])
    assert occlusion_edges(amodal, ids) == []
    assert front_to_back_order([], 3, [3.0, 1.0, 2.0]) == [1, 2, 0]
    assert front_to_back_order([], 3, [1.0, 1.0, 0.5]) == [2, 0, 1]
    np.testing.assert_allclose(visible_fractions(amodal, ids), [1.0, 1.0, 1.0])


def test_min_pixels_and_hidden_object() -> None:
    amodal = _masks((0, 6), (5, 6), (0, 0))  # B entirely behind A; C empty
    ids = np.array([[1, 1, 1, 1, 1, 1, 0, 0, 0, 0]])
    assert occlusion_edges(amodal, ids) == [(0, 1, 1)]
    assert occlusion_edges(amodal, ids, min_pixels=2) == []
    np.testing.assert_allclose(visible_fractions(amodal, ids), [1.0, 0.0, 0.0])


def test_agrees_with_the_layer_stack_convention() -> None:
    # Random amodal masks stacked front to back: core.layers.modal_ids gives the ids, so every occlusion edge
    # must point from a lower (nearer) slot to a higher one, and the order is the identity.
    rng = np.random.default_rng(0)
    amodal = rng.random((4, 16, 16)) < 0.4
    ids = layer_modal_ids(amodal.astype(np.float32))
    counts = occlusion_matrix(amodal, ids)
    assert np.array_equal(np.diag(counts), (ids[None] == np.arange(1, 5)[:, None, None]).sum(axis=(1, 2)))
    edges = occlusion_edges(amodal, ids)
    assert edges and all(front < back for front, back, _ in edges)
    assert front_to_back_order(edges, 4, [9.0, 3.0, 2.0, 1.0]) == [0, 1, 2, 3]
