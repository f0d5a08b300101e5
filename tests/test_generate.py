"""The dataset job end to end on a local Ray with real Blender renders (tiny: 64², few samples, few scenes).

One Ray instance for the module (each start costs seconds and ~700 MB). Covers: shards that verify and read
with tarfile+PIL, webdataset and ray.data; determinism across runs and worker counts; a worker killed with
SIGKILL mid-render; the whole job killed and re-run; a corrupt shard reported by ``cobl synth verify``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import schema
from core.outdir import MARKER
from synth.dataset.generate import run_generation
from synth.dataset.manifest import SHARDS_DIR, Manifest, verify
from synth.dataset.plan import GenerationConfig, make_config, scene_id
from synth.dataset.shards import iter_shard

ROOT = Path(__file__).resolve().parents[1]
N = 5
SLOTS = 3


def small_config(num_scenes: int = N, **kw) -> GenerationConfig:
    kw.setdefault("splits", {"train": 0.6, "val": 0.4})
    kw.setdefault("shard_size", 2)
    return make_config(
        num_scenes,
        seed=11,
        resolution=64,
        samples=4,
        sampler_overrides={"max_objects": SLOTS, "min_objects": 1},
        **kw,
    )


def all_samples(root: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for rec in sorted(Manifest.load(root).shards.values(), key=lambda r: r.name):
        for key, members in iter_shard(root / SHARDS_DIR / rec.name):
            assert key not in out, f"duplicate sample {key}"
            out[key] = members
    return out


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds_a")
    summary = run_generation(out, small_config(), workers=2, progress_interval=1.0)
    assert summary.scenes_rendered == N and summary.shards_written == 3
    return out


def test_run_writes_shards_that_verify(dataset: Path) -> None:
    report = verify(dataset)
    assert report.passed and report.ok == ["train-000000.tar", "train-000001.tar", "val-000000.tar"]
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["complete"] and manifest["totals"]["samples"] == N
    assert manifest["config"]["sampler"]["max_objects"] == SLOTS and "layer_slots" not in manifest["config"]
    samples = all_samples(dataset)
    assert sorted(samples) == [scene_id(i) for i in range(N)]
    for members in samples.values():
        assert list(members) == schema.member_names(SLOTS)
    assert not list((dataset / SHARDS_DIR).glob("*.tmp"))


def test_tarfile_and_pil_read_everything(dataset: Path) -> None:
    for key, members in all_samples(dataset).items():
        doc = json.loads(members[schema.SCENE])
        assert doc["spec"]["scene_id"] == key
        n = len(doc["ground_truth"]["objects"])
        assert 1 <= n <= SLOTS
        modes = {}
        for name in schema.member_names(SLOTS):
            if name.endswith(".png"):
                with Image.open(io.BytesIO(members[name])) as im:
                    assert im.size == (64, 64)
                    modes[name] = im.mode
                    if schema.layer_index(name) is not None and schema.layer_index(name) >= n:
                        assert np.asarray(im)[..., 3].max() == 0  # empty slot
        assert modes[schema.RGB] == modes[schema.BACKGROUND] == "RGB" and modes[schema.IDS] == "L"
        assert all(modes[schema.layer_name(k)] == "RGBA" for k in range(SLOTS))
        depth = np.load(io.BytesIO(members[schema.DEPTH]), allow_pickle=False)
        assert depth.shape == (64, 64) and depth.dtype == np.float32 and depth.max() > 0


def test_webdataset_reads_the_shards(dataset: Path) -> None:
    import webdataset as wds

    def png(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im).copy()

    urls = sorted(str(p) for p in (dataset / SHARDS_DIR).glob("*.tar"))
    ds = wds.WebDataset(urls, shardshuffle=False).decode(
        wds.handle_extension("png", png),
        wds.handle_extension("npy", lambda b: np.load(io.BytesIO(b))),
        wds.handle_extension("json", json.loads),
    )
    got = list(ds)
    assert sorted(s["__key__"] for s in got) == [scene_id(i) for i in range(N)]
    for s in got:
        assert s["rgb.png"].shape == (64, 64, 3) and s["layer_00.png"].shape == (64, 64, 4)
        assert 0 < s["ids.png"].max() <= len(s["scene.json"]["ground_truth"]["objects"])


def test_ray_data_reads_the_shards(dataset: Path, ray_local) -> None:
    ds = ray_local.data.read_webdataset(str(dataset / SHARDS_DIR), decoder=None)
    rows = ds.take_all()
    assert sorted(r["__key__"] for r in rows) == [scene_id(i) for i in range(N)]
    for row in rows:
        for name in schema.member_names(SLOTS):
            assert row[name], name
        assert json.loads(row["scene.json"])["spec"]["scene_id"] == row["__key__"]


def test_same_seed_gives_identical_scenes_with_any_worker_count(dataset: Path, tmp_path: Path) -> None:
    summary = run_generation(tmp_path, small_config(), workers=1, progress_interval=1.0)
    assert summary.scenes_rendered == N
    a, b = all_samples(dataset), all_samples(tmp_path)
    assert sorted(a) == sorted(b)
    for key in a:
        for name in (schema.SCENE, schema.IDS, schema.DEPTH):
            assert a[key][name] == b[key][name], (key, name)
    # Cycles on the CPU with a fixed seed is deterministic here, so the whole shards are byte-identical.
    ma, mb = Manifest.load(dataset), Manifest.load(tmp_path)
    assert {n: r.sha256 for n, r in ma.shards.items()} == {n: r.sha256 for n, r in mb.shards.items()}


def test_worker_killed_mid_render_is_retried(dataset: Path, tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_once(result: dict) -> None:
        if not killed:  # the actor already holds its next scene: it is rendering it right now
            killed.append(result["pid"])
            os.kill(result["pid"], signal.SIGKILL)

    summary = run_generation(tmp_path, small_config(), workers=2, on_result=kill_once, progress_interval=1.0)
    assert killed and summary.worker_restarts + summary.failures >= 1
    assert verify(tmp_path).passed
    samples = all_samples(tmp_path)
    assert sorted(samples) == [scene_id(i) for i in range(N)]
    ref = all_samples(dataset)
    assert all(samples[k][schema.SCENE] == ref[k][schema.SCENE] for k in ref)


# `cobl ...` through the real app.cli.main (command handlers import their heavy modules lazily).
COBL = [sys.executable, "-m", "app.cli"]


def _cobl_run(out: Path, scenes: int) -> list[str]:
    options = "--resolution 48 --samples 2 --seed 3 --split train=1 --shard-size 1"
    options += " --max-objects 2 --min-objects 1"
    options += " --workers 1 --progress-every 1"
    return [*COBL, "synth", "run", "--out", str(out), "--scenes", str(scenes), *options.split()]


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the job's session (the driver and the Ray instance it started)."""
    import psutil

    sid = proc.pid  # start_new_session: the driver leads its own session
    victims = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                victims.append(p.pid)
        except (ProcessLookupError, PermissionError):
            continue
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def test_killed_job_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    out, scenes = tmp_path / "ds", 4
    env = dict(os.environ, RAY_AUTH_MODE="token", PYTHONPATH=str(ROOT))
    log = open(tmp_path / "first.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        _cobl_run(out, scenes),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            manifest = out / "manifest.json"
            if manifest.exists() and json.loads(manifest.read_text())["shards"]:
                break
            time.sleep(0.2)
        assert proc.poll() is None, (
            "the job ended before it could be killed: " + (tmp_path / "first.log").read_text()
        )
    finally:
        _kill_session(proc)
        log.close()
    first = {s["name"]: s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    assert 1 <= len(first) < scenes
    kept = {name: (out / SHARDS_DIR / name).stat().st_ino for name in first}

    second = subprocess.run(
        _cobl_run(out, scenes), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{len(first)} kept from before" in second.stderr
    assert verify(out).passed
    keys = [
        k for name in sorted(os.listdir(out / SHARDS_DIR)) for k, _ in iter_shard(out / SHARDS_DIR / name)
    ]
    assert keys == [scene_id(i) for i in range(scenes)]  # exactly N, none lost, none twice
    assert {n: (out / SHARDS_DIR / n).stat().st_ino for n in first} == kept  # finished shards untouched
    final = {s["name"]: s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    assert all(final[n] == first[n] for n in first)


def test_verify_cli_reports_a_corrupt_shard(dataset: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    shard = copy / SHARDS_DIR / "val-000000.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x55
    shard.write_bytes(bytes(data))
    proc = subprocess.run(
        [*COBL, "synth", "verify", str(copy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 1
    assert "CORRUPT  val-000000.tar" in proc.stdout and "train-000000.tar" not in proc.stdout


def _stored_members(dataset: Path, key: str) -> dict[str, bytes]:
    """Sample ``key``'s members without the padding layer slots past its own objects."""
    stored = all_samples(dataset)[key]
    n = len(json.loads(stored[schema.SCENE])["ground_truth"]["objects"])
    return {m: b for m, b in stored.items() if schema.layer_index(m) is None or schema.layer_index(m) < n}


def test_synth_scene_seed_index_equals_the_sample_of_synth_run_byte_for_byte(dataset: Path, tmp_path: Path):
    """`cobl synth scene --seed S --index I` with the dataset's options writes exactly the members `cobl synth
    run --seed S` stored for scene I (scene.json, photo, background, layers, ids, depth: every byte)."""
    out = tmp_path / "s4"
    argv = ["synth", "scene", "--seed", "11", "--index", "4", "--resolution", "64", "--samples", "4"]
    argv += ["--min-objects", "1", "--max-objects", str(SLOTS), "--threads", "1", "--out", str(out)]
    proc = subprocess.run(
        [*COBL, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    stored = _stored_members(dataset, "s00000004")
    assert sorted(p.name for p in out.iterdir() if p.name != MARKER) == sorted(stored)
    for member, data in stored.items():
        assert (out / member).read_bytes() == data, member


def test_one_scene_rerenders_alone_identically(dataset: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [*COBL, "synth", "rerender", str(dataset), "--index", "3", "--out", str(tmp_path / "s3"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "s00000003 vs val-000000.tar: identical" in proc.stdout
    stored = _stored_members(dataset, "s00000003")
    assert sorted(p.name for p in (tmp_path / "s3").iterdir() if p.name != MARKER) == sorted(stored)
    assert all((tmp_path / "s3" / m).read_bytes() == b for m, b in stored.items())


def test_publish_on_real_renders(dataset: Path, tmp_path: Path) -> None:
    import shutil

    from synth.dataset.publish import publish

    copy = tmp_path / "pub"
    shutil.copytree(dataset, copy)
    publish(copy, gallery_samples=3)
    stats = json.loads((copy / "stats.json").read_text())
    docs = [json.loads(m[schema.SCENE]) for m in all_samples(dataset).values()]
    assert stats["scenes"] == N
    assert stats["objects"] == sum(len(d["ground_truth"]["objects"]) for d in docs)
    assert sum(stats["visible_fraction"]["histogram"]) == stats["objects"]
    assert len(list((copy / "gallery" / "img").iterdir())) == 3
    assert "| train | 3 | 2 |" in (copy / "README.md").read_text()
    # real scene.json documents load through the card's declared features (no inference), unchanged
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(copy), cache_dir=str(tmp_path / "hf-cache"))
    rows = {row["__key__"]: row for split in loaded.values() for row in split}
    truth = {key: json.loads(members[schema.SCENE]) for key, members in all_samples(dataset).items()}
    assert sorted(rows) == sorted(truth)
    for key, doc in truth.items():
        assert rows[key][schema.SCENE] == doc, key


def test_a_scene_that_always_fails_stops_the_job_with_an_error(ray_local, tmp_path: Path) -> None:
    """Impossible constraints (every object fully visible yet all occluded): the sampler raises every time."""
    from synth.dataset.generate import GenerationError

    config = make_config(
        2,
        seed=1,
        resolution=32,
        samples=1,
        splits={"train": 1.0},
        shard_size=1,
        sampler_overrides={
            "min_objects": 2,
            "max_objects": 2,
            "min_visible": 1.0,
            "min_occluded_fraction": 1.0,
            "max_attempts": 1,
        },
    )
    logs: list[str] = []
    with pytest.raises(GenerationError, match="failed 2 times"):
        run_generation(tmp_path, config, workers=1, retries=1, log=logs.append)
    assert sum("failed (attempt" in line for line in logs) >= 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["shards"] == []
    assert not verify(tmp_path).passed
