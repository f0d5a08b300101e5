"""The Hugging Face Hub side of the dataset card: YAML front matter and the section that explains it.

The front matter's ``configs`` map each split to its shard tars, so ``datasets.load_dataset(DIR)`` (or the
Hub, once the folder is uploaded) reads the WebDataset shards as they are: every member becomes a column
(``rgb.png`` ... as images, ``depth.npy`` as a float array, ``scene.json`` as a struct), with the types
its ``dataset_info.features`` states (synth.dataset.features), never inferred from the first samples.
"""

from __future__ import annotations

from typing import Any

import yaml

from synth.dataset.croissant import CROISSANT
from synth.dataset.datasheet import Datasheet, size_category
from synth.dataset.features import sample_features
from synth.dataset.manifest import SHARDS_DIR, Manifest
from synth.dataset.plan import GenerationConfig

TASK_CATEGORIES = ["image-segmentation", "depth-estimation", "image-to-image"]
TASK_IDS = ["instance-segmentation"]
TAGS = ["synthetic", "amodal", "object-layers", "occlusion", "blender", "webdataset", "croissant"]


def front_matter(sheet: Datasheet, manifest: Manifest, splits: list[str]) -> str:
    """``---`` YAML ``---`` for the top of README.md (license, tasks, size, pretty_name, configs, and the
    features, so ``datasets`` reads them instead of inferring them from the first samples)."""
    config = GenerationConfig.from_dict(manifest.config)
    meta: dict[str, Any] = {
        "license": sheet.license,
        "pretty_name": sheet.title,
        "task_categories": TASK_CATEGORIES,
        "task_ids": TASK_IDS,
        "tags": TAGS,
        "size_categories": [size_category(manifest.totals()["samples"])],
        "configs": [
            {
                "config_name": "default",
                "default": True,
                "data_files": [{"split": s, "path": f"{SHARDS_DIR}/{s}-*.tar"} for s in splits],
            }
        ],
        "dataset_info": {
            "config_name": "default",
            "features": sample_features(config.resolution, config.layer_slots),
        },
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"


def hub_section(sheet: Datasheet, splits: list[str]) -> list[str]:
    """Card lines: loading with ``datasets``, the Croissant file, license and responsible-use notes."""
    first = splits[0] if splits else "train"
    return [
        "## Hugging Face `datasets` and Croissant",
        "",
        "The YAML header of this card maps each split to its shard tars (`configs` / `data_files`), so the",
        "folder loads by path (and on the Hub once uploaded) with no conversion:",
        "",
        "```python",
        "import datasets",
        "ds = datasets.load_dataset('DIR')  # " + ", ".join(splits),
        f"row = ds['{first}'][0]  # '__key__', 'rgb.png' (PIL) ..., 'depth.npy' (lists), 'scene.json' (dict)",
        "```",
        "",
        "The header's `dataset_info.features` types every column from the sample schema (the `scene.json`",
        "struct from the scene spec and ground-truth records), so `datasets` never infers them from the",
        "first samples (where a field such as an HDRI path may still be empty).",
        "",
        f"`{CROISSANT}` describes the same files in [Croissant](https://mlcommons.org/croissant/) 1.0",
        "with the responsible-AI (RAI) fields: one `FileObject` per shard (sha256 from the manifest), one",
        "`FileSet` of members per split, the `members` record set (the sample schema above) and one record",
        "set per split with one record per tar member: its sample `key`, `member` name and `content`; the",
        "records sharing a key are one sample. Validate it with",
        "`mlcroissant validate --jsonld DIR/croissant.json`.",
        "",
        "## License and responsible use",
        "",
        f"License: `{sheet.license}`; creator: {sheet.creator}. The data is synthetic rendering: no people,",
        "no personal or sensitive information. Its object families, materials, cameras and occlusion levels",
        "follow the sampler config in `manifest.json`, not the real world, and the scenes are selected to",
        "contain occlusion; expect a domain gap to real photos. The full RAI statements are in",
        f"`{CROISSANT}` (`rai:*`).",
        "",
    ]
