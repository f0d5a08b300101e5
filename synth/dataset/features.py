"""A sample's Hugging Face ``datasets`` features, written into the dataset card's YAML at publish time.

Derived from the schema, not from data: the members (core.schema), the typed scene spec (core.spec), the
typed ground truth (core.groundtruth) and the renderer's render info (synth.render.groundtruth). Without
them ``datasets.load_dataset(DIR)`` infers the features from the first few samples, and a field that is
null there (no HDRI, no image texture) breaks the samples that have it later.

The YAML is the card format ``datasets`` reads (``dataset_info.features``: ``dtype``, ``struct``, ``list``,
``array2_d``), written without importing ``datasets`` (a dev dependency only).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from core import schema
from core.groundtruth import GroundTruth
from core.spec import SceneSpec
from synth.render.groundtruth import RENDER_INFO_FIELDS

VALUE_TYPES = {str: "string", int: "int64", float: "float64", bool: "bool"}


def sample_features(resolution: int, slots: int) -> list[dict[str, Any]]:
    """The features of a sample with ``slots`` layer members at ``resolution``², in the card's YAML form."""
    fields: list[dict[str, Any]] = [{"name": "__key__", "dtype": "string"}]
    for member in schema.member_names(slots):
        if member.endswith(".png"):
            fields.append({"name": member, "dtype": "image"})
        elif member == schema.DEPTH:
            shape = [resolution, resolution]
            fields.append({"name": member, "dtype": {"array2_d": {"shape": shape, "dtype": "float32"}}})
        elif member == schema.SCENE:
            scene = [_field("spec", SceneSpec), _field("ground_truth", GroundTruth)]
            fields.append({"name": member, "struct": scene})
        else:
            raise ValueError(f"no feature for member {member!r}: add it here with the schema")
    fields.append({"name": "__url__", "dtype": "string"})
    return fields


def _field(name: str, tp: Any) -> dict[str, Any]:
    """One named feature: ``{"name", "dtype" | "struct" | "list"}``."""
    inner = _type(tp)
    if isinstance(inner, str):
        return {"name": name, "dtype": inner}
    if isinstance(inner, list):
        return {"name": name, "struct": inner}
    return {"name": name, **inner}


def _type(tp: Any) -> str | list | dict:
    """A value type's name, a struct's fields, or ``{"list": element}``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # X | None: nullable X
        (tp,) = [a for a in args if a is not type(None)]
        return _type(tp)
    if tp in VALUE_TYPES:
        return VALUE_TYPES[tp]
    if origin is tuple:
        if len(set(a for a in args if a is not Ellipsis)) != 1:
            raise ValueError(f"{tp}: a list feature needs one element type")
        return {"list": _type(args[0])}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return [_render_info() if f.name == "render" and tp is GroundTruth else _field(f.name, hints[f.name])
                for f in dataclasses.fields(tp)]  # fmt: skip
    if origin is Mapping or tp is Mapping:
        raise ValueError(f"{tp}: a free-form mapping has no feature; type it")
    raise ValueError(f"{tp}: no feature type")


def _render_info() -> dict[str, Any]:
    return {"name": "render", "struct": [_field(k, tp) for k, tp in RENDER_INFO_FIELDS.items()]}
