"""Photos in, layer files out: loading, fitting any image size to the model's square input and back, writing.

Fitting keeps the aspect ratio: the longer side is resized to the model resolution and the shorter one is
padded by repeating the edge pixels (a plausible continuation of the table, better than a grey bar for the
model), and the padded band is excluded from the guidance loss through ``Letterbox.valid_mask``.
``Letterbox.unfit`` crops the band off and resizes back to the photo's own size.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, UnidentifiedImageError

from core import schema
from core.atomic import atomic_path
from core.errors import UserError
from core.images import over_checkerboard, to_uint8
from core.layers import composite
from core.policy import IMAGE_SUFFIXES

RECOMPOSITION = "recomposition.png"
ORDER = "order.json"
CONTACT_SHEET = "contact_sheet.png"


def load_photo(path: str | Path) -> torch.Tensor:
    """An image file as ``[3, H, W]`` float32 in [0, 1] (alpha dropped, greyscale expanded)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path}: not a readable image ({type(err).__name__})") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def check_photo(path: str | Path) -> None:
    """Fail early, with one line, on a path that is not a readable image (reads the header only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - the header parse is the check
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path}: not a readable image ({type(err).__name__})") from None


def list_photos(path: str | Path) -> list[Path]:
    """``path`` itself, or the images directly inside a folder (sorted); one-line error if there are none."""
    path = Path(path)
    if path.is_dir():
        photos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not photos:
            raise UserError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return photos
    if not path.exists():
        raise UserError(f"{path}: no such image file or folder")
    return [path]


def output_names(photos: Sequence[Path]) -> list[str]:
    """One output folder name per photo: its stem, or its full name where two photos share a stem."""
    stems = [p.stem for p in photos]
    return [p.stem if stems.count(p.stem) == 1 else p.name.replace(".", "_") for p in photos]


@dataclass(frozen=True)
class Letterbox:
    """How a ``height x width`` photo sits inside the ``resolution``-square model input."""

    height: int
    width: int
    resolution: int

    @property
    def content(self) -> tuple[int, int, int, int]:
        """(top, left, content height, content width) of the photo inside the square."""
        scale = self.resolution / max(self.height, self.width)
        ch = max(1, round(self.height * scale))
        cw = max(1, round(self.width * scale))
        return (self.resolution - ch) // 2, (self.resolution - cw) // 2, ch, cw

    def fit(self, image: torch.Tensor) -> torch.Tensor:
        """``[..., C, H, W]`` at the photo's size -> ``[..., C, R, R]`` (resize, edge-padded)."""
        top, left, ch, cw = self.content
        x = resize_to(image, ch, cw)
        r = self.resolution
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        x = F.pad(x, (left, r - cw - left, top, r - ch - top), mode="replicate")
        return x.reshape(*lead, *x.shape[-3:])

    def valid_mask(self) -> torch.Tensor:
        """``[1, R, R]``: 1 on the photo, 0 on the padding."""
        top, left, ch, cw = self.content
        mask = torch.zeros(1, self.resolution, self.resolution)
        mask[:, top : top + ch, left : left + cw] = 1
        return mask

    def unfit(self, image: torch.Tensor) -> torch.Tensor:
        """``[..., C, R, R]`` -> ``[..., C, H, W]``: crop the padding, resize to the photo's size."""
        top, left, ch, cw = self.content
        return resize_to(image[..., top : top + ch, left : left + cw], self.height, self.width).clamp(0, 1)


def resize_to(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[..., C, H, W]`` -> ``[..., C, h, w]`` (bilinear, antialiased; unchanged when already that size)."""
    if tuple(image.shape[-2:]) == (h, w):
        return image
    lead = image.shape[:-3]
    x = image.reshape(-1, *image.shape[-3:]).float()
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.reshape(*lead, *x.shape[-3:])


def save_png(path: Path, image: Any) -> None:
    """Write ``[3 or 4, H, W]`` in [0, 1] as an RGB or straight-alpha RGBA PNG."""
    Image.fromarray(to_uint8(image)).save(path, format="PNG")


def contact_sheet(
    photo: torch.Tensor, layers: torch.Tensor, background: torch.Tensor, tile: int = 160
) -> Image.Image:
    """One image to eyeball a result: photo, recomposition, background, then the layers on a checkerboard."""
    recomposition = composite(layers, background)
    h, w = photo.shape[-2:]
    scale = tile / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    tiles = [("photo", to_uint8(photo)), ("recomposition", to_uint8(recomposition))]
    tiles.append(("background", to_uint8(background)))
    for k, layer in enumerate(layers):
        tiles.append((schema.layer_name(k).removesuffix(".png"), over_checkerboard(to_uint8(layer))))
    per_row = min(len(tiles), 6)
    rows = -(-len(tiles) // per_row)
    label_h, pad = 14, 4
    sheet = Image.new("RGB", (per_row * (tw + pad) + pad, rows * (th + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, image) in enumerate(tiles):
        x = pad + (i % per_row) * (tw + pad)
        y = pad + (i // per_row) * (th + label_h + pad)
        sheet.paste(Image.fromarray(image).resize((tw, th), Image.BILINEAR), (x, y))
        draw.text((x, y + th + 1), label, fill="black")
    return sheet


def write_result(
    out_dir: Path,
    photo: torch.Tensor,
    layers: torch.Tensor,
    background: torch.Tensor,
    info: dict[str, Any],
) -> None:
    """Write one photo's result folder atomically (all files appear at once, or none).

    ``layers [N, 4, H, W]`` are the kept objects front to back at the photo's size; ``info`` goes into
    ``order.json`` beside the per-layer entries.
    """
    recomposition = composite(layers, background)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for k, layer in enumerate(layers):
            save_png(tmp / schema.layer_name(k), layer)
        save_png(tmp / schema.BACKGROUND, background)
        save_png(tmp / RECOMPOSITION, recomposition)
        contact_sheet(photo, layers, background).save(tmp / CONTACT_SHEET, format="PNG")
        (tmp / ORDER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
