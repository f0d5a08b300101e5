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
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import schema
from core.errors import UserError
from core.groundtruth import CameraTruth, GroundTruth, ObjectTruth, OcclusionEdge
from core.layers import composite, to_channels_first, to_channels_last
from synth.dataset.manifest import SHARDS_DIR, Manifest, ShardRecord
from synth.dataset.plan import GenerationConfig, scene_id
from synth.dataset.publish import publish
from synth.dataset.shards import pad_layers, write_shard

RES = 48
SLOTS = 3
DISC_COLOURS = [(230, 25, 75), (0, 130, 200), (60, 180, 75)]
CHROMIUM = "/usr/bin/chromium"


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
        sampler={"max_objects": SLOTS},
    )
    manifest = Manifest(config=config.to_dict())
    for plan in config.plan():
        samples = [(scene_id(i), pad_layers(disc_scene(i), SLOTS)) for i in plan.scenes]
        count, size, digest = write_shard(root / SHARDS_DIR / plan.name, samples)
        manifest.shards[plan.name] = ShardRecord(
            plan.name, plan.split, plan.index, count, size, digest, samples[0][0], samples[-1][0]
        )
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
