"""Region planning for the renderer: which pixels an object's or the background's render must cover, and the
few rectangles (render borders) that cover them cheaply. Pure numpy/scipy, no bpy.

The renderer (synth.render.blender.renderer) uses these to render only what the photo does not already
determine; groundtruth.py uses ``mask_box`` for the boxes it records.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from core.camera import NEAR, project_points
from core.spec import SceneSpec, object_to_world

if TYPE_CHECKING:
    import trimesh

Box = tuple[int, int, int, int]


def projected_regions(spec: SceneSpec, meshes: list[trimesh.Trimesh], margin: int) -> list[np.ndarray]:
    """Per object, the [H, W] pixels its amodal render can touch: the convex hull of its projected vertices
    grown by ``margin`` pixels (the whole frame for an object reaching behind the camera)."""
    width, height = spec.camera.width, spec.camera.height
    regions = []
    for obj, mesh in zip(spec.objects, meshes, strict=True):
        m = np.asarray(object_to_world(obj))
        xy, depth = project_points(spec.camera, np.asarray(mesh.vertices) @ m[:3, :3].T + m[:3, 3])
        if np.any(depth <= NEAR):
            regions.append(np.ones((height, width), dtype=bool))
        else:
            regions.append(hull_mask(xy, width, height, margin))
    return regions


def pixel_box(points_px: np.ndarray, width: int, height: int, margin: int) -> Box | None:
    """Integer box [x0, y0, x1, y1) around points, grown by ``margin``, clipped; None if empty."""
    x0 = max(0, math.floor(points_px[:, 0].min()) - margin)
    y0 = max(0, math.floor(points_px[:, 1].min()) - margin)
    x1 = min(width, math.ceil(points_px[:, 0].max()) + 1 + margin)
    y1 = min(height, math.ceil(points_px[:, 1].max()) + 1 + margin)
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def union_box(boxes: list[Box | None]) -> Box | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def hull_mask(points_px: np.ndarray, width: int, height: int, margin: int) -> np.ndarray:
    """[H, W] bool: pixels whose square touches the convex hull of ``points_px`` (x right, y down), grown by
    ``margin`` pixels. A mesh's projection lies inside its projected vertices' hull, so this is a
    conservative silhouette; degenerate (flat) hulls fall back to the points' box."""
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError

    mask = np.zeros((height, width), dtype=bool)
    box = pixel_box(points_px, width, height, margin)
    if box is None:
        return mask
    x0, y0, x1, y1 = box
    try:
        equations = ConvexHull(points_px).equations  # rows (nx, ny, c): inside where nx*x + ny*y + c <= 0
    except (QhullError, ValueError):
        mask[y0:y1, x0:x1] = True
        return mask
    ys, xs = np.mgrid[y0:y1, x0:x1]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
    # A pixel square meets a half-plane iff its centre is within half its extent along the normal.
    reach = 0.5 * (np.abs(equations[:, 0]) + np.abs(equations[:, 1])) + 1e-6
    inside = np.all(centres @ equations[:, :2].T + equations[:, 2] <= reach, axis=1)
    mask[y0:y1, x0:x1] = inside.reshape(y1 - y0, x1 - x0)
    if margin > 0:
        mask = ndimage.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool), iterations=margin)
    return mask


def mask_box(mask: np.ndarray) -> list[int] | None:
    """Tight [x0, y0, x1, y1) of a boolean mask, None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


BAND_ROWS = 40  # at most this many candidate cut positions per box in cover_boxes


def cover_boxes(mask: np.ndarray, overhead_px: float) -> list[Box]:
    """Boxes [x0, y0, x1, y1) whose union covers every True pixel of ``mask``, chosen to keep
    (rendered area + ``overhead_px`` per box) small: a render border is one rectangle, and a render call has
    a fixed cost worth about ``overhead_px`` pixels.

    Hand-written heuristic (no library does this): connected components are merged while one box over
    them costs no more than separate boxes; each merged box is then cut into row (or column) bands, each
    band trimmed to the mask's extent, the cuts chosen by dynamic programming.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels) if s]
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                union = union_box([boxes[i], boxes[j]])
                if _box_area(union) <= _box_area(boxes[i]) + _box_area(boxes[j]) + overhead_px:
                    boxes[i] = union
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    result = []
    for x0, y0, x1, y1 in boxes:
        sub = mask[y0:y1, x0:x1]
        rows = _bands(sub, overhead_px)
        cols = _bands(sub.T, overhead_px)
        if _cost(cols, overhead_px) < _cost(rows, overhead_px):
            rows = [(b[1], b[0], b[3], b[2]) for b in cols]
        result += [(bx0 + x0, by0 + y0, bx1 + x0, by1 + y0) for bx0, by0, bx1, by1 in rows]
    return result


def _box_area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _cost(boxes: list[Box], overhead_px: float) -> float:
    return sum(_box_area(b) for b in boxes) + overhead_px * len(boxes)


def _bands(mask: np.ndarray, overhead_px: float) -> list[Box]:
    """Optimal cut of ``mask``'s rows into bands (dynamic programming over the cut rows). A band covers
    its rows' True pixels with one box, or with two when skipping its widest run of empty columns (the
    inside of a ring-shaped mask) saves more than a render costs. Cuts fall on every ``step``-th row, so
    that the O(rows^2 * columns) search stays a few ms on large masks."""
    step = -(-mask.shape[0] // BAND_ROWS)
    if step > 1:
        pad = -mask.shape[0] % step
        grouped = np.pad(mask, ((0, pad), (0, 0))).reshape(-1, step, mask.shape[1]).any(axis=1)
        return [
            (x0, y0 * step, x1, min(y1 * step, mask.shape[0]))
            for x0, y0, x1, y1 in _bands(grouped, overhead_px / step)
        ]
    h, w = mask.shape
    filled = mask.any(axis=1)
    cols = np.arange(w)
    best = np.full(h + 1, np.inf)
    best[0] = 0.0
    # choice[end]: first row of the band that ends before row ``end``; -1 where an empty row is skipped
    choice = np.zeros(h + 1, dtype=np.int64)
    for end in range(1, h + 1):
        if not filled[end - 1]:
            best[end], choice[end] = best[end - 1], -1
            continue
        starts = np.arange(end - 1, -1, -1)  # band rows [start, end)
        heights = end - starts
        used = np.logical_or.accumulate(mask[end - 1 :: -1], axis=0)  # [start, column]: any True in band
        left = np.where(used.any(axis=1), np.argmax(used, axis=1), w)
        right = np.where(used.any(axis=1), w - np.argmax(used[:, ::-1], axis=1), 0)
        costs = best[starts] + heights * np.maximum(right - left, 0) + overhead_px
        split = heights * _widest_gap(used, cols) - overhead_px
        costs -= np.maximum(split, 0.0)
        k = int(np.argmin(costs))
        best[end], choice[end] = costs[k], starts[k]
    bands = []
    end = h
    while end > 0:
        start = int(choice[end])
        if start < 0:
            end -= 1
            continue
        used = mask[start:end].any(axis=0)
        xs = np.nonzero(used)[0]
        x0, x1 = int(xs[0]), int(xs[-1]) + 1
        gap_len, gap_start = _widest_gap(used[None], cols, where=True)
        if (end - start) * int(gap_len[0]) > overhead_px:
            g0, g1 = int(gap_start[0]), int(gap_start[0] + gap_len[0])
            bands += [(g1, start, x1, end), (x0, start, g0, end)]
        else:
            bands.append((x0, start, x1, end))
        end = start
    return bands[::-1]


def _widest_gap(used: np.ndarray, cols: np.ndarray, where: bool = False):
    """Per row of ``used`` [n, w], the length of the longest run of False between two Trues (and, with
    ``where``, the column it starts at)."""
    last = np.maximum.accumulate(np.where(used, cols, -1), axis=1)  # last True at or left of each column
    nxt = np.minimum.accumulate(np.where(used, cols, len(cols))[:, ::-1], axis=1)[:, ::-1]  # next True
    gaps = np.where((~used) & (last >= 0) & (nxt < len(cols)), nxt - last - 1, 0)
    if not where:
        return gaps.max(axis=1) if gaps.size else np.zeros(len(used))
    k = np.argmax(gaps, axis=1)
    rows = np.arange(len(used))
    return gaps[rows, k], last[rows, k] + 1
