"""The key of one ``cobl infer`` result: what produced it (the model, the photo, the depth and every sampler
setting), so a rerun keeps a result only when all of these are the same and recomputes it otherwise.

A result folder records its key in ``order.json`` (``result_key``, with the parts in ``result_inputs``). The
model is identified by the content of its small files (configs, model index) and the name, size and
modification time of its weight files (hashing gigabytes of weights on every run would cost more than
sampling); the photo and a depth file by the SHA-256 of their bytes; a depth estimator by its folder's
identity, as a model's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".onnx")


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_identity(folder: str | os.PathLike) -> str:
    """A digest of a model folder: small files by content, weight files by name, size and mtime."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue  # markers and temporaries
        digest.update(rel.encode() + b"\0")
        if path.suffix in WEIGHT_SUFFIXES:
            stat = path.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def result_inputs(
    model_id: str, photo: str | os.PathLike, depth: str | os.PathLike | None, depth_model_id: str | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Everything a result depends on, as recorded in its order.json."""
    return {
        "model": model_id,
        "photo": file_digest(photo),
        "depth": None if depth is None else file_digest(depth),
        "depth_model": depth_model_id,
        "settings": settings,
    }


def result_key(inputs: dict[str, Any]) -> str:
    """The key of ``result_inputs``: equal inputs, equal key."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def stored_key(result_dir: str | os.PathLike, order_file: str) -> str | None:
    """The key a result folder was written with (None: no folder, an unreadable order.json, or a result
    written before keys existed, which is then recomputed)."""
    path = Path(result_dir) / order_file
    try:
        key = json.loads(path.read_text()).get("result_key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None
