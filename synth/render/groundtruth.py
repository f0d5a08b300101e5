"""From a renderer's raw linear passes to the scene's files and derived ground truth (pure numpy, no bpy).

The renderer hands over, per scene, linear premultiplied RGBA renders (the photo, the background and one
amodal render per object, in spec order), the Object Index pass and the depth pass. This module decides the
front-to-back order (from the rendered amodal masks and the modal ids, via synth.scene.occlusion; ties by
depth), encodes the 8-bit files of core.schema, and measures how well the layers recomposite to the photo.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image

from core import schema
from core.camera import project_points, recorded_matrices
from core.groundtruth import CameraTruth, GroundTruth, ObjectTruth, OcclusionEdge
from core.images import psnr
from core.layers import ALPHA_CHANNEL, EMPTY_RGB, composite, modal_ids, to_channels_first
from core.policy import ALPHA_THRESHOLD, BACKGROUND_SLACK
from core.spec import SceneSpec
from synth.render.regions import mask_box
from synth.render.scene_dir import RenderedScene

NO_HIT_DEPTH = 1e9  # Blender writes ~1e10 where a camera ray hits nothing

# What the Blender renderer records in scene.json's ``ground_truth.render``, typed for readers that need a
# schema up front (the dataset card's Hugging Face features, synth.dataset.features).
RENDER_INFO_FIELDS: dict[str, Any] = {
    "engine": str,
    "samples": int,
    "denoise": bool,
    "seed": int,
    "view_transform": str,
    "look": str,
    "exposure": float,
    "gamma": float,
    "blender": str,
    "device": str,
    "layer_renders": int,
    "boxes": tuple[tuple[int, ...] | None, ...],  # per object: its projected region's box, or None
    "background_renders": int,
    "background": str,
}


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
    # an object covers a small part of the frame: encode only its box
    box = mask_box(premultiplied[..., ALPHA_CHANNEL] > 0)
    if box is None:
        return out
    x0, y0, x1, y1 = box
    crop = premultiplied[y0:y1, x0:x1]
    alpha = np.clip(crop[..., ALPHA_CHANNEL], 0.0, 1.0)
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


def recomposite(layers_rgba8: list[np.ndarray], bg_rgb8: np.ndarray) -> np.ndarray:
    """Composite 8-bit straight RGBA layers (front first) over the background with core.layers.composite."""
    bg = to_channels_first(bg_rgb8.astype(np.float64) / 255.0)
    if not layers_rgba8:
        return bg
    stack = to_channels_first(np.stack(layers_rgba8).astype(np.float64) / 255.0)
    return composite(stack, bg)


def object_depths(spec: SceneSpec) -> list[float]:
    """View-axis depth of each object's origin: the tie-break for the occlusion order."""
    locations = np.asarray([o.location for o in spec.objects], dtype=np.float64).reshape(-1, 3)
    return [float(d) for d in project_points(spec.camera, locations)[1]] if len(locations) else []


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

    ``photo``/``background``: linear RGBA [H, W, 4] (the background: the table as the file should show it
    where the layers hide it, see :func:`fit_background`); ``object_renders[i]``: premultiplied linear RGBA of
    ``spec.objects[i]`` alone (amodal); ``index_pass``: Blender pass_index per pixel; ``depth_pass``:
    view-axis depth, huge where nothing was hit.
    """
    n = len(spec.objects)
    height, width = photo.shape[:2]
    layers_spec = [straight_layer(r) for r in object_renders]
    alphas = (
        np.stack([lay[..., ALPHA_CHANNEL] for lay in layers_spec]).astype(np.float64) / 255.0
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
    rgb8 = srgb_encode(photo[..., :3])
    clean8 = srgb_encode(background[..., :3])
    layers = settle_edges([layers_spec[i] for i in order], rgb8, clean8)
    bg8 = fit_background(layers, rgb8, clean8)
    depth = np.where(depth_pass < NO_HIT_DEPTH, depth_pass, 0.0).astype(np.float32)

    recomposed = recomposite(layers, bg8)
    recomposition_psnr = psnr(recomposed, to_channels_first(rgb8.astype(np.float64) / 255.0))
    objects_px = ids > 0
    if n:
        stack_alphas = np.stack([lay[..., ALPHA_CHANNEL] for lay in layers]).astype(np.float64) / 255.0
        stack_ids = modal_ids(stack_alphas, ALPHA_THRESHOLD)
    else:
        stack_ids = ids
    agreement = float(np.mean(stack_ids[objects_px] == ids[objects_px])) if objects_px.any() else 1.0

    K, w2c = recorded_matrices(spec.camera)
    names = [o.name for o in spec.objects]
    objects_gt = []
    for k, i in enumerate(order):
        amodal_px = int(amodal[i].sum())
        modal_mask = ids == k + 1
        # Visible = shown in the photo AND inside the amodal mask: the index pass takes one sample per pixel
        # and alpha > ALPHA_THRESHOLD thresholds a coverage, so at anti-aliased edges the two can disagree by
        # a pixel.
        modal_px = int((modal_mask & amodal[i]).sum())
        objects_gt.append(
            ObjectTruth(
                name=names[i],
                layer=k,
                pass_index=int(spec.objects[i].pass_index),
                amodal_pixels=amodal_px,
                modal_pixels=modal_px,
                visible_fraction=modal_px / amodal_px if amodal_px else 0.0,
                amodal_box=_box(mask_box(amodal[i])),
                modal_box=_box(mask_box(modal_mask)),
            )
        )
    ground_truth = GroundTruth(
        order=tuple(names[i] for i in order),
        objects=tuple(objects_gt),
        occlusion_edges=tuple(OcclusionEdge(names[f], names[b], int(p)) for f, b, p in edges),
        dropped_edges=tuple(OcclusionEdge(names[f], names[b], int(p)) for f, b, p in dropped),
        camera=CameraTruth(
            K=tuple(tuple(row) for row in K.tolist()),
            world_to_camera=tuple(tuple(row) for row in w2c.tolist()),
            width=width,
            height=height,
        ),
        render=dict(render_info or {}),
        recomposition_psnr=recomposition_psnr,
        ids_stack_agreement=agreement,
    )
    files = {schema.RGB: png_bytes(rgb8), schema.BACKGROUND: png_bytes(bg8)}
    for k, layer in enumerate(layers):
        files[schema.layer_name(k)] = png_bytes(layer)
    files[schema.IDS] = png_bytes(ids)
    buf = io.BytesIO()
    np.save(buf, depth, allow_pickle=False)
    files[schema.DEPTH] = buf.getvalue()
    files[schema.SCENE] = scene_json(spec, ground_truth)
    return RenderedScene(scene_id=spec.scene_id, files=files, ground_truth=ground_truth)


def settle_edges(layers8: list[np.ndarray], photo8: np.ndarray, clean8: np.ndarray) -> list[np.ndarray]:
    """The layers (8-bit straight RGBA, front first) with the colours of their antialiased edge pixels set so
    that, over the clean table ``clean8``, they composite to the photo wherever a colour in [0, 1] can.

    At a silhouette pixel the photo mixes the object with the table *as the photo shows it* (darkened by
    the object's own contact shadow, which the clean table lacks) and mixes in linear light where the files
    composite in sRGB. Left to the background alone (:func:`fit_background`), that difference, divided by
    the transmittance, drew a dark or tinted one-pixel outline of every silhouette into bg.png. Here the
    edge pixel's layer colour takes it instead: the layer carries what belongs to its object, the background
    stays the clean table. A colour can move the composite by at most its weight times its 0..1 range, so
    at faint edges over a dark contact shadow some difference is left for :func:`fit_background`. Layers
    are settled front to back, each rounded to 8 bits before the next takes what is left (rounding
    included). Opaque and empty pixels keep their colour.
    """
    if not layers8:
        return layers8
    photo = np.asarray(photo8, np.float64)[..., :3] / 255.0
    clean = np.asarray(clean8, np.float64)[..., :3] / 255.0
    alphas = [np.asarray(lay, np.float64)[..., ALPHA_CHANNEL] / 255.0 for lay in layers8]
    weights, transmit = [], np.ones(photo.shape[:2])
    for alpha in alphas:
        weights.append(transmit * alpha)  # how much of layer k reaches the photo
        transmit = transmit * (1.0 - alpha)
    colours = [np.asarray(lay, np.float64)[..., :3] / 255.0 for lay in layers8]
    residual = photo - sum(w[..., None] * c for w, c in zip(weights, colours, strict=True))
    residual -= transmit[..., None] * clean
    out = []
    for lay, alpha, weight, colour in zip(layers8, alphas, weights, colours, strict=True):
        edge = (alpha > 0) & (alpha < 1) & (weight > 0)
        if not edge.any():
            out.append(lay)
            continue
        w = weight[edge][:, None]
        settled8 = np.round(np.clip(colour[edge] + residual[edge] / w, 0.0, 1.0) * 255.0)
        residual[edge] -= w * (settled8 / 255.0 - colour[edge])
        new = np.array(lay, copy=True)
        new[..., :3][edge] = settled8.astype(np.uint8)
        out.append(new)
    return out


def fit_background(layers8: list[np.ndarray], photo8: np.ndarray, prior8: np.ndarray) -> np.ndarray:
    """bg.png: the background closest to ``prior8`` (the clean table) for which the layers (8-bit straight
    RGBA, front first) composited over it stay within ``BACKGROUND_SLACK`` of the photo at every pixel.

    The composite is affine in the background, ``F + T * bg`` with ``T`` the layers' transmittance. Where an
    opaque layer covers a pixel (T = 0) the background is free and takes the prior; where nothing covers it
    (T = 1) it is the photo; at fractional alpha (antialiased edges, T in (0, 1)) it is the prior clamped to
    ``[(photo - F - s) / T, (photo - F + s) / T]``, the widest range that keeps the identity, so edges keep
    what the photo shows through them and the inside of a footprint is the table without the object.
    """
    if not layers8:
        return np.asarray(photo8)[..., :3].copy()
    stack = to_channels_first(np.stack(layers8).astype(np.float64) / 255.0)
    height, width = photo8.shape[:2]
    front = composite(stack, np.zeros((3, height, width)))
    transmit = composite(stack, np.ones((3, height, width))) - front
    photo = to_channels_first(np.asarray(photo8)[..., :3].astype(np.float64) / 255.0)
    prior = to_channels_first(np.asarray(prior8)[..., :3].astype(np.float64) / 255.0)
    visible = transmit > 1e-9
    safe = np.where(visible, transmit, 1.0)
    lo = np.where(visible, (photo - front - BACKGROUND_SLACK) / safe, -np.inf)
    hi = np.where(visible, (photo - front + BACKGROUND_SLACK) / safe, np.inf)
    bg = np.clip(np.clip(prior, lo, hi), 0.0, 1.0)
    return np.round(np.moveaxis(bg, 0, -1) * 255.0).astype(np.uint8)


def scene_json(spec: SceneSpec, ground_truth: GroundTruth) -> bytes:
    """scene.json: ``{"spec": SceneSpec.to_dict(), "ground_truth": GroundTruth.to_dict()}``, keys sorted
    (byte-stable)."""
    doc = {"spec": spec.to_dict(), "ground_truth": ground_truth.to_dict()}
    return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def _box(box: list[int] | None) -> tuple[int, int, int, int] | None:
    return None if box is None else (box[0], box[1], box[2], box[3])


DARK_FRACTION = 0.15  # a footprint pixel is a "black blob" below this fraction of the table nearby
RING_PX = (2, 8)  # the ring of table just around the objects: between these distances (pixels)


def footprint_dark_fraction(background8: np.ndarray, amodal: np.ndarray) -> float:
    """Fraction of background pixels under the objects' amodal masks (``amodal [N, H, W]`` bool, union) that
    are near-black: darker than ``DARK_FRACTION`` of the median brightness of the background in a ring just
    around the objects (table seen in the photo, so its brightness is what the table looks like there).
    Brightness: the mean of the 8-bit channels. 0.0 when no object covers a pixel."""
    from scipy import ndimage

    under = np.asarray(amodal, dtype=bool).any(axis=0) if np.ndim(amodal) == 3 else np.asarray(amodal, bool)
    if not under.any():
        return 0.0
    brightness = np.asarray(background8, dtype=np.float64)[..., :3].mean(axis=-1)
    inner = ndimage.binary_dilation(under, iterations=RING_PX[0])
    ring = ndimage.binary_dilation(under, iterations=RING_PX[1]) & ~inner
    reference = float(np.median(brightness[ring])) if ring.any() else float(np.median(brightness))
    return float(np.mean(brightness[under] < DARK_FRACTION * reference))
