"""Shards, manifest, verify, planning and resume bookkeeping: pure parts on synthetic samples (no bpy/Ray)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import schema
from core.errors import UserError
from synth.dataset.generate import prepare_output
from synth.dataset.manifest import SHARDS_DIR, Manifest, ShardRecord, verify
from synth.dataset.plan import (
    GenerationConfig,
    parse_splits,
    plan_shards,
    scene_id,
    scene_index,
    scene_seed,
    split_counts,
)
from synth.dataset.shards import empty_layer_png, iter_shard, pad_layers, read_shard, sha256_file, write_shard

RES = 16
SLOTS = 3


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_files(index: int, num_objects: int) -> dict[str, bytes]:
    """Files shaped like a renderer's output: one layer per object, everything else per schema."""
    rng = np.random.default_rng(index)
    files = {
        schema.RGB: _png(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)),
        schema.BACKGROUND: _png(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)),
    }
    for k in range(num_objects):
        files[schema.layer_name(k)] = _png(rng.integers(0, 256, (RES, RES, 4), dtype=np.uint8))
    files[schema.IDS] = _png(rng.integers(0, num_objects + 1, (RES, RES), dtype=np.uint8))
    buf = io.BytesIO()
    np.save(buf, rng.random((RES, RES)).astype(np.float32), allow_pickle=False)
    files[schema.DEPTH] = buf.getvalue()
    gt = {"objects": [{"name": f"o{k}", "visible_fraction": 1.0 / (k + 1)} for k in range(num_objects)]}
    files[schema.SCENE] = json.dumps({"spec": {"scene_id": scene_id(index)}, "ground_truth": gt}).encode()
    return files


def synthetic_samples(indices) -> list[tuple[str, dict[str, bytes]]]:
    return [(scene_id(i), pad_layers(synthetic_files(i, 1 + i % SLOTS), SLOTS)) for i in indices]


# -- padding -------------------------------------------------------------------------------------------------


def test_pad_layers_fills_empty_slots_with_transparent_pngs_in_schema_order() -> None:
    padded = pad_layers(synthetic_files(0, 1), SLOTS)
    assert list(padded) == schema.member_names(SLOTS)
    for k in (1, 2):
        with Image.open(io.BytesIO(padded[schema.layer_name(k)])) as im:
            assert im.mode == "RGBA" and im.size == (RES, RES)
            assert np.asarray(im)[..., 3].max() == 0
    assert padded[schema.layer_name(1)] == empty_layer_png(RES, RES)


def test_pad_layers_rejects_bad_scenes() -> None:
    with pytest.raises(ValueError, match="layer slots"):
        pad_layers(synthetic_files(0, 4), SLOTS)
    files = synthetic_files(0, 2)
    del files[schema.DEPTH]
    with pytest.raises(ValueError, match="depth.npy"):
        pad_layers(files, SLOTS)
    files = synthetic_files(0, 2)
    files[schema.layer_name(2)] = files.pop(schema.layer_name(1))
    with pytest.raises(ValueError, match="contiguous"):
        pad_layers(files, SLOTS)


# -- writing and the three ways of reading ------------------------------------------------------------------


def test_shard_bytes_are_deterministic_and_metadata_fixed(tmp_path: Path) -> None:
    samples = synthetic_samples(range(4))
    a = write_shard(tmp_path / "a" / "train-000000.tar", samples)
    b = write_shard(tmp_path / "b" / "train-000000.tar", samples)
    assert a == b and a[0] == 4
    assert a[2] == sha256_file(tmp_path / "a" / "train-000000.tar")
    assert a[1] == (tmp_path / "a" / "train-000000.tar").stat().st_size
    with tarfile.open(tmp_path / "a" / "train-000000.tar") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos[: len(schema.member_names(SLOTS))]] == [
        f"{scene_id(0)}.{m}" for m in schema.member_names(SLOTS)
    ]
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {(0, 0, 0, "", "", 0o444)}
    assert not list((tmp_path / "a").glob("*.tmp"))  # the temp name was renamed away


def test_tarfile_pil_reader_round_trips(tmp_path: Path) -> None:
    samples = synthetic_samples(range(5))
    write_shard(tmp_path / "s.tar", samples)
    back = read_shard(tmp_path / "s.tar")
    assert list(back) == [k for k, _ in samples]
    for key, members in samples:
        assert back[key] == dict(members)
    with Image.open(io.BytesIO(back[scene_id(1)][schema.layer_name(0)])) as im:
        assert im.mode == "RGBA"


def test_webdataset_reads_samples_with_their_own_png_modes(tmp_path: Path) -> None:
    import webdataset as wds

    samples = synthetic_samples(range(6))
    write_shard(tmp_path / "train-000000.tar", samples)

    def png(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im).copy()

    ds = wds.WebDataset(str(tmp_path / "train-000000.tar"), shardshuffle=False).decode(
        wds.handle_extension("png", png),
        wds.handle_extension("npy", lambda b: np.load(io.BytesIO(b))),
        wds.handle_extension("json", json.loads),
    )
    got = list(ds)
    assert [s["__key__"] for s in got] == [k for k, _ in samples]
    s = got[2]
    assert s["rgb.png"].shape == (RES, RES, 3)
    assert s["layer_00.png"].shape == (RES, RES, 4)
    assert s["ids.png"].shape == (RES, RES)
    assert s["depth.npy"].dtype == np.float32
    assert s["scene.json"]["spec"]["scene_id"] == scene_id(2)
    assert {k for k in s if not k.startswith("__")} == set(schema.member_names(SLOTS))


def test_iter_shard_rejects_a_split_sample(tmp_path: Path) -> None:
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("a.rgb.png", "b.rgb.png", "a.bg.png"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="split across"):
        list(iter_shard(path))


# -- planning ------------------------------------------------------------------------------------------------


def test_scene_seed_and_id() -> None:
    assert scene_seed(0, 5) == scene_seed(0, 5)
    seeds = {scene_seed(7, i) for i in range(2000)}
    assert len(seeds) == 2000 and all(0 <= s < 2**63 for s in seeds)
    assert scene_seed(7, 1) != scene_seed(8, 1)
    assert scene_id(42) == "s00000042" and scene_index("s00000042") == 42
    assert "." not in scene_id(10**7)


def test_splits_and_shards_cover_every_scene_once() -> None:
    splits = parse_splits("train=0.9,val=0.05,test=0.05")
    assert list(splits) == ["train", "val", "test"]
    assert split_counts(100, splits) == {"train": 90, "val": 5, "test": 5}
    assert sum(split_counts(7, splits).values()) == 7
    plans = plan_shards(25, {"train": 0.8, "val": 0.2}, shard_size=6)
    assert [p.name for p in plans] == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
        "train-000003.tar",
        "val-000000.tar",
    ]
    indices = [i for p in plans for i in p.scenes]
    assert indices == list(range(25))
    assert [len(p.scenes) for p in plans] == [6, 6, 6, 2, 5]


@pytest.mark.parametrize(
    "bad", ["train=0.5", "train=0.5,val", "Train=1", "train=1.5,val=-0.5", "a=0.5,a=0.5"]
)
def test_bad_split_is_a_user_error(bad: str) -> None:
    with pytest.raises(UserError, match="^split: ") as err:
        parse_splits(bad)
    assert err.value.option == "split" and err.value.as_flag().startswith("--split: ")


# -- manifest, verify, resume ------------------------------------------------------------------------------


def _config(n: int = 7, shard_size: int = 3) -> GenerationConfig:
    return GenerationConfig(
        num_scenes=n,
        resolution=RES,
        splits={"train": 1.0},
        shard_size=shard_size,
        sampler={"max_objects": SLOTS},
    )


def _fake_dataset(root: Path, config: GenerationConfig) -> Manifest:
    manifest = Manifest(config=config.to_dict())
    for plan in config.plan():
        samples = synthetic_samples(plan.scenes)
        count, size, digest = write_shard(root / SHARDS_DIR / plan.name, samples)
        manifest.shards[plan.name] = ShardRecord(
            plan.name, plan.split, plan.index, count, size, digest, samples[0][0], samples[-1][0]
        )
    manifest.complete = True
    manifest.save(root)
    return manifest


def test_manifest_round_trip_and_totals(tmp_path: Path) -> None:
    config = _config()
    _fake_dataset(tmp_path, config)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["totals"]["samples"] == 7 and data["totals"]["shards"] == 3
    assert data["config"] == config.to_dict() and data["generator"].startswith("cobl")
    assert [s["num_samples"] for s in data["shards"]] == [3, 3, 1]
    assert Manifest.load(tmp_path).to_dict() == data


def dataset_cli(argv: list[str]) -> int:
    """``cobl synth ...`` for this module's commands, exactly as app.cli.main dispatches them."""
    import argparse

    from app import cli_dataset

    parser = argparse.ArgumentParser(prog="cobl synth")
    cli_dataset.register(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError:
        return 2


def test_verify_reports_corrupt_and_missing_shards(tmp_path: Path) -> None:
    main = dataset_cli
    _fake_dataset(tmp_path, _config())
    assert verify(tmp_path).passed
    assert main(["verify", str(tmp_path)]) == 0
    shard = tmp_path / SHARDS_DIR / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))
    (tmp_path / SHARDS_DIR / "train-000002.tar").unlink()
    report = verify(tmp_path)
    assert not report.passed
    assert report.ok == ["train-000000.tar"]
    assert report.corrupt and report.corrupt[0].startswith("train-000001.tar: sha256")
    assert report.missing == ["train-000002.tar"]
    assert main(["verify", str(tmp_path)]) == 1


def test_verify_without_manifest_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="manifest"):
        verify(tmp_path)


def test_prepare_output_keeps_verified_shards_and_redoes_the_rest(tmp_path: Path) -> None:
    config = _config()
    manifest = _fake_dataset(tmp_path, config)
    good = tmp_path / SHARDS_DIR / "train-000000.tar"
    inode = good.stat().st_ino
    # shard 1 corrupted; shard 2 renamed into place but never recorded; a temp file of a killed write
    (tmp_path / SHARDS_DIR / "train-000001.tar").write_bytes(b"truncated")
    del manifest.shards["train-000002.tar"]
    manifest.complete = False
    manifest.save(tmp_path)
    (tmp_path / SHARDS_DIR / ".train-000003.tar.abc.tmp").write_bytes(b"partial")
    logs: list[str] = []
    manifest, todo = prepare_output(tmp_path, config, logs.append)
    assert [p.name for p in todo] == ["train-000001.tar", "train-000002.tar"]
    assert set(manifest.shards) == {"train-000000.tar"}
    assert good.stat().st_ino == inode  # kept, not rewritten
    assert sorted(p.name for p in (tmp_path / SHARDS_DIR).iterdir()) == ["train-000000.tar"]
    assert any("train-000001.tar" in line for line in logs)
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"] is False


def test_prepare_output_refuses_a_different_config(tmp_path: Path) -> None:
    _fake_dataset(tmp_path, _config())
    with pytest.raises(UserError, match="shard_size"):
        prepare_output(tmp_path, _config(shard_size=4), print)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_scenes": 0}, "^num_scenes: 0 should be >= 1$"),
        ({"resolution": 4}, "^resolution: "),
        ({"engine": "WORKBENCH"}, "^engine: 'WORKBENCH' should be one of CYCLES, BLENDER_EEVEE$"),
        ({"sampler_overrides": {"max_objectz": 3}}, "max_objectz"),
        ({"sampler_overrides": {"min_objects": 4, "max_objects": 2}}, "min_objects"),
    ],
)
def test_bad_generation_options_are_user_errors(kwargs: dict, match: str) -> None:
    from synth.dataset.plan import make_config

    kwargs = {"num_scenes": 4, **kwargs}
    with pytest.raises(UserError, match=match):
        make_config(kwargs.pop("num_scenes"), **kwargs)


def test_run_rejects_bad_options_before_writing_anything(tmp_path: Path, capsys) -> None:
    from app import cli

    out = tmp_path / "never"
    for bad, flag in (
        (["--scenes", "3", "--split", "train=0.5"], "--split: "),
        (["--scenes", "0"], "--scenes: "),
        (["--scenes", "3", "--shard-size", "0"], "--shard-size: "),
        (["--scenes", "3", "--workers", "0"], "--workers: "),
        (["--scenes", "3", "--max-objects", "0"], ""),
    ):
        capsys.readouterr()
        assert cli.main(["synth", "run", "--out", str(out), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"cobl: error: {flag}") and "\n" not in err, err
    assert not out.exists()


def test_config_records_the_full_sampler_config_and_derives_layer_slots() -> None:
    from synth.dataset.plan import make_config
    from synth.scene.sampler import SamplerConfig

    config = make_config(10, resolution=32, samples=2, sampler_overrides={"max_objects": 4})
    assert config.layer_slots == 4 and "layer_slots" not in config.to_dict()
    assert set(config.sampler) == {f.name for f in __import__("dataclasses").fields(SamplerConfig)}
    assert config.sampler["width"] == config.sampler["height"] == 32 and config.sampler["samples"] == 2
    assert GenerationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # manifests written before layer_slots was derived still load
    assert GenerationConfig.from_dict({**config.to_dict(), "layer_slots": 4}) == config
    with pytest.raises(UserError, match="unknown field"):
        GenerationConfig.from_dict({**config.to_dict(), "colour": "red"})
