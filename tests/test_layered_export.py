"""``cobl infer --export psd,ora``: layered files read back with independent readers (psd-tools' own
reader; ``zipfile`` + ``stack.xml``) hold the PNGs' pixels in occlusion order and composite to
``recomposition.png``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from psd_tools import PSDImage

import app.cli
from cobl.configs import tiny_config
from cobl.factory import build
from core import schema
from infer.pipeline import CObLPipeline
from tests.shardmaker import make_scene

torch.set_num_threads(1)
RES = 32


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> Path:
    """``cobl infer --export psd,ora`` on a folder of two photos of different sizes: the output folder."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    config = tiny_config(num_objects=3, resolution=RES)
    model, codec, scheduler = build(config)
    CObLPipeline.from_parts(model, scheduler, codec, config, global_step=0).save_pretrained(root / "model")
    photos = root / "photos"
    photos.mkdir()
    scene = make_scene(np.random.default_rng(0), 40, 3)
    rgb = np.round(scene["photo"].transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(rgb[:, :30]).save(photos / "tall.png")
    Image.fromarray(rgb[:24]).save(photos / "wide.png")
    argv = [
        "infer", "--model", str(root / "model"), "--image", str(photos), "--out", str(root / "out"),
        "--min-area", "0", "--min-visible", "0", "--sampling-steps", "2", "--export", "psd,ora",
    ]
    assert app.cli.main(argv) == 0
    return root / "out"


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA"))


def _expected_stack(folder: Path) -> list[tuple[str, np.ndarray]]:
    """(name, RGBA of the PNG) bottom to top, from order.json and the PNGs themselves."""
    order = json.loads((folder / "order.json").read_text())
    objects = [(f"{e['file'][:-4]} (slot {e['slot']})", _png(folder / e["file"])) for e in order["layers"]]
    return [("background", _png(folder / schema.BACKGROUND)), *reversed(objects)]


def _over(stack: list[np.ndarray]) -> np.ndarray:
    """Straight-alpha source-over of ``[H, W, 4]`` uint8 layers, bottom first, in float64: ``[H, W, 3]``."""
    out = stack[0][..., :3] / 255.0
    for layer in stack[1:]:
        a = layer[..., 3:] / 255.0
        out = a * layer[..., :3] / 255.0 + (1 - a) * out
    return out


def _assert_recomposes(stack: list[np.ndarray], recomposition: np.ndarray) -> None:
    """The file's layers composite to recomposition.png up to 8-bit rounding: the PNGs hold the float layers
    rounded to 1/255, and each rounding moves the composite by at most half a level, so N object layers +
    the background + the final rounding stay within (N + 2) / 2 levels."""
    diff = np.abs(np.round(_over(stack) * 255) - recomposition[..., :3].astype(np.float64))
    assert diff.max() <= (len(stack) + 1) / 2, diff.max()


@pytest.mark.parametrize("name, size", [("tall", (40, 30)), ("wide", (24, 40))])
def test_psd_read_back_holds_the_pngs_in_occlusion_order(result, name, size):
    folder = result / name
    expected = _expected_stack(folder)
    assert len(expected) >= 2  # at least one object layer (--min-area 0)
    psd = PSDImage.open(folder / f"{name}.psd")
    assert (psd.height, psd.width) == size  # the photo's own size, not the model's 32
    layers = list(psd)  # psd-tools lists layers bottom to top
    assert [layer.name for layer in layers] == [n for n, _ in expected]
    for layer, (_, pixels) in zip(layers, expected, strict=True):
        assert layer.kind == "pixel" and layer.visible and layer.opacity == 255
        assert (layer.left, layer.top, layer.width, layer.height) == (0, 0, size[1], size[0])
        assert np.array_equal(np.asarray(layer.topil()), pixels)  # straight alpha, RGB under alpha 0 too
    recomposition = _png(folder / "recomposition.png")
    _assert_recomposes([np.asarray(layer.topil()) for layer in layers], recomposition)
    merged = np.asarray(psd.composite().convert("RGB")).astype(int)  # psd-tools' own compositor
    assert np.abs(merged - recomposition[..., :3]).max() <= (len(layers) + 1) / 2


@pytest.mark.parametrize("name, size", [("tall", (40, 30)), ("wide", (24, 40))])
def test_ora_read_back_with_zipfile_and_stack_xml(result, name, size):
    folder = result / name
    expected = _expected_stack(folder)
    with zipfile.ZipFile(folder / f"{name}.ora") as zf:
        first = zf.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
        assert zf.read("mimetype") == b"image/openraster"
        image = ET.fromstring(zf.read("stack.xml"))
        assert (int(image.get("h")), int(image.get("w"))) == size
        nodes = image.find("stack").findall("layer")  # the first child is the topmost layer
        assert [n.get("name") for n in reversed(nodes)] == [n for n, _ in expected]
        read = []
        for node, (_, pixels) in zip(reversed(nodes), expected, strict=True):
            assert node.get("composite-op", "svg:src-over") == "svg:src-over"
            assert float(node.get("opacity", "1")) == 1 and node.get("visibility", "visible") == "visible"
            assert (int(node.get("x", "0")), int(node.get("y", "0"))) == (0, 0)
            with zf.open(node.get("src")) as f, Image.open(f) as im:
                read.append(np.asarray(im.convert("RGBA")))
            assert np.array_equal(read[-1], pixels)
        with zf.open("mergedimage.png") as f, Image.open(f) as im:
            merged = np.asarray(im.convert("RGBA"))
        with zf.open("Thumbnails/thumbnail.png") as f, Image.open(f) as im:
            thumb_size = im.size
    recomposition = _png(folder / "recomposition.png")
    assert np.array_equal(merged, recomposition)
    _assert_recomposes(read, recomposition)
    assert max(thumb_size) <= 256 and thumb_size == (size[1], size[0])  # small photos are not enlarged


def test_existing_results_gain_missing_files_without_rerunning(result, capsys):
    folder = result / "tall"
    (folder / "tall.psd").unlink()
    ora_bytes = (folder / "tall.ora").read_bytes()
    stamp = (folder / "order.json").stat().st_mtime_ns
    photos = result.parent / "photos"
    argv = [
        "infer", "--model", str(result.parent / "model"), "--image", str(photos), "--out", str(result),
        "--min-area", "0", "--min-visible", "0", "--sampling-steps", "2", "--export", "ora,psd",
    ]  # the same settings as the fixture's run, so its results are kept
    capsys.readouterr()
    assert app.cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "2 kept" in out and "wrote 1 layered file(s)" in out
    assert (folder / "tall.psd").is_file() and (folder / "order.json").stat().st_mtime_ns == stamp
    assert (folder / "tall.ora").read_bytes() == ora_bytes


def test_ora_bytes_are_deterministic(result, tmp_path):
    from infer.layered import read_stack, write_ora

    folder = result / "wide"
    with Image.open(folder / "recomposition.png") as im:
        merged = im.convert("RGBA")
    write_ora(tmp_path / "again.ora", read_stack(folder), merged)
    assert (tmp_path / "again.ora").read_bytes() == (folder / "wide.ora").read_bytes()


@pytest.mark.parametrize("value", ["tiff", "psd,", ""])
def test_unknown_export_format_is_one_line_before_anything_runs(result, tmp_path, capsys, value):
    argv = [
        "infer", "--model", str(result.parent / "model"), "--image", str(result.parent / "photos"),
        "--out", str(tmp_path / "out"), "--export", value,
    ]
    assert app.cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cobl: error: --export: expected"), err
    assert not (tmp_path / "out").exists()


GIMP_LIST_LAYERS = """
(let* ((img (car (gimp-file-load RUN-NONINTERACTIVE "{psd}" "{psd}")))
       (layers (vector->list (cadr (gimp-image-get-layers img)))))
  (gimp-message-set-handler CONSOLE)
  (for-each (lambda (l) (gimp-message (string-append "LAYER|" (car (gimp-item-get-name l))))) layers)
  (let ((flat (car (gimp-image-merge-visible-layers img CLIP-TO-IMAGE))))
    (file-png-save-defaults RUN-NONINTERACTIVE img flat "{png}" "{png}")))
"""


@pytest.mark.skipif(shutil.which("gimp") is None, reason="GIMP is not installed (Debian package gimp)")
def test_gimp_opens_the_psd_as_the_same_stack(result, tmp_path):
    """A real editor: GIMP (batch mode) lists the layers top first and flattens them to the recomposition."""
    folder = result / "tall"
    flat = tmp_path / "flat.png"
    script = GIMP_LIST_LAYERS.format(psd=folder / "tall.psd", png=flat)
    run = subprocess.run(
        ["gimp", "-i", "-d", "-f", "-b", script, "-b", "(gimp-quit 0)"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(tmp_path)},
    )
    lines = (run.stdout + run.stderr).splitlines()
    names = [line.split("LAYER|", 1)[1] for line in lines if "LAYER|" in line]
    expected = _expected_stack(folder)
    assert names == [n for n, _ in reversed(expected)], run.stderr[-2000:]
    flattened = np.asarray(Image.open(flat).convert("RGB")).astype(int)
    recomposition = _png(folder / "recomposition.png")[..., :3]
    assert np.abs(flattened - recomposition).max() <= (len(expected) + 1) / 2
