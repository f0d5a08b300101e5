"""The CObL authors' real TABLETOP test scenes (one ``.h5`` file per scene), scored like ``cobl eval``.

Their layout, as their public loader reads it (``Tabletop.py`` in github aneeldamaraju/cobl): each file
holds four uint8 datasets, ``scene`` (the photo), ``background`` (the empty table), ``layers`` and ``masks``
(stacks indexed by slot, 6 slots in their example). Shapes are not written down there; this module accepts
``scene``/``background`` ``[H, W, 3]``, ``layers [N, H, W, 3]`` and ``masks [N, H, W]`` and refuses anything
else with one line naming the file and the key (``check_folder``: metadata only, before the model loads).

Each scene becomes the project's ground-truth record, one sample of the shard schema (``core.schema``):
``rgb.png`` = scene, ``bg.png`` = background, one straight-alpha ``layer_XX.png`` per object (RGB from
``layers``, alpha from ``masks``; empty masks are absent slots), ``ids.png`` (the modal map), and
``scene.json`` holding ``TabletopScene`` (what was derived and how). What is assumed, and why:

* masks are 0/1 or 0/255 (a stack whose largest value is 1 is read as 0/1, otherwise values are alpha / 255);
* the slot index is NOT trusted to be the occlusion order: wherever two objects' masks overlap, the one whose
  layer matches the photo there (smaller mean absolute difference) is in front (``implied_order``). Pairs that
  do not overlap keep the file's slot order; they affect no metric. Whether the file's own slot order agreed
  is recorded per scene (``file_order_agrees``).

``evaluate_tabletop`` writes the converted scenes to one temporary shard and runs ``infer.evaluate.evaluate``
on it, so the scores are exactly ``cobl eval``'s (its small-object rule, baselines, bootstrap intervals),
at the model's resolution (centre square, as for shards). A scene with more objects than the model's K is
skipped and counted under ``skipped.too_many_objects``, as ``cobl eval`` does; LPIPS, the paper's
completed-object metric, needs pretrained weights and is not computed.
"""

from __future__ import annotations

import io
import itertools
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core import schema
from core.errors import UserError
from core.layers import modal_ids
from core.policy import ALPHA_THRESHOLD

TABLETOP_KEYS = ("scene", "background", "layers", "masks")
TABLETOP_SUFFIX = ".h5"
SHARD_NAME = "tabletop-000000.tar"
OPTION = "tabletop"  # errors name the flag ``--tabletop``


@dataclass(frozen=True)
class TabletopScene:
    """What one file became: its objects front to back (as file slot indices) and how the order was found."""

    file: str
    key: str
    height: int
    width: int
    slots: int  # slots in the file (empty ones included)
    order: tuple[int, ...]  # file slot of each object, front to back
    mask_scale: int  # 1: masks are 0/1; 255: masks are alpha * 255
    pairs_from_photo: int  # overlapping object pairs whose order the photo decided
    pairs_undecided: int  # overlapping pairs where both layers match the photo equally well
    pairs_dropped: int  # decided pairs overruled to break an occlusion cycle
    file_order_agrees: bool  # every decided pair has the front object at the lower slot index

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "order": list(self.order)}


# ------------------------------------------------------------------------------------------------ checks


def list_files(folder: str | Path) -> list[Path]:
    """The ``.h5`` files directly in ``folder`` (sorted); one-line error when there is none."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder", option=OPTION)
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix == TABLETOP_SUFFIX)
    if not files:
        raise UserError(f"{root}: holds no {TABLETOP_SUFFIX} scene files", option=OPTION)
    return files


def check_folder(folder: str | Path) -> list[Path]:
    """Every scene file's keys, dtypes and sizes, read from the metadata only (fast); the files, sorted."""
    files = list_files(folder)
    for path in files:
        with _open(path) as f:
            _check_layout(path, f)
    return files


def _open(path: Path) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise UserError(f"{path}: not a readable HDF5 file ({err})", option=OPTION) from None


def _check_layout(path: Path, f: Any) -> tuple[int, int, int]:
    """``(N, H, W)`` of a file in the TABLETOP layout; a one-line UserError naming the key otherwise."""
    import h5py

    for key in TABLETOP_KEYS:
        if key not in f or not isinstance(f[key], h5py.Dataset):
            expected = ", ".join(TABLETOP_KEYS)
            raise UserError(f"{path}: key '{key}': missing (expected {expected})", option=OPTION)
        allowed = ("uint8", "bool") if key == "masks" else ("uint8",)
        dtype = f[key].dtype.name
        if dtype not in allowed:
            wanted = " or ".join(allowed)
            raise UserError(f"{path}: key '{key}': expected {wanted}, got {dtype}", option=OPTION)
    scene = f["scene"].shape
    if len(scene) != 3 or scene[2] != 3 or 0 in scene:
        raise UserError(f"{path}: key 'scene': expected shape [H, W, 3], got {list(scene)}", option=OPTION)
    h, w = scene[:2]
    layers = f["layers"].shape
    n = layers[0] if len(layers) == 4 else 0
    expected = {"background": (h, w, 3), "layers": (n, h, w, 3), "masks": (n, h, w)}
    for key, want in expected.items():
        got = tuple(f[key].shape)
        if got != want or (key == "layers" and n == 0):
            shown = "[N, H, W, 3] with N >= 1" if key == "layers" else list(want)
            raise UserError(
                f"{path}: key '{key}': expected shape {shown} (scene is {h}x{w}), got {list(got)}",
                option=OPTION,
            )
    return n, h, w


# ------------------------------------------------------------------------------------------- conversion


def read_scene(path: Path) -> dict[str, Any]:
    """One file's arrays: ``photo``/``background`` ``[H, W, 3]``, ``rgb [N, H, W, 3]``, ``alpha [N, H, W]``
    (uint8, 0..255) and the masks' ``mask_scale``."""
    with _open(path) as f:
        _check_layout(path, f)
        try:
            arrays = {key: np.asarray(f[key][()]) for key in TABLETOP_KEYS}
        except OSError as err:
            raise UserError(f"{path}: the data cannot be read ({err})", option=OPTION) from None
    masks = arrays["masks"].astype(np.uint8)
    scale = 1 if int(masks.max(initial=0)) <= 1 else 255
    alpha = masks * np.uint8(255) if scale == 1 else masks
    return {
        "photo": arrays["scene"],
        "background": arrays["background"],
        "rgb": arrays["layers"],
        "alpha": alpha,
        "mask_scale": scale,
    }


def implied_order(
    photo: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, slots: Sequence[int]
) -> tuple[list[int], dict[str, int | bool]]:
    """The front-to-back order of ``slots`` the photo implies (module docstring) and counts of how it was
    decided. Arrays are uint8: ``photo [H, W, 3]``, ``rgb [N, H, W, 3]``, ``alpha [N, H, W]``."""
    masks = alpha > ALPHA_THRESHOLD * 255
    in_front_of: dict[int, dict[int, float]] = {s: {} for s in slots}  # front -> {back: evidence margin}
    undecided = 0
    for i, j in itertools.combinations(slots, 2):
        both = masks[i] & masks[j]
        if not both.any():
            continue
        target = photo[both].astype(np.float64)
        err_i = float(np.abs(rgb[i][both] - target).mean())
        err_j = float(np.abs(rgb[j][both] - target).mean())
        if err_i == err_j:
            undecided += 1
            continue
        front, back = (i, j) if err_i < err_j else (j, i)
        in_front_of[front][back] = abs(err_i - err_j)
    order, dropped = _front_to_back(list(slots), in_front_of)
    decided = [(f, b) for f, backs in in_front_of.items() for b in backs]
    return order, {
        "pairs_from_photo": len(decided),
        "pairs_undecided": undecided,
        "pairs_dropped": dropped,
        "file_order_agrees": all(f < b for f, b in decided),
    }


def _front_to_back(slots: list[int], in_front_of: dict[int, dict[int, float]]) -> tuple[list[int], int]:
    """Topological order, file order among equals; a cycle is broken at the object with the weakest evidence
    of being behind another (those pairs are counted as dropped)."""
    remaining, order, dropped = list(slots), [], 0
    while remaining:
        behind = {s: [in_front_of[f][s] for f in remaining if s in in_front_of[f]] for s in remaining}
        free = [s for s in remaining if not behind[s]]
        pick = free[0] if free else min(remaining, key=lambda s: (sum(behind[s]), s))
        dropped += len(behind[pick])
        order.append(pick)
        remaining.remove(pick)
    return order, dropped


def scene_members(path: Path, key: str) -> tuple[dict[str, bytes], TabletopScene]:
    """One file as a shard sample (member name -> bytes) and the record of its conversion."""
    arrays = read_scene(path)
    alpha, rgb = arrays["alpha"], arrays["rgb"]
    present = [s for s in range(len(alpha)) if (alpha[s] > ALPHA_THRESHOLD * 255).any()]
    order, counts = implied_order(arrays["photo"], rgb, alpha, present)
    h, w = alpha.shape[1:]
    record = TabletopScene(
        file=path.name, key=key, height=h, width=w, slots=len(alpha), order=tuple(order),
        mask_scale=arrays["mask_scale"], **counts,
    )
    members = {
        schema.RGB: _png(arrays["photo"]),
        schema.BACKGROUND: _png(arrays["background"]),
        schema.SCENE: json.dumps(
            {"num_objects": len(order), "tabletop": record.to_dict()}, sort_keys=True
        ).encode("utf-8"),  # the declared count every sample is checked against (cobl.sample_check)
    }
    for k, slot in enumerate(order):
        members[schema.layer_name(k)] = _png(np.concatenate([rgb[slot], alpha[slot][..., None]], axis=-1))
    ordered_alpha = alpha[order].astype(np.float32) / 255 if order else np.zeros((0, h, w), np.float32)
    members[schema.IDS] = _png(modal_ids(ordered_alpha).astype(np.uint8))
    return members, record


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def sample_keys(files: Sequence[Path]) -> list[str]:
    """A distinct WebDataset key per file: its stem with dots replaced (a dot would split the key), and its
    position appended where two stems would give the same key."""
    stems = [path.stem.replace(".", "_") for path in files]
    return [s if stems.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(stems)]


def write_shard(files: Sequence[Path], shard: Path) -> list[TabletopScene]:
    """Convert every file into one tar shard of the project's sample schema; the conversion records."""
    import webdataset as wds

    records = []
    with wds.TarWriter(str(shard), mtime=0) as sink:
        for path, key in zip(files, sample_keys(files), strict=True):
            members, record = scene_members(path, key)
            sink.write({"__key__": record.key, **members})
            records.append(record)
    return records


# ------------------------------------------------------------------------------------------- evaluation


def evaluate_tabletop(
    pipe: Any,
    folder: str | Path,
    *,
    depth_source: str | None = None,
    depth_estimator: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``infer.evaluate.evaluate`` on the TABLETOP scenes in ``folder``: the same result, with ``data`` =
    the folder and ``tabletop`` = the conversion records (``TabletopScene`` per file, in file order)."""
    from infer.evaluate import evaluate

    if depth_source is not None:
        raise UserError(
            f"TABLETOP scenes carry no depth map, so there is no {depth_source} depth (use --depth-model)",
            option="depth_source",
        )
    if pipe.uses_depth and depth_estimator is None:
        raise UserError(
            "the model is depth-conditioned and TABLETOP scenes carry no depth map: give a depth "
            "estimator folder (--depth-model DIR)",
            option="depth_model",
        )
    files = check_folder(folder)
    with tempfile.TemporaryDirectory(prefix="cobl-tabletop-") as tmp:
        shard = Path(tmp) / SHARD_NAME
        records = write_shard(files, shard)
        result = evaluate(pipe, str(shard), depth_estimator=depth_estimator, **kwargs)
    result["data"] = str(folder)
    result["tabletop"] = {
        "files": len(files),
        "source": "CObL TABLETOP .h5 layout (scene, background, layers, masks)",
        "order": "implied by the photo where masks overlap (infer.tabletop.implied_order)",
        "scenes": [r.to_dict() for r in records],
    }
    return result
