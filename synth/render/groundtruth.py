"""From a renderer's raw linear passes to the scene's files and derived ground truth (pure numpy, no bpy).

The renderer hands over, per scene, linear premultiplied RGBA renders (the photo, the background and one
amodal render per object, in spec order), the Object Index pass and the depth pass. This module decides the
front-to-back order (from the rendered amodal masks and the modal ids, via synth.occlusion; ties by depth),
encodes the 8-bit files of synth.schema, and measures how well the layers recomposite to the photo.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
from PIL import Image

from cobl.core import schema
from cobl.core.layers import EMPTY_RGB, composite, modal_ids, to_channels_first
from cobl.core.spec import CameraSpec, SceneSpec
from synth.render.scene_dir import RenderedScene

ALPHA_THRESHOLD = 0.5  # a pixel belongs to an object's (amodal) mask when its alpha exceeds this
NO_HIT_DEPTH = 1e9  # Blender writes ~1e10 where a camera ray hits nothing
PSNR_CAP = 100.0  # identical images: report a finite number so scene.json stays valid JSON


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear [0, 1] -> 8-bit sRGB (Blender's "Standard" view transform, no dither)."""
    x = np.clip(np.asarray(linear, dtype=np.float64), 0.0, 1.0)
    srgb = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)
    return np.round(srgb * 255.0).astype(np.uint8)


def straight_layer(premultiplied: np.ndarray) -> np.ndarray:
    """Premultiplied linear RGBA [H, W, 4] -> straight-alpha 8-bit sRGB RGBA; EMPTY_RGB where alpha is 0."""
    height, width = premultiplied.shape[:2]
    out = np.zeros((height, width, 4), dtype=np.uint8)
    out[..., :3] = np.round(np.asarray(EMPTY_RGB) * 255.0).astype(np.uint8)
    box = mask_box(premultiplied[..., 3] > 0)  # an object covers a small part of the frame: encode only that
    if box is None:
        return out
    x0, y0, x1, y1 = box
    crop = premultiplied[y0:y1, x0:x1]
    alpha = np.clip(crop[..., 3], 0.0, 1.0)
    safe = np.where(alpha > 0, alpha, 1.0)[..., None]
    rgb = srgb_encode(crop[..., :3] / safe)
    alpha8 = np.round(alpha * 255.0).astype(np.uint8)
    rgb[alpha8 == 0] = out[0, 0, :3]
    out[y0:y1, x0:x1] = np.concatenate([rgb, alpha8[..., None]], axis=-1)
    return out


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def camera_matrices(camera: CameraSpec) -> tuple[np.ndarray, np.ndarray]:
    """(K [3, 3], world_to_camera [4, 4]); world_to_camera in the spec's OpenGL convention (looks down -z)."""
    return np.asarray(camera.intrinsics(), dtype=np.float64), np.linalg.inv(np.asarray(camera.cam_to_world))


def project(camera: CameraSpec, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x right, y down, [N, 2]) and view-axis depth ([N], > 0 in front) of world points."""
    K, w2c = camera_matrices(camera)
    pts = np.asarray(points_world, dtype=np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -pts[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = K[0, 0] * pts[:, 0] / depth + K[0, 2]
        y = -K[1, 1] * pts[:, 1] / depth + K[1, 2]
    return np.stack([x, y], axis=1), depth


def pixel_box(
    points_px: np.ndarray, width: int, height: int, margin: int
) -> tuple[int, int, int, int] | None:
    """Integer box [x0, y0, x1, y1) around points, grown by ``margin``, clipped; None if empty."""
    x0 = max(0, math.floor(points_px[:, 0].min()) - margin)
    y0 = max(0, math.floor(points_px[:, 1].min()) - margin)
    x1 = min(width, math.ceil(points_px[:, 0].max()) + 1 + margin)
    y1 = min(height, math.ceil(points_px[:, 1].max()) + 1 + margin)
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def union_box(boxes: list[tuple[int, int, int, int] | None]) -> tuple[int, int, int, int] | None:
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


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images with values in [0, 1]."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return PSNR_CAP if mse <= 1e-10 else min(PSNR_CAP, 10.0 * math.log10(1.0 / mse))


def recomposite(layers_rgba8: list[np.ndarray], bg_rgb8: np.ndarray) -> np.ndarray:
    """Composite 8-bit straight RGBA layers (front first) over the background with cobl.layers.composite."""
    bg = to_channels_first(bg_rgb8.astype(np.float64) / 255.0)
    if not layers_rgba8:
        return bg
    stack = to_channels_first(np.stack(layers_rgba8).astype(np.float64) / 255.0)
    return composite(stack, bg)


def object_depths(spec: SceneSpec) -> list[float]:
    """View-axis depth of each object's origin: the tie-break for the occlusion order."""
    locations = np.asarray([o.location for o in spec.objects], dtype=np.float64).reshape(-1, 3)
    return [float(d) for d in project(spec.camera, locations)[1]] if len(locations) else []


def ordering(spec: SceneSpec, amodal: np.ndarray, modal_spec_ids: np.ndarray) -> tuple[list[int], list, list]:
    """(front-to-back spec indices, kept occlusion edges (acyclic), edges dropped to break cycles).

    The Object Index pass is a point sample per pixel while the masks threshold an antialiased alpha, so at a
    boundary between two objects a pixel or two can claim the back object occludes the front one. Cycles are
    broken by dropping their weakest edge (fewest pixels) until the graph is acyclic.
    """
    import networkx as nx

    from synth.scene.occlusion import front_to_back_order, occlusion_edges

    n = len(spec.objects)
    edges = occlusion_edges(amodal, modal_spec_ids)
    depths = object_depths(spec)
    kept, dropped = list(edges), []
    while (order := front_to_back_order(kept, n, depths)) is None:
        graph = nx.DiGraph((f, b) for f, b, _ in kept)
        cycle = set(nx.find_cycle(graph))
        weakest = min((e for e in kept if (e[0], e[1]) in cycle), key=lambda e: (e[2], e[0], e[1]))
        kept.remove(weakest)
        dropped.append(weakest)
    return list(order), kept, dropped


def assemble(
    spec: SceneSpec,
    photo: np.ndarray,
    background: np.ndarray,
    object_renders: list[np.ndarray],
    index_pass: np.ndarray,
    depth_pass: np.ndarray,
    render_info: dict[str, Any] | None = None,
) -> RenderedScene:
    """Encode the files of one scene and derive its ground truth.

    ``photo``/``background``: linear RGBA [H, W, 4]; ``object_renders[i]``: premultiplied linear RGBA of
    ``spec.objects[i]`` alone (amodal); ``index_pass``: Blender pass_index per pixel; ``depth_pass``:
    view-axis depth, huge where nothing was hit.
    """
    n = len(spec.objects)
    height, width = photo.shape[:2]
    layers_spec = [straight_layer(r) for r in object_renders]
    alphas = (
        np.stack([lay[..., 3] for lay in layers_spec]).astype(np.float64) / 255.0
        if n
        else np.zeros((0, height, width))
    )
    amodal = alphas > ALPHA_THRESHOLD
    pass_to_spec = {int(o.pass_index): i + 1 for i, o in enumerate(spec.objects)}
    index_int = np.rint(index_pass).astype(np.int64)
    modal_spec = np.zeros((height, width), dtype=np.int64)
    for pass_index, label in pass_to_spec.items():
        modal_spec[index_int == pass_index] = label
    order, edges, dropped = ordering(spec, amodal, modal_spec) if n else ([], [], [])

    spec_to_layer = np.zeros(n + 1, dtype=np.int64)
    for k, i in enumerate(order):
        spec_to_layer[i + 1] = k + 1
    ids = spec_to_layer[modal_spec].astype(np.uint8)
    layers = [layers_spec[i] for i in order]
    rgb8 = srgb_encode(photo[..., :3])
    bg8 = srgb_encode(background[..., :3])
    depth = np.where(depth_pass < NO_HIT_DEPTH, depth_pass, 0.0).astype(np.float32)

    recomposed = recomposite(layers, bg8)
    recomposition_psnr = psnr(recomposed, to_channels_first(rgb8.astype(np.float64) / 255.0))
    objects_px = ids > 0
    stack_ids = modal_ids(np.stack([lay[..., 3] for lay in layers]).astype(np.float64) / 255.0) if n else ids
    agreement = float(np.mean(stack_ids[objects_px] == ids[objects_px])) if objects_px.any() else 1.0

    K, w2c = camera_matrices(spec.camera)
    names = [o.name for o in spec.objects]
    objects_gt = []
    for k, i in enumerate(order):
        amodal_px = int(amodal[i].sum())
        modal_mask = ids == k + 1
        # Visible = shown in the photo AND inside the amodal mask: the index pass takes one sample per pixel
        # and alpha > 0.5 thresholds a coverage, so at anti-aliased edges the two can disagree by a pixel.
        modal_px = int((modal_mask & amodal[i]).sum())
        objects_gt.append(
            {
                "name": names[i],
                "layer": k,
                "pass_index": int(spec.objects[i].pass_index),
                "amodal_pixels": amodal_px,
                "modal_pixels": modal_px,
                "visible_fraction": modal_px / amodal_px if amodal_px else 0.0,
                "amodal_box": mask_box(amodal[i]),
                "modal_box": mask_box(modal_mask),
            }
        )
    ground_truth = {
        "order": [names[i] for i in order],
        "objects": objects_gt,
        # an acyclic graph consistent with "order"; the edges dropped to break cycles are listed separately
        "occlusion_edges": [{"front": names[f], "back": names[b], "pixels": int(p)} for f, b, p in edges],
        "dropped_edges": [{"front": names[f], "back": names[b], "pixels": int(p)} for f, b, p in dropped],
        "camera": {
            "K": K.tolist(),
            "world_to_camera": w2c.tolist(),
            "width": width,
            "height": height,
            "convention": "world_to_camera maps to OpenGL camera axes (x right, y up, looking down -z)",
        },
        "render": dict(render_info or {}),
        "recomposition_psnr": recomposition_psnr,
        "ids_stack_agreement": agreement,
    }
    files = {schema.RGB: png_bytes(rgb8), schema.BACKGROUND: png_bytes(bg8)}
    for k, layer in enumerate(layers):
        files[schema.layer_name(k)] = png_bytes(layer)
    files[schema.IDS] = png_bytes(ids)
    buf = io.BytesIO()
    np.save(buf, depth, allow_pickle=False)
    files[schema.DEPTH] = buf.getvalue()
    files[schema.SCENE] = scene_json(spec, ground_truth)
    return RenderedScene(scene_id=spec.scene_id, files=files, ground_truth=ground_truth)


def scene_json(spec: SceneSpec, ground_truth: dict[str, Any]) -> bytes:
    """scene.json: ``{"spec": SceneSpec.to_dict(), "ground_truth": {...}}``, keys sorted (byte-stable)."""
    doc = {"spec": spec.to_dict(), "ground_truth": ground_truth}
    return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


BAND_ROWS = 40  # at most this many candidate cut positions per box in cover_boxes


def cover_boxes(mask: np.ndarray, overhead_px: float) -> list[tuple[int, int, int, int]]:
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


def _box_area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _cost(boxes: list[tuple[int, int, int, int]], overhead_px: float) -> float:
    return sum(_box_area(b) for b in boxes) + overhead_px * len(boxes)


def _bands(mask: np.ndarray, overhead_px: float) -> list[tuple[int, int, int, int]]:
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
