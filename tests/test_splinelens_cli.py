import json
import os

import pytest

from splinelens.cli import main


def test_train_writes_metrics_plot_and_video(tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--data", "sine:8", "--width", "30", "--steps", "600", "--lr", "5e-3",
               "--log-every", "100", "--frames", "3", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["loss_final"] < m["loss_initial"]
    assert m["spline_vs_network_rel_err"] < 1e-6
    assert (out / "training.png").stat().st_size > 1000
    assert os.path.basename(m["video"]) in {"training.mp4", "training.gif"} and os.path.exists(m["video"])
    assert not [p for p in os.listdir(out) if p.startswith(".partial")]


def test_train_is_deterministic_under_seed(tmp_path):
    args = ["train", "--data", "sine:6", "--width", "10", "--steps", "200", "--no-video", "--seed", "3"]
    main([*args, "--out", str(tmp_path / "a")])
    main([*args, "--out", str(tmp_path / "b")])
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["loss_final"] == b["loss_final"]


def test_csv_data(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("x,y\n-1,0\n0,1\n1,0\n0.5,0.7\n")
    assert main(["train", "--data", str(csv), "--width", "8", "--steps", "100", "--no-video",
                 "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["n_data"] == 4


@pytest.mark.parametrize(
    "content,needle",
    [("x,y\n1,2\n3\n", "d.csv:3: expected 2 columns"), ("x,y\n1,2\n3,abc\n", "d.csv:3: expected two numbers"),
     ("x,y\n", "at least 2 data rows")],
)
def test_malformed_csv_one_line_error_nothing_written(tmp_path, capsys, content, needle):
    csv = tmp_path / "d.csv"
    csv.write_text(content)
    out = tmp_path / "o"
    assert main(["train", "--data", str(csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "argv,needle",
    [(["train", "--init", "xavier"], "--init"), (["train", "--data", "sine"], "--data"),
     (["train", "--data", "nope:5"], "unknown target"), (["train", "--data", "missing.csv"], "cannot read"),
     (["regimes", "--scales", "1,x"], "--scales"), (["init", "--widths", "0"], "--widths")],
)
def test_bad_arguments_exit_2(tmp_path, capsys, argv, needle):
    out = tmp_path / "o"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not out.exists()


def test_experiment_subcommands(tmp_path):
    assert main(["init", "--widths", "10,100", "--draws", "5", "--out", str(tmp_path / "i")]) == 0
    init = json.loads((tmp_path / "i" / "init.json").read_text())
    assert set(init["rows"]) == {"default", "kaiming", "glorot"} and (tmp_path / "i" / "init.png").exists()
    assert main(["hessian", "--data", "sine:5", "--widths", "3,10", "--steps", "3000",
                 "--out", str(tmp_path / "h")]) == 0
    hess = json.loads((tmp_path / "h" / "hessian.json").read_text())
    assert [r["full"]["n_params"] for r in hess["reports"]] == [10, 31]
    assert main(["regimes", "--data", "sine:5", "--widths", "20", "--scales", "0.1,3", "--steps", "2000",
                 "--out", str(tmp_path / "r")]) == 0
    reg = json.loads((tmp_path / "r" / "regimes.json").read_text())
    assert len(reg["rows"]) == 2 and (tmp_path / "r" / "regimes.png").exists()
