"""What a published dataset says about itself beyond its numbers: license, creator, description and the
responsible-AI statements, shared by the dataset card (``card.py``) and the Croissant file (``croissant.py``).

Everything is derived from the manifest's generation config, so the statements follow what was actually
done: a dataset rendered from user-supplied meshes, textures or HDRIs says so, and says that those files'
licenses apply to the renders too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_LICENSE = "cc-by-4.0"  # SPDX-style id, as the Hugging Face card and Croissant expect
DEFAULT_CREATOR = "cobl contributors"
LICENSE_URLS = {
    "cc-by-4.0": "https://creativecommons.org/licenses/by/4.0/",
    "cc0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "cc-by-sa-4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
    "apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0",
    "mit": "https://opensource.org/licenses/MIT",
}
# The sampler config keys that point at files from outside the project (None = not used).
EXTERNAL_INPUTS = {
    "assets_dir": "mesh files",
    "texture_dir": "texture images",
    "hdri_dir": "HDRI environment maps",
}


@dataclass(frozen=True)
class Datasheet:
    title: str
    license: str = DEFAULT_LICENSE
    creator: str = DEFAULT_CREATOR
    url: str | None = None  # where the dataset is hosted, when known


def external_inputs(config: dict[str, Any]) -> list[str]:
    """Human names of the outside files the sampler drew from (empty: everything procedural)."""
    sampler = config.get("sampler") or {}
    return [what for key, what in EXTERNAL_INPUTS.items() if sampler.get(key)]


def license_url(license_id: str) -> str | None:
    return LICENSE_URLS.get(license_id.lower())


def size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` bucket for ``n`` samples."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    for bound, name in bounds:
        if n < bound:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def description(resolution: int, slots: int, scenes: int) -> str:
    return (
        f"Synthetic tabletop scenes rendered with Blender (Cycles) for CObL (Concurrent Object Layers): "
        f"{scenes} scenes at {resolution}x{resolution} px, each a photo with its ground-truth decomposition "
        f"into {slots} occlusion-ordered, amodally complete RGBA object layers (front to back) and a clean "
        f"background, plus the modal instance map, metric depth and the full scene description."
    )


def rai(config: dict[str, Any]) -> dict[str, Any]:
    """Croissant RAI (``rai:``) statements that apply to a rendered dataset, keyed by RAI property name."""
    outside = external_inputs(config)
    sources = (
        "procedurally generated meshes, materials, lights and world backgrounds"
        if not outside
        else "procedural generators and user-supplied " + ", ".join(outside)
    )
    collection = (
        "Synthetic rendering: no data was collected from people or the world. Each scene is sampled from a "
        f"seeded generator ({sources}), placed on a table with rejection sampling for the requested "
        "occlusion, and rendered with Blender Cycles; the layers are rendered one object at a time, so "
        "the ground truth is exact by construction, not annotated."
    )
    limitations = (
        "Synthetic domain: simple tabletop scenes, a bounded number of objects, one table and a sampled "
        "world; object shapes come from a fixed set of procedural families. Models trained only on it may "
        "not transfer to real photos (domain gap in materials, lighting, clutter and camera noise). "
        "Renders use a small number of path-tracing samples in demo-size datasets, so they are noisy."
    )
    if outside:
        limitations += (
            f" This dataset was rendered with user-supplied {', '.join(outside)}: their licenses and "
            "contents carry over to the renders."
        )
    return {
        "dataCollection": collection,
        "dataCollectionType": ["Software Collection", "Others"],
        "dataCollectionRawData": "None: every sample is rendered; the generation config in manifest.json "
        "and the per-scene seed reproduce it byte for byte.",
        "dataAnnotationProtocol": "No human annotation: layers, instance map, depth, occlusion graph and "
        "visible fractions are computed by the renderer and synth.render.groundtruth from the scene itself.",
        "machineAnnotationTools": ["Blender (Cycles)", "cobl synth (synth.render.groundtruth)"],
        "personalSensitiveInformation": "None. The scenes contain no people, faces, text written by "
        "people, locations or any personal data.",
        "dataUseCases": "Training and evaluating amodal scene decomposition: predicting occlusion-ordered "
        "object layers and a background from one photo (CObL), amodal instance segmentation, occlusion "
        "ordering and depth estimation; benchmarking recomposition quality.",
        "dataLimitations": limitations,
        "dataBiases": "The distribution of object families, sizes, materials, camera elevations and "
        "occlusion levels is set by the sampler config in manifest.json, not by the world; the scenes are "
        "filtered to contain occlusion, so heavily occluded layouts are over-represented relative to "
        "everyday photos. See stats.json for the realised distributions.",
        "dataSocialImpact": "Low direct risk: no people or personal data. Indirectly, better amodal "
        "perception can serve robotics and image editing alike.",
        "dataReleaseMaintenancePlan": "Static release: the shards are immutable and checked by sha256 in "
        "manifest.json (`cobl synth verify`); a new release is a new dataset directory.",
    }
