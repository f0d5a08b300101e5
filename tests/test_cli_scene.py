"""``cobl synth scene``: writes every schema file; bad values exit 2 with one line and write nothing."""

from __future__ import annotations

import json

import pytest

import app.cli
from core import schema
from core.outdir import MARKER


@pytest.fixture
def cli(monkeypatch):
    return lambda *argv: app.cli.main(["synth", "scene", *map(str, argv)])


@pytest.mark.parametrize(
    "bad",
    [
        ["--resolution", "0"],
        ["--min-objects", "5", "--max-objects", "2"],
        ["--max-objects", "0"],
        ["--index", "-1"],
        ["--seed", "-3"],
        ["--engine", "FOO"],
        ["--samples", "0"],
        ["--min-visible", "1.5"],
        ["--assets-dir", "/nonexistent/assets"],
        ["--hdri-dir", "/nonexistent/hdri"],
    ],
)
def test_bad_values_exit_2_with_one_line_and_write_nothing(cli, tmp_path, capsys, bad):
    out = tmp_path / "scene"
    sheet = tmp_path / "sheet.png"
    assert cli("--out", out, "--contact-sheet", sheet, *bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cobl: error: ") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_scene_writes_every_file_and_skips_a_corrupt_mesh(cli, tmp_path, capsys):
    import trimesh

    assets = tmp_path / "assets"
    assets.mkdir()
    trimesh.creation.icosphere(subdivisions=2).export(assets / "ball.stl")
    (assets / "broken.obj").write_text("v 0 0 0\nf 1 2 3 garbage\n")
    out = tmp_path / "scene"
    sheet = tmp_path / "sheet.png"
    code = cli(
        "--seed",
        1,
        "--resolution",
        48,
        "--samples",
        4,
        "--min-objects",
        2,
        "--max-objects",
        3,
        "--assets-dir",
        assets,
        "--threads",
        2,
        "--out",
        out,
        "--contact-sheet",
        sheet,
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "broken.obj" in err and "1 skipped" in err
    doc = json.loads((out / schema.SCENE).read_text())
    n = len(doc["spec"]["objects"])
    assert 2 <= n <= 3 and len(doc["ground_truth"]["order"]) == n
    written = sorted(p.name for p in out.iterdir() if p.name != MARKER)  # the marker: core.outdir
    assert written == sorted(schema.member_names(n))
    assert sheet.stat().st_size > 0
    assert doc["spec"]["camera"]["width"] == 48


def _has_gpu() -> bool:
    import subprocess

    probe = subprocess.run(["sh", "-c", "command -v nvidia-smi && nvidia-smi -L"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU: the failure mode is not reachable")
@pytest.mark.parametrize("command", ["scene", "run"])
def test_device_gpu_without_a_gpu_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, command):
    out = tmp_path / "out"
    if command == "scene":
        argv = ["synth", "scene", "--resolution", "16", "--out", str(out), "--device", "gpu"]
    else:
        argv = ["synth", "run", "--scenes", "1", "--resolution", "16", "--out", str(out), "--device", "gpu"]
    assert app.cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("cobl: error: --device: gpu: Cycles found no GPU") and "\n" not in err, err
    assert "OPTIX" in err and "CUDA" in err
    assert list(tmp_path.iterdir()) == []


def test_device_must_be_cpu_or_gpu(cli, tmp_path, capsys):
    assert cli("--out", tmp_path / "scene", "--device", "tpu") == 2
    assert capsys.readouterr().err.strip().startswith("cobl: error: --device:")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "new"),
    [
        (["synth", "scene", "--objects", "2-3"], "--objects was replaced by --min-objects MIN --max-objects"),
        (["synth", "run", "--scenes", "2", "--objects", "2-3"], "--objects was replaced by --min-objects"),
        (["synth", "seed", "--dataset-seed", "3", "--index", "2"], "replaced by `cobl synth scene --seed"),
    ],
)
def test_old_spellings_fail_with_one_line_naming_the_new_one(tmp_path, capsys, argv, new):
    with pytest.raises(SystemExit) as stop:
        app.cli.main([*argv, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert new in err and "\n" not in err, err
    assert list(tmp_path.iterdir()) == []
