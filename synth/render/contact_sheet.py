"""A contact sheet of rendered scenes to eyeball: one column per scene; rows are the photo, the background,
each layer over a checkerboard (front first) and the colourised instance map."""

from __future__ import annotations

import colorsys
import os

import numpy as np
from PIL import Image, ImageDraw

from core import schema
from core.images import over_checkerboard
from synth.render.scene_dir import RenderedScene

MIN_CELL = 160  # pixels: small renders are upscaled (nearest) so edges stay visible
GAP = 4


def colourise_ids(ids: np.ndarray) -> np.ndarray:
    """Background black; id k gets a distinct hue (golden-ratio steps)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for k in range(1, 256):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.75, 0.95)
        palette[k] = (round(255 * r), round(255 * g), round(255 * b))
    return palette[ids]


def contact_sheet(scenes: list[RenderedScene]) -> Image.Image:
    if not scenes:
        raise ValueError("contact sheet: no scenes")
    rows = max(s.num_layers for s in scenes) + 3
    h, w = scenes[0].image(schema.RGB).shape[:2]
    zoom = max(1, -(-MIN_CELL // max(h, w)))
    ch, cw = h * zoom, w * zoom
    label_h = 14
    sheet = Image.new(
        "RGB", (len(scenes) * (cw + GAP) + GAP, label_h + rows * (ch + GAP) + GAP), (40, 40, 40)
    )
    draw = ImageDraw.Draw(sheet)
    for col, scene in enumerate(scenes):
        x = GAP + col * (cw + GAP)
        psnr = scene.ground_truth.recomposition_psnr if scene.ground_truth is not None else None
        draw.text(
            (x, 1),
            f"{scene.scene_id} {psnr:.1f} dB" if psnr is not None else scene.scene_id,
            fill=(230, 230, 230),
        )
        cells = [scene.image(schema.RGB), scene.image(schema.BACKGROUND)]
        cells += [over_checkerboard(scene.image(schema.layer_name(k))) for k in range(scene.num_layers)]
        cells += [None] * (rows - 1 - len(cells)) + [colourise_ids(scene.image(schema.IDS))]
        for row, cell in enumerate(cells):
            if cell is None:
                continue
            image = Image.fromarray(cell).resize((cw, ch), Image.NEAREST)
            sheet.paste(image, (x, label_h + GAP + row * (ch + GAP)))
    return sheet


def write_contact_sheet(scenes: list[RenderedScene], path: str | os.PathLike) -> None:
    from core.atomic import atomic_path

    with atomic_path(path) as tmp:
        contact_sheet(scenes).save(tmp, format="PNG")
