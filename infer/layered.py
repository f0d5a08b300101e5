"""Layered files an image editor opens: one PSD and/or OpenRaster file per ``cobl infer`` result folder.

Built from the folder's own PNGs (``bg.png``, ``layer_XX.png``) and ``order.json``, so the file's layers
hold exactly the pixels of the PNGs, and a folder written by an earlier run gains its layered files without
the model running again. Stack, bottom to top: the background, then the object layers from the backmost to
the frontmost (``layer_00`` on top), each named by its place in the occlusion order and the model slot it
came from (``layer_00 (slot 2)``); straight (unassociated) alpha as in the PNGs; the photo's own size.

* PSD: written with psd-tools in its RGBA colour mode, so each layer's alpha is the layer's transparency
  channel (not a layer mask) and the RGB under transparent pixels is kept; psd-tools renders the merged image
  that viewers without layer support show.
* OpenRaster (``.ora``, GIMP, Krita, MyPaint): no maintained Python library writes it (pyora's last release is
  from 2021), so this follows the OpenRaster file-layout and layer-stack specifications directly: a zip whose
  first member is ``mimetype`` (stored, ``image/openraster``), ``stack.xml`` (the first child of ``<stack>``
  is the topmost layer), the layer PNGs under ``data/``, ``mergedimage.png`` (the recomposition) and
  ``Thumbnails/thumbnail.png`` (at most 256 px a side). Members carry a fixed timestamp, so the same folder
  gives the same bytes.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core import schema
from core.atomic import atomic_path
from core.errors import UserError

EXPORT_FORMATS = ("psd", "ora")
ORDER_FILE = "order.json"  # what ``infer.io.write_result`` writes beside the PNGs
RECOMPOSITION_FILE = "recomposition.png"
ORA_MIMETYPE = "image/openraster"
ORA_VERSION = "0.0.5"
ORA_THUMBNAIL_MAX = 256
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def parse_formats(text: str | None) -> tuple[str, ...]:
    """``"psd,ora"`` -> ``("psd", "ora")``; None -> ``()``; anything else is a one-line error (``export``)."""
    if text is None:
        return ()
    names = [part.strip().lower() for part in text.split(",")]
    unknown = [n for n in names if n not in EXPORT_FORMATS]
    if not names or unknown:
        raise UserError(
            f"expected a comma-separated list of {', '.join(EXPORT_FORMATS)}, got {text!r}", option="export"
        )
    return tuple(dict.fromkeys(names))


def layered_path(folder: Path, fmt: str) -> Path:
    """Where a result folder's layered file of format ``fmt`` goes: ``OUT/<name>/<name>.<fmt>``."""
    return folder / f"{folder.name}.{fmt}"


@dataclass(frozen=True)
class Layer:
    """One layer of the stack: its name in the editor, the PNG it comes from, its RGBA pixels."""

    name: str
    png: Path
    rgba: np.ndarray  # [H, W, 4] uint8, straight alpha


def read_stack(folder: Path) -> list[Layer]:
    """A result folder's layers, bottom to top (background first, ``layer_00`` last), all of one size."""
    order_path = folder / ORDER_FILE
    try:
        info = json.loads(order_path.read_text(encoding="utf-8"))
        entries = info["layers"]
        named = [(f"{e['file'].removesuffix('.png')} (slot {e['slot']})", e["file"]) for e in entries]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{order_path}: not a cobl infer order.json ({type(err).__name__}: {err})") from None
    stack = [_layer("background", folder / schema.BACKGROUND)]
    stack += [_layer(name, folder / file) for name, file in reversed(named)]
    sizes = {layer.rgba.shape[:2] for layer in stack}
    if len(sizes) != 1:
        raise UserError(f"{folder}: the layer PNGs differ in size {sorted(sizes)}")
    return stack


def _layer(name: str, png: Path) -> Layer:
    try:
        with Image.open(png) as im:
            rgba = np.asarray(im.convert("RGBA"))
    except OSError as err:
        raise UserError(f"{png}: not a readable PNG ({type(err).__name__})") from None
    return Layer(name, png, rgba)


def _recomposition(folder: Path) -> Image.Image:
    path = folder / RECOMPOSITION_FILE
    try:
        with Image.open(path) as im:
            return im.convert("RGBA")
    except OSError as err:
        raise UserError(f"{path}: not a readable PNG ({type(err).__name__})") from None


def write_psd(path: Path, stack: Sequence[Layer]) -> None:
    """The stack (bottom to top) as an 8-bit RGBA PSD, written atomically."""
    from psd_tools import PSDImage

    height, width = stack[0].rgba.shape[:2]
    psd = PSDImage.new("RGBA", (width, height))
    for layer in stack:
        psd.create_pixel_layer(Image.fromarray(layer.rgba, "RGBA"), name=layer.name)
    with atomic_path(path) as tmp:
        psd.save(tmp)


def stack_xml(stack: Sequence[Layer], sources: Sequence[str]) -> bytes:
    """OpenRaster ``stack.xml`` for ``stack`` (bottom to top) whose PNGs sit at ``sources`` in the zip."""
    height, width = stack[0].rgba.shape[:2]
    image = ET.Element("image", {"version": ORA_VERSION, "w": str(width), "h": str(height)})
    root = ET.SubElement(image, "stack")
    for layer, src in reversed(list(zip(stack, sources, strict=True))):  # the first child is the top
        attrs = {"name": layer.name, "src": src, "x": "0", "y": "0", "opacity": "1.0"}
        ET.SubElement(root, "layer", {**attrs, "visibility": "visible", "composite-op": "svg:src-over"})
    return ET.tostring(image, encoding="utf-8", xml_declaration=True)


def write_ora(path: Path, stack: Sequence[Layer], merged: Image.Image) -> None:
    """The stack (bottom to top) as an OpenRaster file with ``merged`` as its merged image, atomically."""
    sources = [f"data/{layer.png.stem}.png" for layer in stack]
    thumbnail = merged.copy()
    thumbnail.thumbnail((ORA_THUMBNAIL_MAX, ORA_THUMBNAIL_MAX))  # keeps the aspect ratio, never enlarges
    members: list[tuple[str, bytes, int]] = [
        ("mimetype", ORA_MIMETYPE.encode("ascii"), zipfile.ZIP_STORED),
        ("stack.xml", stack_xml(stack, sources), zipfile.ZIP_DEFLATED),
    ]
    for layer, src in zip(stack, sources, strict=True):
        members.append((src, _png_bytes(layer.rgba), zipfile.ZIP_DEFLATED))
    members += [
        ("mergedimage.png", _png_bytes(np.asarray(merged)), zipfile.ZIP_DEFLATED),
        ("Thumbnails/thumbnail.png", _png_bytes(np.asarray(thumbnail)), zipfile.ZIP_DEFLATED),
    ]
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for name, data, compression in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = compression
            zf.writestr(info, data)


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")  # PIL writes non-interlaced 8-bit PNGs
    return buf.getvalue()


def export_folder(folder: Path, formats: Sequence[str], overwrite: bool = False) -> list[Path]:
    """Write ``folder``'s layered files in ``formats`` (those missing, or all with ``overwrite``)."""
    todo = [f for f in formats if overwrite or not layered_path(folder, f).is_file()]
    if not todo:
        return []
    stack = read_stack(folder)
    written = []
    for fmt in todo:
        path = layered_path(folder, fmt)
        if fmt == "psd":
            write_psd(path, stack)
        else:
            write_ora(path, stack, _recomposition(folder))
        written.append(path)
    return written


def export_folders(folders: Sequence[Path], formats: Sequence[str]) -> list[Path]:
    """``export_folder`` for every result folder (``cobl infer --export``); the files written."""
    return [path for folder in folders for path in export_folder(Path(folder), formats)]
