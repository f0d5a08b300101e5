"""Photos read as a person sees them, whatever their file format (issue 20, item 5): 16-bit, palette,
grayscale, grey + alpha, CMYK and EXIF-rotated photos give the pixels a viewer shows (a 16-bit PNG used to
be read as all white)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core.errors import UserError
from infer.io import check_photo, image_size, load_photo

RNG = np.random.default_rng(0)
PHOTO = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)  # height 12, width 20


def as_hwc(tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


def test_16_bit_grey_png_is_scaled_not_saturated(tmp_path):
    grey = (np.linspace(0, 1, 12 * 20).reshape(12, 20) * 65535).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    got = as_hwc(load_photo(tmp_path / "g16.png"))
    np.testing.assert_allclose(got[..., 0], grey / 65535, atol=1e-6)
    assert got[..., 0].min() == 0 and got.mean() == pytest.approx(0.5, abs=0.01)


def _png16_rgb(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\0" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_16_bit_rgb_png(tmp_path):
    rgb16 = PHOTO.astype(np.uint16) * 257
    (tmp_path / "rgb16.png").write_bytes(_png16_rgb(rgb16))
    np.testing.assert_allclose(as_hwc(load_photo(tmp_path / "rgb16.png")), PHOTO / 255, atol=1 / 255)


def test_grey_and_palette_and_cmyk(tmp_path):
    Image.fromarray(PHOTO).convert("L").save(tmp_path / "l.png")
    grey = np.asarray(Image.fromarray(PHOTO).convert("L")) / 255
    got = as_hwc(load_photo(tmp_path / "l.png"))
    np.testing.assert_allclose(got, np.repeat(grey[..., None], 3, 2), atol=1e-6)
    palette = Image.fromarray(PHOTO).convert("P", palette=Image.ADAPTIVE, colors=256)
    palette.save(tmp_path / "p.png")
    want = np.asarray(palette.convert("RGB")) / 255
    np.testing.assert_allclose(as_hwc(load_photo(tmp_path / "p.png")), want, atol=1e-6)
    Image.fromarray(PHOTO).convert("CMYK").save(tmp_path / "cmyk.tif")
    np.testing.assert_allclose(as_hwc(load_photo(tmp_path / "cmyk.tif")), PHOTO / 255, atol=2 / 255)


def test_transparency_is_shown_over_white(tmp_path):
    la = np.zeros((12, 20, 2), np.uint8)
    la[..., 0] = 40
    la[:, :10, 1] = 255  # left half opaque dark grey, right half fully transparent
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    got = as_hwc(load_photo(tmp_path / "la.png"))
    np.testing.assert_allclose(got[:, :10], 40 / 255, atol=1e-6)
    np.testing.assert_allclose(got[:, 10:], 1.0, atol=1e-6)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    got = as_hwc(load_photo(tmp_path / "pt.png"))
    np.testing.assert_allclose(got[0, 0], [1, 0, 0]) and np.testing.assert_allclose(got[1, 1], [1, 1, 1])


def test_exif_rotation_is_applied(tmp_path):
    image = Image.fromarray(PHOTO)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image.save(tmp_path / "rot.png", exif=exif.tobytes())
    got = as_hwc(load_photo(tmp_path / "rot.png"))
    assert got.shape == (20, 12, 3) and image_size(tmp_path / "rot.png") == (20, 12)
    np.testing.assert_allclose(got, np.rot90(PHOTO, k=-1) / 255, atol=1e-6)  # as a viewer shows it: turned


def test_an_unreadable_or_truncated_photo_names_the_file(tmp_path):
    Image.fromarray(PHOTO).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.png"):
        check_photo(tmp_path / "cut.png")
