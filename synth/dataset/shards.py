"""WebDataset shards: deterministic tar writing, reading with nothing but ``tarfile``, and shard names.

A shard is a plain (uncompressed) tar whose members are ``{key}.{member}`` for every member of
:func:`core.schema.member_names` — ``s00000042.rgb.png``, ``s00000042.layer_03.png``, ... — so every
WebDataset reader groups them into one sample per scene key.

We write with :mod:`tarfile` directly rather than ``webdataset.TarWriter`` because the writer sorts members
alphabetically and picks encoders from the key; we want the schema's order (photo first, scene.json last),
bytes we already encoded, and fixed metadata so that the same scenes give byte-identical shards (same sha256).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from core import schema
from core.atomic import atomic_path
from core.layers import EMPTY_RGB

SHARD_PATTERN = re.compile(r"^(?P<split>[a-z][a-z0-9_]*)-(?P<index>\d{6})\.tar$")
_MEMBER_MODE = 0o444


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``: ``train-000003.tar``."""
    return f"{split}-{index:06d}.tar"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    m = SHARD_PATTERN.match(name)
    return (m.group("split"), int(m.group("index"))) if m else None


@functools.lru_cache(maxsize=16)
def empty_layer_png(width: int, height: int) -> bytes:
    """A fully transparent RGBA PNG (RGB = core.layers.EMPTY_RGB): the content of a slot with no object."""
    rgb = tuple(int(np.round(c * 255.0)) for c in EMPTY_RGB)
    buf = io.BytesIO()
    Image.new("RGBA", (width, height), (*rgb, 0)).save(buf, format="PNG")
    return buf.getvalue()


def image_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as im:
        return im.size


def pad_layers(files: Mapping[str, bytes], num_slots: int) -> dict[str, bytes]:
    """The scene's files with exactly ``num_slots`` layer members, in schema order.

    The renderer gives one layer per object; missing slots become transparent PNGs of the photo's size.
    Raises ValueError when the scene has more objects than slots or lacks a member.
    """
    layers = sorted(k for k in files if schema.layer_index(k) is not None)
    if len(layers) > num_slots:
        raise ValueError(f"scene has {len(layers)} layers but the dataset has {num_slots} layer slots")
    expected_layers = [schema.layer_name(k) for k in range(len(layers))]
    if layers != expected_layers:
        raise ValueError(f"layer members {layers} are not contiguous from layer_00")
    width, height = image_size(files[schema.RGB])
    out: dict[str, bytes] = {}
    for name in schema.member_names(num_slots):
        if name in files:
            out[name] = files[name]
        elif schema.layer_index(name) is not None:
            out[name] = empty_layer_png(width, height)
        else:
            raise ValueError(f"scene lacks member {name}")
    extra = set(files) - set(out)
    if extra:
        raise ValueError(f"scene has members outside the schema: {sorted(extra)}")
    return out


def write_tar(fileobj: io.BufferedIOBase, samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> int:
    """Write ``(key, members)`` samples as a deterministic tar; return the number of samples.

    Members are written in the mapping's order with mtime 0, uid/gid 0, no user names and mode 0444.
    """
    count = 0
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            if "." in key or "/" in key:
                raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
            for member, data in members.items():
                info = tarfile.TarInfo(f"{key}.{member}")
                info.size = len(data)
                info.mtime = 0
                info.mode = _MEMBER_MODE
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            count += 1
    return count


def write_shard(
    path: str | os.PathLike, samples: Iterable[tuple[str, Mapping[str, bytes]]]
) -> tuple[int, int, str]:
    """Write a shard under a temporary name and rename it when complete.

    Returns ``(num_samples, num_bytes, sha256)`` of the file as it lies on disk.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            count = write_tar(f, samples)
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        digest = sha256_file(tmp)
    return count, size, digest


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def iter_shard(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {member: bytes})`` per sample with only the standard library.

    Members of a sample are consecutive in the tar (as WebDataset requires); a key that reappears is an error.
    """
    seen: set[str] = set()
    key: str | None = None
    members: dict[str, bytes] = {}
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            base = os.path.basename(info.name)
            sample_key, dot, member = base.partition(".")
            if not dot:
                raise ValueError(f"{path}: tar member {info.name!r} has no extension")
            if sample_key != key:
                if key is not None:
                    yield key, members
                if sample_key in seen:
                    raise ValueError(f"{path}: sample {sample_key!r} is split across the tar")
                seen.add(sample_key)
                key, members = sample_key, {}
            f = tar.extractfile(info)
            assert f is not None
            members[member] = f.read()
    if key is not None:
        yield key, members


def read_shard(path: str | os.PathLike) -> dict[str, dict[str, bytes]]:
    return dict(iter_shard(path))
