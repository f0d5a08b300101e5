"""``cobl synth publish``: dataset card, stats.json and a gallery that renders in headless Chromium.

The dataset here is synthetic but self-consistent (coloured discs composited over a gradient with
core.layers.composite, ground truth in scene.json's layout), so the test needs neither Blender nor Ray.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import schema
from core.errors import UserError
from core.groundtruth import CameraTruth, GroundTruth, ObjectTruth, OcclusionEdge
from core.layers import composite, to_channels_first, to_channels_last
from synth.dataset.cost import RunCost
from synth.dataset.manifest import SHARDS_DIR, Manifest, ShardRecord
from synth.dataset.plan import GenerationConfig, scene_id
from synth.dataset.publish import publish
from synth.dataset.shards import iter_shard, pad_layers, write_shard

RES = 48
SLOTS = 3
DISC_COLOURS = [(230, 25, 75), (0, 130, 200), (60, 180, 75)]
CHROMIUM = "/usr/bin/chromium"
HDRI, HDRI_SCENES = "/hdri/studio.hdr", (4, 5)  # train-000001: after the first samples of every shard
CORE_SECONDS = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 10.0]  # per scene index


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def disc_scene(index: int) -> dict[str, bytes]:
    """A scene of 1..3 overlapping discs; layer 0 is the front disc; visible fractions are exact."""
    n = 1 + index % SLOTS
    yy, xx = np.mgrid[0:RES, 0:RES]
    bg = np.stack([xx / RES, yy / RES, np.full_like(xx, 0.3, dtype=float)], -1)
    layers, amodal = [], []
    for k in range(n):
        cx, cy, r = 14 + 10 * k + index % 3, 18 + 6 * k, 11
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        rgba = np.zeros((RES, RES, 4))
        rgba[..., :3] = np.asarray(DISC_COLOURS[k]) / 255.0
        rgba[..., 3] = mask
        layers.append(rgba)
        amodal.append(mask)
    photo = to_channels_last(composite(to_channels_first(np.stack(layers)), to_channels_first(bg)))
    ids = np.zeros((RES, RES), np.uint8)
    for k in reversed(range(n)):
        ids[amodal[k]] = k + 1
    objects = tuple(
        ObjectTruth(
            name=f"disc{k}",
            layer=k,
            pass_index=k + 1,
            amodal_pixels=int(amodal[k].sum()),
            modal_pixels=int((ids == k + 1).sum()),
            visible_fraction=float((ids == k + 1).sum() / amodal[k].sum()),
            amodal_box=None,
            modal_box=None,
        )
        for k in range(n)
    )
    edges = tuple(
        OcclusionEdge(f"disc{a}", f"disc{b}", int((amodal[a] & amodal[b]).sum()))
        for a in range(n)
        for b in range(a + 1, n)
        if (amodal[a] & amodal[b]).any()
    )
    gt = GroundTruth(
        order=tuple(o.name for o in objects),
        objects=objects,
        occlusion_edges=edges,
        dropped_edges=(),
        camera=CameraTruth(
            K=((1.0, 0.0, 0.0),) * 3, world_to_camera=((1.0, 0.0, 0.0, 0.0),) * 4, width=RES, height=RES
        ),
        recomposition_psnr=60.0,
        ids_stack_agreement=1.0,
    ).to_dict()
    spec = {
        "scene_id": scene_id(index),
        "objects": [
            {"name": f"disc{k}", "asset": {"family": "disc"}, "material": {"kind": "plain"}} for k in range(n)
        ],
        # an HDRI world only in later samples (none of each shard's first ones has one)
        "world": {"kind": "hdri", "strength": 1.0, "hdri_path": HDRI}
        if index in HDRI_SCENES
        else {"kind": "sky", "strength": 1.0, "hdri_path": None},
    }
    depth = io.BytesIO()
    np.save(depth, np.where(ids > 0, 1.0 + ids, 3.0).astype(np.float32), allow_pickle=False)
    files = {
        schema.RGB: _png((photo * 255).round().astype(np.uint8)),
        schema.BACKGROUND: _png((bg * 255).round().astype(np.uint8)),
    }
    for k, rgba in enumerate(layers):
        files[schema.layer_name(k)] = _png((rgba * 255).round().astype(np.uint8))
    files[schema.IDS] = _png(ids)
    files[schema.DEPTH] = depth.getvalue()
    files[schema.SCENE] = json.dumps({"spec": spec, "ground_truth": gt}, sort_keys=True).encode()
    return files


def make_dataset(root: Path, n: int = 8) -> GenerationConfig:
    config = GenerationConfig(
        num_scenes=n,
        resolution=RES,
        splits={"train": 0.75, "val": 0.25},
        shard_size=4,
        sampler={"max_objects": SLOTS, "min_object_area": 0.025, "check_res": 48},
    )
    manifest = Manifest(config=config.to_dict())
    for plan in config.plan():
        samples = [(scene_id(i), pad_layers(disc_scene(i), SLOTS)) for i in plan.scenes]
        count, size, digest = write_shard(root / SHARDS_DIR / plan.name, samples)
        manifest.shards[plan.name] = ShardRecord(
            plan.name, plan.split, plan.index, count, size, digest, samples[0][0], samples[-1][0],
            core_seconds=[CORE_SECONDS[i % len(CORE_SECONDS)] for i in plan.scenes],
        )  # fmt: skip
    manifest.runs = [
        RunCost(workers=2, scenes_rendered=3, seconds=4.0, worker_restarts=1,
                failed_attempts={"worker lost (ActorDiedError)": 2}),
        RunCost(workers=2, scenes_rendered=n - 3, seconds=6.0, failed_attempts={"SamplingError": 1}),
    ]  # a killed run and its resumption  # fmt: skip
    manifest.complete = True
    manifest.save(root)
    return config


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("published")
    make_dataset(root)
    written = publish(root, gallery_samples=4, name="discs")
    assert [p.name for p in written] == ["README.md", "croissant.json", "stats.json", "index.html"]
    return root


def test_stats_match_the_ground_truth(published: Path) -> None:
    stats = json.loads((published / "stats.json").read_text())
    assert stats["scenes"] == 8
    assert stats["scenes_per_split"] == {"train": 6, "val": 2}
    assert stats["objects_per_scene"]["histogram"] == {"1": 3, "2": 3, "3": 2}
    expected = [
        o["visible_fraction"]
        for i in range(8)
        for o in json.loads(disc_scene(i)[schema.SCENE])["ground_truth"]["objects"]
    ]
    assert stats["objects"] == len(expected) == 3 + 6 + 6
    assert stats["visible_fraction"]["mean"] == pytest.approx(np.mean(expected))
    assert sum(stats["visible_fraction"]["histogram"]) == len(expected)
    assert sum(v["objects"] for v in stats["occlusion_levels"].values()) == len(expected)
    assert stats["occlusion_levels"]["none (<1%)"]["objects"] == 8  # the front disc is never occluded
    assert stats["asset_families"] == {"disc": 15}


def test_card_documents_schema_splits_stats_and_loading(published: Path) -> None:
    card = (published / "README.md").read_text()
    for member, (dtype, meaning) in schema.MEMBER_DOCS.items():
        assert dtype in card and meaning in card, member
    assert "`layer_00.png` … `layer_02.png`" in card
    assert "| train | 6 | 2 |" in card and "| val | 2 | 1 |" in card
    assert "Occlusion level" in card and "Visible fraction" in card and "Objects per scene" in card
    assert "webdataset" in card and "ray.data.read_webdataset" in card and "tarfile" in card
    assert "cobl synth run --out DIR --scenes 8" in card


def test_card_snippet_for_plain_tar_runs(published: Path) -> None:
    """The card's tarfile + PIL snippet works as written on this dataset."""
    card = (published / "README.md").read_text()
    snippet = card.split("With nothing but the standard library and Pillow:")[1].split("```python")[1]
    snippet = snippet.split("```")[0].replace("DIR/", f"{published}/")
    scope: dict = {}
    exec(compile(snippet, "card-snippet", "exec"), scope)  # noqa: S102 - our own generated code
    assert scope["scene"]["spec"]["scene_id"] == "s00000003"  # last sample of train-000000


def test_gallery_uses_relative_paths_that_exist(published: Path) -> None:
    page = (published / "gallery" / "index.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', page)
    assert srcs and all(not s.startswith(("/", "http", "file:")) for s in srcs)
    assert all((published / "gallery" / s).is_file() for s in srcs)
    # 4 samples: photo, background, ids, depth each, and one layer per object (1 + 2 + 3 + 1)
    assert len(srcs) == 4 * 4 + 7
    assert "visible 100%" in page and "layer 00 (front)" in page


def test_croissant_validates_with_mlcroissant(published: Path) -> None:
    """The reference library's validation (what `mlcroissant validate --jsonld` runs) finds no error."""
    mlc = pytest.importorskip("mlcroissant")
    path = published / "croissant.json"
    dataset = mlc.Dataset(str(path))  # raises mlc.ValidationError on any error
    issues = dataset.metadata.ctx.issues
    assert not issues.errors
    # datePublished is only recommended; publishing stays byte-reproducible without a date
    assert all("datePublished" in w for w in issues.warnings), issues.warnings
    doc = json.loads(path.read_text())
    assert "http://mlcommons.org/croissant/RAI/1.0" in doc["conformsTo"]
    for key in (
        "rai:dataCollection",
        "rai:personalSensitiveInformation",
        "rai:dataUseCases",
        "rai:dataLimitations",
        "rai:dataBiases",
    ):
        assert doc[key], key
    manifest = Manifest.load(published)
    tars = {d["contentUrl"]: d for d in doc["distribution"] if d["@type"] == "cr:FileObject"}
    assert set(tars) == {f"{SHARDS_DIR}/{name}" for name in manifest.shards}
    for url, entry in tars.items():
        assert (published / url).is_file() and entry["sha256"] == manifest.shards[Path(url).name].sha256
    file_sets = {d["@id"]: d for d in doc["distribution"] if d["@type"] == "cr:FileSet"}
    assert set(file_sets) == {"train-members", "val-members"}
    members = {r["@id"]: r for r in doc["recordSet"]}["members"]["data"]
    assert [row["members/name"] for row in members] == schema.member_names(SLOTS)


def test_card_front_matter_loads_every_split_with_datasets(published: Path, tmp_path: Path) -> None:
    """`datasets.load_dataset(DIR)` reads the shards through the card's configs; every field decodes."""
    yaml = pytest.importorskip("yaml")
    datasets = pytest.importorskip("datasets")
    card = (published / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "cc-by-4.0" and meta["pretty_name"] == "discs"
    assert "image-segmentation" in meta["task_categories"] and meta["size_categories"] == ["n<1K"]
    assert meta["configs"][0]["data_files"] == [
        {"split": "train", "path": "shards/train-*.tar"},
        {"split": "val", "path": "shards/val-*.tar"},
    ]
    ds = datasets.load_dataset(str(published), cache_dir=str(tmp_path / "hf-cache"))
    assert {name: len(split) for name, split in ds.items()} == {"train": 6, "val": 2}
    expected = {i: disc_scene(i) for i in range(8)}
    for split in ds.values():
        assert set(schema.member_names(SLOTS)) <= set(split.column_names)
        for row in split:
            i = int(row["__key__"][1:])
            truth = pad_layers(expected[i], SLOTS)
            for member in schema.member_names(SLOTS):
                if member.endswith(".png"):
                    with Image.open(io.BytesIO(truth[member])) as im:
                        assert np.array_equal(np.asarray(row[member]), np.asarray(im)), member
            depth = np.load(io.BytesIO(truth[schema.DEPTH]))
            assert np.array_equal(np.asarray(row[schema.DEPTH], np.float32), depth)
            assert row[schema.SCENE]["spec"]["scene_id"] == row["__key__"]
            assert (
                row[schema.SCENE]["ground_truth"]["order"]
                == json.loads(truth[schema.SCENE])["ground_truth"]["order"]
            )
            hdri = row[schema.SCENE]["spec"]["world"]["hdri_path"]
            assert hdri == (HDRI if i in HDRI_SCENES else None), (i, hdri)


def test_without_the_card_features_datasets_infers_them_and_fails_on_later_hdris(
    published: Path, tmp_path: Path
) -> None:
    """The premise of the test above: the same folder without `dataset_info` in the card's header makes
    `datasets` infer the features from the first samples (no HDRI: a null type), and the later samples
    that have an HDRI path fail to load."""
    yaml = pytest.importorskip("yaml")
    datasets = pytest.importorskip("datasets")
    copy = tmp_path / "no-features"
    shutil.copytree(published, copy)
    _, header, body = (copy / "README.md").read_text().split("---\n", 2)
    meta = yaml.safe_load(header)
    assert meta.pop("dataset_info")["features"]
    (copy / "README.md").write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + body)
    with pytest.raises(datasets.exceptions.DatasetGenerationError):
        datasets.load_dataset(str(copy), cache_dir=str(tmp_path / "hf-cache"))


CROISSANT_RECORDS = """
import hashlib, json, sys
import mlcroissant as mlc
dataset = mlc.Dataset(sys.argv[1])
out = {}
for split in sys.argv[2:]:
    rows = out[split] = []
    for record in dataset.records(split):
        key, member = (record[f"{split}/{f}"].decode() for f in ("key", "member"))
        rows.append([key, member, hashlib.sha256(record[f"{split}/content"]).hexdigest()])
print(json.dumps(out))
"""


def test_croissant_records_rebuild_every_sample(published: Path, tmp_path: Path) -> None:
    """`mlcroissant` yields, per split, records that carry each tar member's sample key intact, its member
    name and its bytes: grouped by key they are exactly the shards' samples. (Run with its own
    CROISSANT_CACHE: mlcroissant keeps extracted tars by URL, and a reused temporary path would be read
    from an earlier run's extraction.)"""
    pytest.importorskip("mlcroissant")
    import hashlib

    env = dict(os.environ, CROISSANT_CACHE=str(tmp_path / "croissant-cache"))
    run = subprocess.run(
        [sys.executable, "-c", CROISSANT_RECORDS, str(published / "croissant.json"), "train", "val"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    records = json.loads(run.stdout.strip().splitlines()[-1])
    manifest = Manifest.load(published)
    for split, rows in records.items():
        rebuilt: dict[str, dict[str, str]] = {}
        for key, member, digest in rows:
            assert member not in rebuilt.setdefault(key, {}), (key, member)
            rebuilt[key][member] = digest
        stored = {
            key: {m: hashlib.sha256(data).hexdigest() for m, data in members.items()}
            for rec in manifest.shards.values()
            if rec.split == split
            for key, members in iter_shard(published / SHARDS_DIR / rec.name)
        }
        assert len(stored) == {"train": 6, "val": 2}[split]
        assert rebuilt == stored, split


def test_card_and_publish_show_the_cost_and_the_minimum_object_area(
    published: Path, tmp_path: Path, capsys
) -> None:
    """The card states the manifest's cost figures and the sampler's minimum object area;
    `cobl synth publish` prints the cost."""
    card = (published / "README.md").read_text()
    cores = np.asarray(CORE_SECONDS)
    assert "8 scenes rendered in 10.0 s of wall time over 2 run(s) (0.800 scenes/s)" in card
    assert f"median {np.median(cores):.2f}, p95 {np.percentile(cores, 95):.2f}" in card
    assert (
        "Blender worker restarts: 1; worker start failures: 0; failed scene attempts: 3 "
        "(SamplingError 1, worker lost (ActorDiedError) 2)" in card
    )
    assert "covers at least 2.50% of the image: the sampler's `min_object_area` = 0.025" in card
    cost = json.loads((published / "manifest.json").read_text())["cost"]
    assert cost["scenes_per_second"] == 0.8 and cost["core_seconds_per_scene"]["median"] == np.median(cores)
    assert cost["failure_causes"] == {"SamplingError": 1, "worker lost (ActorDiedError)": 2}

    from app.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(published, copy)
    assert main(["synth", "publish", str(copy)]) == 0
    printed = capsys.readouterr().out
    assert "(0.800 scenes/s)" in printed and "failed scene attempts: 3" in printed
    assert f"p95 {np.percentile(cores, 95):.2f}" in printed


def test_the_card_command_rebuilds_the_generation_config(tmp_path: Path) -> None:
    """The card's `cobl synth run ... --sampler-config sampler.json` (sampler.json = manifest.json's
    config.sampler) gives back exactly the recorded generation config, so the shards come out the same."""
    import shlex

    from app.cli import COMMAND_MODULES
    from app.parser import build_parser
    from app.synth_options import generation_config
    from synth.dataset.plan import make_config, parse_splits
    from synth.dataset.publish import _command

    config = make_config(
        20, seed=5, resolution=48, samples=3, splits={"train": 0.5, "val": 0.5}, shard_size=4,
        sampler_overrides={"min_objects": 2, "max_objects": 3, "completion_fraction": 0.5, "min_visible": 0.3,
                           "denoise": True, "lights": [2, 2]},
    )  # fmt: skip
    (tmp_path / "sampler.json").write_text(json.dumps(config.sampler))
    argv = shlex.split(_command(config).replace("sampler.json", str(tmp_path / "sampler.json")))
    assert argv[:3] == ["cobl", "synth", "run"]
    args = build_parser(COMMAND_MODULES).parse_args(argv[1:])
    plan = {"splits": parse_splits(args.split), "shard_size": args.shard_size}
    assert generation_config(args, args.scenes, **plan) == config


def test_publish_refuses_a_corrupt_dataset(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=4)
    shard = next((tmp_path / SHARDS_DIR).glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[:-1024])
    with pytest.raises(UserError, match="does not verify"):
        publish(tmp_path)
    assert not (tmp_path / "README.md").exists()


@pytest.fixture(scope="session")
def chromium() -> str:
    """An already installed Chromium; the test never installs one (``make browser`` or docs/dataset.md)."""
    for candidate in (CHROMIUM, "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(candidate)
        if found:
            return found
    pytest.skip("no Chromium installed (`make browser` installs it); gallery screenshot not taken")


def test_gallery_renders_in_headless_chromium(published: Path, chromium: str, tmp_path: Path) -> None:
    shot = tmp_path / "gallery.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,1000",
        "--hide-scrollbars",
        (published / "gallery" / "index.html").as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    keep = os.environ.get("COBL_GALLERY_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    # the discs' colours only reach the screen if the <img> tags loaded the extracted PNGs
    for colour in DISC_COLOURS:
        near = np.abs(pixels - np.asarray(colour)).sum(axis=1) < 12
        assert near.sum() > 500, f"colour {colour} hardly on screen: images did not load"
