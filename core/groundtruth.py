"""The ``ground_truth`` half of ``scene.json``, typed: what the renderer derives and every reader relies on.

``GroundTruth.to_dict()`` is exactly what scene.json holds (same keys, values and types, so the file's bytes
do not depend on going through the record); ``GroundTruth.from_dict()`` checks every field and raises a
one-line ``UserError`` naming the first missing or malformed one (``ground_truth.objects[1].layer: ...``).
``render`` stays a free-form mapping: it records the renderer's own settings and counters, which differ
between renderers and are only displayed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import UserError

Box = tuple[int, int, int, int]  # [x0, y0, x1, y1) in pixels
CAMERA_CONVENTION = "world_to_camera maps to OpenGL camera axes (x right, y up, looking down -z)"


@dataclass(frozen=True)
class ObjectTruth:
    """One object of the scene, in front-to-back order (``layer`` k is ``layer_{k:02d}.png``)."""

    name: str
    layer: int
    pass_index: int
    amodal_pixels: int  # pixels of its amodal mask (alpha > ALPHA_THRESHOLD)
    modal_pixels: int  # of those, the ones the photo shows (ids.png == layer + 1)
    visible_fraction: float  # modal_pixels / amodal_pixels, 0 for an empty amodal mask
    amodal_box: Box | None
    modal_box: Box | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer": self.layer,
            "pass_index": self.pass_index,
            "amodal_pixels": self.amodal_pixels,
            "modal_pixels": self.modal_pixels,
            "visible_fraction": self.visible_fraction,
            "amodal_box": _box_list(self.amodal_box),
            "modal_box": _box_list(self.modal_box),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "object") -> ObjectTruth:
        d = _mapping(data, where)
        return cls(
            name=_str(d, "name", where),
            layer=_int(d, "layer", where),
            pass_index=_int(d, "pass_index", where),
            amodal_pixels=_int(d, "amodal_pixels", where),
            modal_pixels=_int(d, "modal_pixels", where),
            visible_fraction=_float(d, "visible_fraction", where),
            amodal_box=_box(d, "amodal_box", where),
            modal_box=_box(d, "modal_box", where),
        )


@dataclass(frozen=True)
class OcclusionEdge:
    """``front`` hides ``pixels`` pixels of ``back``'s amodal mask (object names)."""

    front: str
    back: str
    pixels: int

    def to_dict(self) -> dict[str, Any]:
        return {"front": self.front, "back": self.back, "pixels": self.pixels}

    @classmethod
    def from_dict(cls, data: Any, where: str = "edge") -> OcclusionEdge:
        d = _mapping(data, where)
        return cls(_str(d, "front", where), _str(d, "back", where), _int(d, "pixels", where))


@dataclass(frozen=True)
class CameraTruth:
    """The camera as matrices: pinhole ``K`` (pixels) and ``world_to_camera`` (OpenGL axes)."""

    K: tuple[tuple[float, ...], ...]
    world_to_camera: tuple[tuple[float, ...], ...]
    width: int
    height: int
    convention: str = CAMERA_CONVENTION

    def to_dict(self) -> dict[str, Any]:
        return {
            "K": [list(row) for row in self.K],
            "world_to_camera": [list(row) for row in self.world_to_camera],
            "width": self.width,
            "height": self.height,
            "convention": self.convention,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "camera") -> CameraTruth:
        d = _mapping(data, where)
        return cls(
            K=_matrix(d, "K", 3, where),
            world_to_camera=_matrix(d, "world_to_camera", 4, where),
            width=_int(d, "width", where),
            height=_int(d, "height", where),
            convention=_str(d, "convention", where),
        )


@dataclass(frozen=True)
class GroundTruth:
    """Everything derived from a scene's renders beyond its files: order, occlusions, camera, checks."""

    order: tuple[str, ...]  # object names, front to back
    objects: tuple[ObjectTruth, ...]  # in the same order
    occlusion_edges: tuple[OcclusionEdge, ...]  # an acyclic graph consistent with ``order``
    dropped_edges: tuple[OcclusionEdge, ...]  # edges dropped to break occlusion cycles
    camera: CameraTruth
    recomposition_psnr: float  # dB, layers composited over the background vs the photo
    ids_stack_agreement: float  # fraction of object pixels where ids.png equals the layers' modal ids
    render: Mapping[str, Any] = field(default_factory=dict)  # the renderer's settings and counters

    @property
    def acyclic(self) -> bool:
        """True when the occlusion graph needed no edge dropped, so ``order`` follows from occlusion alone."""
        return not self.dropped_edges

    def to_dict(self) -> dict[str, Any]:
        return {
            "order": list(self.order),
            "objects": [o.to_dict() for o in self.objects],
            "occlusion_edges": [e.to_dict() for e in self.occlusion_edges],
            "dropped_edges": [e.to_dict() for e in self.dropped_edges],
            "camera": self.camera.to_dict(),
            "render": copy.deepcopy(dict(self.render)),
            "recomposition_psnr": self.recomposition_psnr,
            "ids_stack_agreement": self.ids_stack_agreement,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "ground_truth") -> GroundTruth:
        d = _mapping(data, where)
        render = _get(d, "render", where)
        if not isinstance(render, Mapping):
            raise UserError(f"{where}.render: expected an object, got {type(render).__name__}")
        return cls(
            order=tuple(_str_item(v, f"{where}.order[{i}]") for i, v in enumerate(_list(d, "order", where))),
            objects=tuple(
                ObjectTruth.from_dict(v, f"{where}.objects[{i}]")
                for i, v in enumerate(_list(d, "objects", where))
            ),
            occlusion_edges=_edges(d, "occlusion_edges", where),
            dropped_edges=_edges(d, "dropped_edges", where),
            camera=CameraTruth.from_dict(_get(d, "camera", where), f"{where}.camera"),
            recomposition_psnr=_float(d, "recomposition_psnr", where),
            ids_stack_agreement=_float(d, "ids_stack_agreement", where),
            render=copy.deepcopy(dict(render)),
        )

    @classmethod
    def from_scene(cls, doc: Any, where: str = "scene.json") -> GroundTruth:
        """The record of a parsed scene.json document ``{"spec": ..., "ground_truth": ...}``; ``where`` names
        the document in errors."""
        if not isinstance(doc, Mapping) or "ground_truth" not in doc:
            raise UserError(f"{where}: ground_truth: missing")
        return cls.from_dict(doc["ground_truth"], f"{where}: ground_truth")


# -- field checks: each raises a one-line UserError naming the field --------------------------------------


def _mapping(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected an object, got {type(data).__name__}")
    return data


def _get(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise UserError(f"{where}.{key}: missing")
    return d[key]


def _bad(where: str, key: str, expected: str, value: Any) -> UserError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:60] + "..."
    return UserError(f"{where}.{key}: expected {expected}, got {shown}")


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    value = _get(d, key, where)
    if not isinstance(value, str):
        raise _bad(where, key, "a string", value)
    return value


def _str_item(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: expected a string, got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(d: Mapping[str, Any], key: str, where: str) -> int:
    value = _get(d, key, where)
    if not _is_int(value):
        raise _bad(where, key, "an integer", value)
    return value


def _float(d: Mapping[str, Any], key: str, where: str) -> float:
    value = _get(d, key, where)
    if not (isinstance(value, float) or _is_int(value)):
        raise _bad(where, key, "a number", value)
    return value


def _list(d: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = _get(d, key, where)
    if not isinstance(value, list | tuple):
        raise _bad(where, key, "a list", value)
    return list(value)


def _box(d: Mapping[str, Any], key: str, where: str) -> Box | None:
    value = _get(d, key, where)
    if value is None:
        return None
    if not (isinstance(value, list | tuple) and len(value) == 4 and all(_is_int(v) for v in value)):
        raise _bad(where, key, "[x0, y0, x1, y1] integers or null", value)
    return tuple(value)


def _box_list(box: Box | None) -> list[int] | None:
    return None if box is None else list(box)


def _matrix(d: Mapping[str, Any], key: str, n: int, where: str) -> tuple[tuple[float, ...], ...]:
    value = _get(d, key, where)
    ok = isinstance(value, list | tuple) and len(value) == n
    ok = ok and all(isinstance(row, list | tuple) and len(row) == n for row in value)
    ok = ok and all(isinstance(x, float) or _is_int(x) for row in value for x in row)
    if not ok:
        raise _bad(where, key, f"a {n}x{n} matrix of numbers", value)
    return tuple(tuple(row) for row in value)


def _edges(d: Mapping[str, Any], key: str, where: str) -> tuple[OcclusionEdge, ...]:
    items = _list(d, key, where)
    return tuple(OcclusionEdge.from_dict(v, f"{where}.{key}[{i}]") for i, v in enumerate(items))
