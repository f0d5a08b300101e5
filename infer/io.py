"""Photos in, layer files out: loading, fitting any image size to the model's square input and back, writing.

Fitting keeps the aspect ratio: the longer side is resized to the model resolution and the shorter one is
padded by repeating the edge pixels (a plausible continuation of the table, better than a grey bar for the
model), and the padded band is excluded from the guidance loss through ``Letterbox.valid_mask``.
``Letterbox.unfit`` crops the band off and resizes back to the photo's own size.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from core import schema
from core.atomic import atomic_path
from core.errors import UserError
from core.images import over_checkerboard, to_uint8
from core.layers import composite
from core.policy import IMAGE_SUFFIXES, MAX_PHOTO_PIXELS

RECOMPOSITION = "recomposition.png"
ORDER = "order.json"
CONTACT_SHEET = "contact_sheet.png"


# Pixel modes PIL opens that ``photo_pixels`` reads as a person sees them (16-bit grey "I;16*", 32-bit
# integer grey "I" holding 16-bit values, float grey "F" in [0, 1], alpha modes over white, CMYK, palettes).
PHOTO_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
               "I", "I;16", "I;16L", "I;16B", "I;16N", "F")  # fmt: skip


def photo_pixels(img: Image.Image, where: str) -> np.ndarray:
    """``[H, W, 3]`` float32 in [0, 1] of an opened image, as a viewer shows it: EXIF orientation applied,
    16-bit grey scaled by 65535 (not clipped to white), transparency composited over white, CMYK and
    palettes converted."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode not in PHOTO_MODES:
        raise UserError(f"{where}: pixel mode {mode!r} is not a photo ({', '.join(PHOTO_MODES)})")
    if mode.startswith("I") or mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        top = 1.0 if mode == "F" else 65535.0 if mode.startswith("I;16") or grey.max() > 255 else 255.0
        if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > top:
            raise UserError(f"{where}: {mode} pixel values outside [0, {top:g}] (min {grey.min()}, max "
                            f"{grey.max()})")
        return np.repeat((grey / top).astype(np.float32)[..., None], 3, axis=2)
    has_alpha = "A" in mode or "a" in mode or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:4]
        return rgba[..., :3] * alpha + (1.0 - alpha)  # over white, as a viewer on a white page shows it
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def load_photo(path: str | Path) -> torch.Tensor:
    """An image file as ``[3, H, W]`` float32 in [0, 1], read as a person sees it (``photo_pixels``)."""
    rgb = check_photo(path)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


def check_photo(path: str | Path) -> np.ndarray:
    """Fail early, with one line, on a path that is not a readable photo of a sane size (the header first,
    then every pixel); returns its ``photo_pixels``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height, mode = img.width, img.height, img.mode
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:  # fmt: skip
        raise UserError(f"{path}: not a readable image ({type(err).__name__})") from None
    if width * height > MAX_PHOTO_PIXELS:
        raise UserError(f"{path}: {width}x{height} px is above the {MAX_PHOTO_PIXELS} pixels read")
    if mode not in PHOTO_MODES:
        raise UserError(f"{path}: pixel mode {mode!r} is not a photo ({', '.join(PHOTO_MODES)})")
    try:
        with Image.open(path) as img:
            return photo_pixels(img, str(path))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None


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


def check_depth_file(path: str | Path, photo_size: tuple[int, int], resolution: int) -> None:
    """One-line error (``--depth``) unless ``path`` holds a usable depth map for a photo of ``photo_size``
    (height, width) and a model of ``resolution``: finite, not empty, the photo's aspect ratio, and not
    smaller than what the model reads (an 8x8 map for a 32x32 photo is refused, not stretched)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as img:
                values = np.asarray(img if img.mode in ("F", "I") or img.mode.startswith("I;16")
                                    else img.convert("L"))  # fmt: skip
    except (OSError, ValueError, UnidentifiedImageError) as err:
        raise UserError(f"{path}: cannot read a depth map ({type(err).__name__})", option="depth") from None
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise UserError(f"{path}: expected a 2-D numeric depth map, got {values.dtype} {values.shape}",
                        option="depth")  # fmt: skip
    values = values.astype(np.float64)
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise UserError(f"{path}: {bad} of {values.size} depth values are not finite (NaN or inf)",
                        option="depth")  # fmt: skip
    if path.suffix.lower() == ".npy" and (values.min() < 0 or not (values > 0).any()):
        raise UserError(f"{path}: depth in metres must be >= 0 with some pixel > 0 (0 = unknown)",
                        option="depth")  # fmt: skip
    if path.suffix.lower() != ".npy" and values.min() == values.max():
        raise UserError(f"{path}: every pixel holds the same value: no depth in it", option="depth")
    (h, w), (ph, pw) = values.shape, photo_size
    if abs(h * pw - w * ph) > max(h, w, ph, pw):  # aspect ratios differ by more than a pixel's rounding
        raise UserError(f"{path}: {w}x{h} does not have the photo's aspect ratio ({pw}x{ph})", option="depth")
    need = min(resolution, ph, pw)
    if min(h, w) < need:
        raise UserError(f"{path}: {w}x{h} is smaller than the {need} px the model reads of the photo "
                        f"({pw}x{ph}); give the depth at the photo's size", option="depth")  # fmt: skip


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file as a viewer shows it (EXIF orientation applied), from its header."""
    with Image.open(path) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)
