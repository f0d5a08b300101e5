"""The prior of whole objects (``cobl train-prior``) and CObL built around it (``cobl train --prior``): the
prior learns (held-out denoising loss falls), resumes exactly after a kill, refuses other options, stays
frozen inside CObL, and a prior of the wrong architecture is a one-line error naming --prior."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.cli import main
from cobl.configs import tiny_config
from tests.shardmaker import write_shard
from train.options import PriorOptions, TrainOptions
from train.prior import SimulatedKill, train_prior

torch.set_num_threads(1)
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior")
    write_shard(root / "train-000000.tar", 24, size=32, max_objects=3, seed=3)
    config = root / "config.json"
    config.write_text(tiny_config(num_objects=3, resolution=32).replace(train_base=False).to_json())
    return root, str(root / "train-000000.tar"), str(config)


def _opts(setup, out: Path, **kw) -> PriorOptions:
    _, data, config = setup
    base = dict(data=data, out=str(out), config=config, max_steps=6, batch_size=8, checkpoint_every=3,
                val_fraction=0.25, progress=False)
    return PriorOptions(**{**base, **kw})


def test_prior_learns_and_writes_a_diffusers_unet_with_card(setup, tmp_path):
    from diffusers import UNet2DConditionModel

    report = train_prior(_opts(setup, tmp_path / "p", max_steps=40, lr=2e-3))
    assert report["held_out_loss"] < 0.7 * report["held_out_loss_init"], report
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "p")
    assert unet.config.in_channels == 64 and unet.config.sample_size == 8  # 32², space-to-depth 4, RGBA
    card = (tmp_path / "p" / "README.md").read_text()
    assert "cobl train-prior" in card and f"{report['held_out_loss']:.4f}" in card
    from PIL import Image

    assert Image.open(tmp_path / "p" / "samples.png").size == (128, 128)


def test_kill_and_resume_gives_the_uninterrupted_weights_and_other_options_refuse(setup, tmp_path):
    train_prior(_opts(setup, tmp_path / "full"))
    with pytest.raises(SimulatedKill):
        train_prior(_opts(setup, tmp_path / "cut"), stop_after_steps=4)  # last checkpoint: step 3
    train_prior(_opts(setup, tmp_path / "cut"))
    a, b = load_file(tmp_path / "full" / WEIGHTS), load_file(tmp_path / "cut" / WEIGHTS)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    before = (tmp_path / "full" / WEIGHTS).stat().st_mtime_ns
    train_prior(_opts(setup, tmp_path / "full"))  # finished with the same options: skipped
    assert (tmp_path / "full" / WEIGHTS).stat().st_mtime_ns == before
    from core.errors import UserError

    with pytest.raises(UserError, match="other options"):
        train_prior(_opts(setup, tmp_path / "full", lr=5e-3))


def test_cobl_on_the_prior_keeps_it_frozen_and_trains_the_modules(setup, tmp_path):
    from train.loop import train

    root, data, config = setup
    train_prior(_opts(setup, tmp_path / "p"))
    opts = TrainOptions(data=data, out=str(tmp_path / "run"), config=config, prior=str(tmp_path / "p"),
                        num_objects=3, resolution=32, max_steps=3, batch_size=2, checkpoint_every=3,
                        validate_every=0, num_workers=0, progress=False, shuffle_buffer=4)
    train(opts)
    prior = load_file(tmp_path / "p" / WEIGHTS)
    final = load_file(tmp_path / "run" / "final" / "unet" / WEIGHTS)
    for k, v in prior.items():
        torch.testing.assert_close(final["unet." + k], v, atol=0, rtol=0)  # bit for bit: frozen
    from cobl.configs import get_config
    from cobl.factory import build

    fresh, _, _ = build(get_config(config), prior=str(tmp_path / "p"))
    moved = [k for k, v in fresh.state_dict().items() if k.startswith("slot_convs")
             and not torch.equal(v, final[k])]
    assert moved, "the slot convolutions did not train"


def test_a_prior_of_another_architecture_is_a_one_line_error(setup, tmp_path, capsys):
    root, data, config = setup
    train_prior(_opts(setup, tmp_path / "p", max_steps=1))
    other = root / "other.json"
    other.write_text(tiny_config(num_objects=3, resolution=64).to_json())
    code = main(["train", "--data", data, "--out", str(tmp_path / "run"), "--config", str(other),
                 "--prior", str(tmp_path / "p"), "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--prior" in err[0] and "sample_size" in err[0], err


def test_the_shipped_prior_fits_the_demo_config_and_has_its_card(tmp_path):
    """`cobl demo --prior assets/priors/tiny-objects-64-f8` builds the demo's CObL around it, frozen (the
    default demo trains its UNet from scratch: on val the prior did not win, docs/demo.md)."""
    from app.cli import COMMAND_MODULES
    from app.demo import SHIPPED_PRIOR, check_prior, write_model_config
    from app.parser import build_parser

    parse = build_parser(COMMAND_MODULES).parse_args
    args = parse(["demo", "--out", str(tmp_path), "--prior", str(SHIPPED_PRIOR)])
    write_model_config(tmp_path, args)
    assert len(check_prior(args)) == 16
    assert json.loads((tmp_path / "model_config.json").read_text())["train_base"] is False
    default = parse(["demo", "--out", str(tmp_path)])
    assert check_prior(default) == "none"
    write_model_config(tmp_path, default)
    assert json.loads((tmp_path / "model_config.json").read_text())["train_base"] is True
    report = json.loads((SHIPPED_PRIOR / "prior_report.json").read_text())
    assert report["held_out_loss"] < 0.5 * report["held_out_loss_init"]
    assert (SHIPPED_PRIOR / WEIGHTS).stat().st_size < 8_000_000
    assert "How it was made" in (SHIPPED_PRIOR / "README.md").read_text()
