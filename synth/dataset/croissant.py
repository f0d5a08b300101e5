"""``DIR/croissant.json``: the dataset described in Croissant 1.0 (JSON-LD) with the RAI extension.

Layout, mirroring the WebDataset shards one to one (the shards are not changed):

* ``distribution``: one ``cr:FileObject`` per shard (``shards/{split}-NNNNNN.tar``, sha256 and size from
  the manifest), and per split one ``cr:FileSet`` of the members inside that split's shards.
* ``recordSet``:
  - ``splits``: the split enumeration (``cr:Split``), one row per split;
  - ``members``: the sample schema, one row per member (``rgb.png``, ``bg.png``, ``layer_00.png`` ...,
    ``ids.png``, ``depth.npy``, ``scene.json``) with its format and meaning;
  - one record set per split (``train``, ``val``, ...): one record per tar member, with the sample
    ``key`` (the scene id), the ``member`` name (references ``members/name``) and its ``content``.
    A sample is the records sharing a key, exactly as a WebDataset reader groups them.

Croissant's reference library validates the file (``mlcroissant validate --jsonld DIR/croissant.json``);
``tests/test_publish.py`` runs that validation on a published dataset.
"""

from __future__ import annotations

import re
from typing import Any

from core import schema
from synth.dataset.datasheet import Datasheet, description, license_url, rai
from synth.dataset.manifest import SHARDS_DIR, Manifest, ShardRecord
from synth.dataset.plan import SCENE_ID_REGEX, GenerationConfig

CROISSANT = "croissant.json"
CONFORMS_TO = ["http://mlcommons.org/croissant/1.0", "http://mlcommons.org/croissant/RAI/1.0"]
# The Croissant 1.0 @context (as the spec and mlcroissant write it) plus the RAI namespace.
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
# The sample key and the member name of a tar member ``s00000042.layer_03.png``. mlcroissant 1.1 applies a
# field's transform to the column it reads in place, and more than once: so each regex gives back its own
# output unchanged, and the two fields read different columns (file name, full path); with one shared
# column and plain regexes the key came out as the member kind ("bg") and the member as the extension.
KEY_REGEX = rf"^(?:.*/)?({SCENE_ID_REGEX})(?:\..*)?$"
MEMBER_REGEX = rf"^(?:.*/)?(?:{SCENE_ID_REGEX}\.)?(.*)$"
MEDIA_TYPES = {".png": "image/png", ".npy": "application/x-npy", ".json": "application/json"}


def _member_docs(slots: int) -> list[dict[str, str]]:
    rows = []
    for member in schema.member_names(slots):
        k = schema.layer_index(member)
        fmt, meaning = schema.MEMBER_DOCS["layer_XX.png" if k is not None else member]
        if k is not None:
            meaning = meaning.replace("XX", f"{k:02d}")
        rows.append({"members/name": member, "members/format": fmt, "members/description": meaning})
    return rows


def _field(record_set: str, name: str, data_type: str, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "@type": "cr:Field",
        "@id": f"{record_set}/{name}",
        "name": name,
        "description": description,
        "dataType": data_type,
        **extra,
    }


def _from_files(file_set: str, prop: str, regex: str | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"fileSet": {"@id": file_set}, "extract": {"fileProperty": prop}}
    if regex:
        source["transform"] = {"regex": regex}
    return source


def croissant_metadata(sheet: Datasheet, manifest: Manifest, shards: list[ShardRecord]) -> dict[str, Any]:
    """The Croissant JSON-LD document for a verified dataset (``shards`` in publishing order)."""
    config = GenerationConfig.from_dict(manifest.config)
    slots = config.layer_slots
    totals = manifest.totals()
    splits = list(dict.fromkeys(rec.split for rec in shards))
    member_globs = [f"*.{m}" for m in schema.member_names(slots)]
    media = sorted({MEDIA_TYPES[m[m.rindex(".") :]] for m in schema.member_names(slots)})

    distribution: list[dict[str, Any]] = []
    for rec in shards:
        distribution.append(
            {
                "@type": "cr:FileObject",
                "@id": rec.name,
                "name": rec.name,
                "description": f"WebDataset shard {rec.index} of split {rec.split}: "
                f"{rec.num_samples} samples ({rec.first_key} .. {rec.last_key}).",
                "contentUrl": f"{SHARDS_DIR}/{rec.name}",
                "contentSize": f"{rec.bytes} B",
                "encodingFormat": "application/x-tar",
                "sha256": rec.sha256,
            }
        )
    for split in splits:
        distribution.append(
            {
                "@type": "cr:FileSet",
                "@id": f"{split}-members",
                "name": f"{split}-members",
                "description": f"The members of every sample in the {split} shards (tar names KEY.MEMBER).",
                "containedIn": [{"@id": rec.name} for rec in shards if rec.split == split],
                "encodingFormat": media,
                "includes": member_globs,
            }
        )

    record_sets: list[dict[str, Any]] = [
        {
            "@type": "cr:RecordSet",
            "@id": "splits",
            "name": "splits",
            "description": "The splits: contiguous ranges of scene indices (see manifest.json).",
            "dataType": "cr:Split",
            "key": {"@id": "splits/name"},
            "field": [
                _field("splits", "name", "sc:Text", "Split name, as in the shard file names."),
            ],
            "data": [{"splits/name": s} for s in splits],
        },
        {
            "@type": "cr:RecordSet",
            "@id": "members",
            "name": "members",
            "description": f"The sample schema: every sample has exactly these {len(_member_docs(slots))} "
            f"members ({slots} layer slots; unused slots are fully transparent).",
            "key": {"@id": "members/name"},
            "field": [
                _field("members", "name", "sc:Text", "Member name; the tar member is KEY.NAME."),
                _field("members", "format", "sc:Text", "Encoding and dtype."),
                _field("members", "description", "sc:Text", "What the member holds."),
            ],
            "data": _member_docs(slots),
        },
    ]
    for split in splits:
        files = f"{split}-members"
        record_sets.append(
            {
                "@type": "cr:RecordSet",
                "@id": split,
                "name": split,
                "description": f"The {totals['splits'][split]['samples']} samples of split {split}, one "
                "record per member file; the records sharing a key form one sample.",
                "field": [
                    _field(
                        split,
                        "key",
                        "sc:Text",
                        "Sample key = scene id s{index:08d}.",
                        source=_from_files(files, "filename", KEY_REGEX),
                    ),
                    _field(
                        split,
                        "member",
                        "sc:Text",
                        "Member name (rgb.png, bg.png, layer_XX.png, ids.png, depth.npy, scene.json).",
                        source=_from_files(files, "fullpath", MEMBER_REGEX),
                        references={"field": {"@id": "members/name"}},
                    ),
                    _field(
                        split,
                        "content",
                        "sc:Text",
                        "The member's bytes: PNG, NPY or UTF-8 JSON (see members/format).",
                        source=_from_files(files, "content"),
                    ),
                ],
            }
        )

    doc: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "name": _identifier(sheet.title),
        "alternateName": sheet.title,
        "description": description(config.resolution, slots, totals["samples"]),
        "conformsTo": CONFORMS_TO,
        "citeAs": f"{sheet.title}, rendered with {manifest.generator} (dataset seed {config.seed}).",
        "creator": {"@type": "sc:Organization", "name": sheet.creator},
        "license": license_url(sheet.license) or sheet.license,
        "keywords": ["synthetic", "amodal segmentation", "object layers", "occlusion", "depth", "webdataset"],
        "version": "1.0.0",
        "isLiveDataset": False,
        "distribution": distribution,
        "recordSet": record_sets,
    }
    if sheet.url:
        doc["url"] = sheet.url
    doc.update({f"rai:{k}": v for k, v in rai(manifest.config).items()})
    return doc


def _identifier(title: str) -> str:
    """Croissant names must be identifiers-ish: keep letters, digits, ``-``, ``_`` and ``.``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", title).strip("-") or "dataset"
