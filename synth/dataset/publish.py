"""``cobl synth publish DIR``: the dataset card (``README.md``, Hub-ready YAML header), ``croissant.json``,
``stats.json`` and a static gallery.

Everything is derived from the verified shards and the manifest: statistics read only the ``scene.json``
members (tar headers let us seek past the images), the gallery extracts the first few samples.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core import schema
from core.atomic import write_text_atomic
from core.errors import UserError
from synth.dataset.card import front_matter, hub_section
from synth.dataset.cost import cost_lines
from synth.dataset.croissant import CROISSANT, croissant_metadata
from synth.dataset.datasheet import DEFAULT_CREATOR, DEFAULT_LICENSE, Datasheet
from synth.dataset.gallery import write_gallery
from synth.dataset.manifest import SHARDS_DIR, Manifest, verify
from synth.dataset.plan import GenerationConfig
from synth.dataset.shards import iter_shard
from synth.dataset.stats import COMPLETION_HIDDEN, OCCLUSION_LEVELS, StatsAccumulator


def iter_scene_docs(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(key, scene.json dict)`` for every sample of a shard, without reading the image members."""
    suffix = "." + schema.SCENE
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if info.isfile() and info.name.endswith(suffix):
                f = tar.extractfile(info)
                assert f is not None
                yield info.name[: -len(suffix)], json.loads(f.read())


def _ordered_shards(manifest: Manifest) -> list:
    order = list(manifest.config.get("splits", {}))
    return sorted(
        manifest.shards.values(), key=lambda r: (order.index(r.split) if r.split in order else 99, r.index)
    )


def publish(
    root: str | os.PathLike,
    gallery_samples: int = 12,
    name: str | None = None,
    license: str = DEFAULT_LICENSE,
    creator: str = DEFAULT_CREATOR,
    url: str | None = None,
) -> list[Path]:
    """Write README.md, croissant.json, stats.json and gallery/ into ``root``; refuses a dataset that fails
    ``verify``."""
    root = Path(root)
    report = verify(root)
    if not report.passed:
        bad = report.missing + report.corrupt + (["job incomplete"] if report.incomplete else [])
        raise UserError(f"{root}: dataset does not verify ({'; '.join(bad[:3])}); run `cobl synth verify`")
    manifest = Manifest.load(root)
    config = GenerationConfig.from_dict(manifest.config)
    shards = _ordered_shards(manifest)

    acc = StatsAccumulator(tuple(config.sampler.get("completion_hidden", COMPLETION_HIDDEN)))
    for rec in shards:
        for key, doc in iter_scene_docs(root / SHARDS_DIR / rec.name):
            acc.add(rec.split, doc, f"{rec.name}: {key}.{schema.SCENE}")
    stats = acc.result()
    stats_path = root / "stats.json"
    write_text_atomic(stats_path, json.dumps(stats, indent=2) + "\n")

    samples: list[tuple[str, str, dict[str, bytes]]] = []
    for rec in shards:
        for key, members in iter_shard(root / SHARDS_DIR / rec.name):
            if len(samples) >= gallery_samples:
                break
            samples.append((rec.split, key, members))
    title = name or root.resolve().name
    gallery = write_gallery(
        root / "gallery",
        samples,
        f"{title}: sample gallery",
        f"{len(samples)} of {stats['scenes']} scenes, {config.resolution}x{config.resolution}, "
        f"layers front to back over a checkerboard; visible = modal / amodal pixels",
    )
    sheet = Datasheet(title=title, license=license, creator=creator, url=url)
    splits = list(dict.fromkeys(rec.split for rec in shards))
    croissant_path = root / CROISSANT
    croissant = croissant_metadata(sheet, manifest, shards)
    write_text_atomic(croissant_path, json.dumps(croissant, indent=2) + "\n")
    card_path = root / "README.md"
    card = dataset_card(title, manifest, stats, extra=hub_section(sheet, splits))
    write_text_atomic(card_path, front_matter(sheet, manifest, splits) + card)
    return [card_path, croissant_path, stats_path, gallery]


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _command(config: GenerationConfig) -> str:
    """The command that renders these shards again, byte for byte (sampler.json: manifest.json's
    ``config.sampler``, which holds every sampler setting, flagged or not)."""
    split = ",".join(f"{k}={v:g}" for k, v in config.splits.items())
    sampler = config.sampler_config()
    flags = [
        f"--out DIR --scenes {config.num_scenes} --seed {config.seed} --resolution {config.resolution}",
        f"--samples {config.samples} --engine {config.engine} --device {config.device}",
        f"--split {split} --shard-size {config.shard_size}",
        f"--min-objects {sampler.min_objects} --max-objects {sampler.max_objects}",
    ]
    if sampler.completion_fraction:
        flags.append(f"--completion-fraction {sampler.completion_fraction:g}")
    return "cobl synth run " + " ".join(flags) + " --sampler-config sampler.json"


def _sampling_line(config: GenerationConfig) -> str:
    """The smallest object the sampler allowed, as the manifest's generation config records it."""
    area = config.sampler.get("min_object_area")
    if area is None:
        return "- minimum object area: not recorded in this manifest's sampler config"
    check = config.sampler.get("check_res", "?")
    return (
        f"- every object's amodal mask covers at least {area:.2%} of the image: the sampler's "
        f"`min_object_area` = {area:g} (measured at its {check}² check resolution)"
    )


def dataset_card(title: str, manifest: Manifest, stats: dict[str, Any], extra: list[str] = ()) -> str:
    config = GenerationConfig.from_dict(manifest.config)
    totals = manifest.totals()
    res = config.resolution
    slots = config.layer_slots
    lines = [
        f"# {title}",
        "",
        "Synthetic tabletop scenes rendered with Blender (Cycles) for **CObL** "
        "(Concurrent Object Layers): each",
        "sample is a photo together with its ground-truth decomposition into an occlusion-ordered stack of",
        "amodally complete RGBA object layers (front to back) and a clean background, "
        "plus the modal instance map,",
        "depth and the full scene description. Layers composite back to the photo with the standard *over*",
        "operator (`core.layers.composite`).",
        "",
        f"- **{stats['scenes']} scenes**, {res}x{res} px, {config.samples} samples/px ({config.engine}), "
        f"{totals['shards']} WebDataset shards, {_fmt_bytes(totals['bytes'])}",
        f"- generator: `{manifest.generator}`; dataset seed {config.seed}",
        f"- {slots} layer slots per sample (the most objects a scene can have); unused "
        f"slots are fully transparent",
        _sampling_line(config),
        "",
        "## Files",
        "",
        "```",
        "manifest.json              every shard: split, samples, bytes, sha256; totals; "
        "the full generation config",
        "shards/{split}-{index:06d}.tar   WebDataset shards (plain tar), one sample per scene",
        "stats.json                 the statistics below, machine-readable",
        "gallery/index.html         a static gallery of samples (open it in a browser, no server needed)",
        "croissant.json             Croissant 1.0 + RAI metadata (JSON-LD) describing the shards",
        "```",
        "",
        "Check integrity with `cobl synth verify DIR` (re-hashes every shard against the manifest).",
        "",
        "## Sample schema",
        "",
        "Each sample's key is the scene id `s{index:08d}`; its members (tar names "
        "`KEY.MEMBER`) are, in order:",
        "",
        "| member | dtype / format | meaning |",
        "|---|---|---|",
    ]
    for member, (dtype, meaning) in schema.MEMBER_DOCS.items():
        shown = f"`layer_00.png` … `layer_{slots - 1:02d}.png`" if member == "layer_XX.png" else f"`{member}`"
        lines.append(f"| {shown} | {dtype} | {meaning} |")
    lines += [
        "",
        f"All images are {res}x{res}. `layer_k.png` is straight (not premultiplied) "
        f"alpha; where alpha is 0 its RGB is",
        'the neutral grey `core.layers.EMPTY_RGB`. `scene.json` is `{"spec": SceneSpec, '
        '"ground_truth": {...}}`',
        "with, per layer, the object name, pass index, amodal/modal pixel counts and "
        "boxes, `visible_fraction`",
        "(modal / amodal pixels), the occlusion edges (front, back, pixels), camera "
        "intrinsics/extrinsics and the",
        "recomposition PSNR of the layers against the photo.",
        "",
        "## Splits",
        "",
        "| split | scenes | shards | bytes |",
        "|---|---|---|---|",
    ]
    for split, t in totals["splits"].items():
        lines.append(f"| {split} | {t['samples']} | {t['shards']} | {_fmt_bytes(t['bytes'])} |")
    lines += [
        "",
        "Splits are contiguous ranges of scene indices (in the order above) with exact "
        "counts from the fractions "
        + ", ".join(f"{k}={v:g}" for k, v in config.splits.items())
        + ".",
        "",
        "## Statistics",
        "",
        "Objects per scene:",
        "",
        "| objects | scenes |",
        "|---|---|",
    ]
    for k, v in stats["objects_per_scene"]["histogram"].items():
        lines.append(f"| {k} | {v} |")
    vf = stats["visible_fraction"]
    lines += [""]
    if vf.get("count"):
        lines.append(
            f"Visible fraction of objects (modal / amodal pixels): mean {vf['mean']:.3f}, median "
            f"{vf['median']:.3f}, min {vf['min']:.3f}, over {vf['count']} objects."
        )
        lines += ["", "| visible fraction | objects |", "|---|---|"]
        for (lo, hi), count in zip(vf["histogram_bins"], vf["histogram"], strict=True):
            lines.append(f"| {lo:.1f}–{hi:.1f} | {count} |")
    lines += [
        "",
        "Occlusion level of an object = 1 − visible fraction:",
        "",
        "| occlusion level | objects | fraction |",
        "|---|---|---|",
    ]
    for name, _, _ in OCCLUSION_LEVELS:
        level = stats["occlusion_levels"][name]
        lines.append(f"| {name} | {level['objects']} | {level['fraction']:.3f} |")
    completion = stats.get("scenes_with_completion_object")
    if completion is not None:
        lo, hi = completion["hidden_band"]
        asked = config.sampler.get("completion_fraction", 0.0)
        band = f"{lo:.0%}–{hi:.0%}"
        wanted = (
            f"a completion_fraction of {asked:g} of the scenes holding an object {band} hidden"
            if asked
            else "no completion_fraction (scenes need not hold a half-hidden object)"
        )
        lines += [
            "",
            "Occlusion distribution asked of the sampler: at least "
            f"{config.sampler.get('min_occluded_fraction')} of each scene's objects hidden by "
            f"{config.sampler.get('occluded_threshold')} or more, and {wanted}. Measured: "
            f"{completion['scenes']} of {stats['scenes']} scenes ({completion['fraction']:.1%}) hold an "
            f"object {band} hidden; {stats.get('objects_over_90_visible', 0)} of {stats['objects']} objects "
            "are more than 90 % visible.",
        ]
    edges = stats["occlusion_edges_per_scene"]
    if edges.get("count"):
        lines += [
            "",
            f"Occlusion edges (pairs where one object hides part of another) per scene: mean "
            f"{edges['mean']:.2f}, max {edges['max']:.0f}; scenes whose occlusion graph is acyclic (order "
            f"from occlusion, not depth tie-breaking): {stats['scenes_with_acyclic_occlusion']} of "
            f"{stats['scenes']}.",
        ]
    psnr = stats["recomposition_psnr_db"]
    if psnr.get("count"):
        lines += [
            "",
            f"Recomposition PSNR (layers over background vs. photo): mean {psnr['mean']:.1f} dB, "
            f"min {psnr['min']:.1f} dB.",
        ]
    if stats["asset_families"]:
        lines += [
            "",
            "Asset families: " + ", ".join(f"{k} {v}" for k, v in stats["asset_families"].items()) + ".",
        ]
    if stats["material_kinds"]:
        lines += [
            "",
            "Material kinds: " + ", ".join(f"{k} {v}" for k, v in stats["material_kinds"].items()) + ".",
        ]
    first = next(iter(totals["splits"]), "train")
    lines += ["", "## What it cost to render", "", *(f"- {line}" for line in cost_lines(manifest.cost()))]
    lines += ["", "(`manifest.json`: `cost`, and per run `runs`; per scene `shards[].core_seconds`.)"]
    lines += [
        "",
        "## Loading",
        "",
        "With [webdataset](https://github.com/webdataset/webdataset) (keep each PNG's "
        "own mode: RGB, RGBA or grey):",
        "",
        "```python",
        "import io, json, glob",
        "import numpy as np, webdataset as wds",
        "from PIL import Image",
        "",
        "def png(data):",
        "    return np.asarray(Image.open(io.BytesIO(data)))",
        "",
        f"urls = sorted(glob.glob('DIR/shards/{first}-*.tar'))",
        "ds = wds.WebDataset(urls, shardshuffle=False).decode(",
        "    wds.handle_extension('png', png), wds.handle_extension('npy', lambda b: "
        "np.load(io.BytesIO(b))),",
        "    wds.handle_extension('json', json.loads))",
        "for sample in ds:",
        "    photo, layer0, depth = sample['rgb.png'], sample['layer_00.png'], sample['depth.npy']",
        "    order = sample['scene.json']['ground_truth']['order']  # object names, front to back",
        "```",
        "",
        "With Ray Data (every sample has the same members, so the columns line up):",
        "",
        "```python",
        "import ray",
        f"ds = ray.data.read_webdataset('DIR/shards/', decoder=None)  # or a list of {first}-*.tar paths",
        "row = ds.take(1)[0]  # columns: __key__, rgb.png, bg.png, layer_00.png, ..., "
        "ids.png, depth.npy, scene.json",
        "```",
        "",
        "With nothing but the standard library and Pillow:",
        "",
        "```python",
        "import io, json, tarfile",
        "from PIL import Image",
        "",
        f"with tarfile.open('DIR/shards/{first}-000000.tar') as tar:",
        "    for info in tar:",
        "        key, member = info.name.split('.', 1)",
        "        data = tar.extractfile(info).read()",
        "        if member.endswith('.png'):",
        "            image = Image.open(io.BytesIO(data))  # mode RGB, RGBA (layers) or L (ids)",
        "        elif member == 'scene.json':",
        "            scene = json.loads(data)",
        "```",
        "",
        "Within the project: `cobl.data.make_dataset('DIR/shards/train-*.tar')` decodes "
        "samples into tensors.",
        "",
        *extra,
        "## Reproducing",
        "",
        "```",
        _command(config),
        "```",
        "",
        "where `sampler.json` is `manifest.json`'s `config.sampler` (every sampler setting; e.g.",
        "`jq .config.sampler DIR/manifest.json > sampler.json`). The same command gives byte-identical",
        "shards.",
        "",
        "Scene `i` has id `s{i:08d}` and seed `scene_seed(SEED, i)` = the first 64-bit word of numpy",
        "`SeedSequence([SEED, i]).generate_state(1, uint64)`, shifted right by one bit",
        "(`synth.dataset.plan.scene_seed`; its `scene.json` records the seed used). Any scene re-renders",
        "alone: `cobl synth scene --seed SEED --index i` with the options above writes exactly its sample's",
        "members, and `cobl synth rerender DIR --index i --check` does so from the manifest and compares.",
        "",
    ]
    return "\n".join(lines)
