"""Occlusion relations between objects from their amodal masks and the modal instance map.

Object ``i`` occludes object ``j`` where ``j``'s amodal mask is covered by pixels where ``i`` is visible
(``modal_ids == i + 1``). The occlusion graph has an edge front -> back; a topological sort of it is a
front-to-back layer order, which exists only when the graph is acyclic (no mutual/interlocking occlusion).
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np


def _visible(modal_ids: np.ndarray, n: int) -> np.ndarray:
    """One-hot modal masks ``[n, H, W]`` bool."""
    return np.asarray(modal_ids)[None] == np.arange(1, n + 1)[:, None, None]


def occlusion_matrix(amodal: np.ndarray, modal_ids: np.ndarray) -> np.ndarray:
    """``[N, N]`` int: (i, j) = pixels of j's amodal mask where i is visible (diagonal: i's modal area)."""
    amodal = np.asarray(amodal, dtype=bool)
    n = len(amodal)
    visible = _visible(modal_ids, n).reshape(n, -1).astype(np.int64)
    return visible @ amodal.reshape(n, -1).astype(np.int64).T


def occlusion_edges(
    amodal: np.ndarray, modal_ids: np.ndarray, min_pixels: int = 1
) -> list[tuple[int, int, int]]:
    """(front, back, pixels) for every ordered pair where ``front`` hides at least ``min_pixels`` of ``back``.

    ``amodal``: [N, H, W] bool per-object masks; ``modal_ids``: [H, W] int, 0 = background, i + 1 = object i.
    """
    counts = occlusion_matrix(amodal, modal_ids)
    n = len(counts)
    return [
        (i, j, int(counts[i, j])) for i in range(n) for j in range(n) if i != j and counts[i, j] >= min_pixels
    ]


def front_to_back_order(
    edges: Sequence[tuple[int, int, int]], n: int, tie_break_depths: Sequence[float]
) -> list[int] | None:
    """Object indices front to back consistent with every edge, or None when the occlusion graph has a cycle.

    Among objects the edges leave unordered, the one with the smaller ``tie_break_depths`` (nearer) comes
    first, then the lower index, so the order is deterministic.
    """
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from((front, back) for front, back, _ in edges)
    if not nx.is_directed_acyclic_graph(graph):
        return None
    depths = [float(d) for d in tie_break_depths]
    return list(nx.lexicographical_topological_sort(graph, key=lambda i: (depths[i], i)))


def visible_fractions(amodal: np.ndarray, modal_ids: np.ndarray) -> np.ndarray:
    """``[N]`` float: modal pixels / amodal pixels per object (0 where the amodal mask is empty)."""
    amodal = np.asarray(amodal, dtype=bool)
    n = len(amodal)
    area = amodal.reshape(n, -1).sum(axis=1)
    shown = (_visible(modal_ids, n) & amodal).reshape(n, -1).sum(axis=1)
    return np.where(area > 0, shown / np.maximum(area, 1), 0.0)
