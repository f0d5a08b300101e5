"""One source of truth for the resolution (the saved config), its validation against the codec and UNet,
and the sd recipe's batch size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import app.cli
from cobl.configs import get_config, recipe_for, sd21_base_unet_kwargs, sd_config, sd_vae_kwargs, tiny_config
from cobl.factory import build_shapes, check_pretrained
from core import schema
from core.errors import UserError
from infer.pipeline import CObLPipeline, export_info, load_pipeline
from tests.sdfolder import write_sd_folder
from tests.shardmaker import make_scene, write_shard
from train.loop import resolve_recipe
from train.options import TrainOptions

torch.set_num_threads(1)


def _one_error_line(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cobl: error:"), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


@pytest.fixture
def sd_shapes_folder(tmp_path):
    """A Stable Diffusion folder of SD 2.1-base's shapes, configs only (no weights): what the checks read."""
    root = tmp_path / "sd21"
    for part, config in (("unet", sd21_base_unet_kwargs()), ("vae", sd_vae_kwargs())):
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(json.dumps(config))
    for part in ("tokenizer", "text_encoder"):
        (root / part).mkdir()
    return root


def test_sd_takes_multiples_of_64_only(sd_shapes_folder, tmp_path, capsys):
    check_pretrained(sd_config(resolution=128), sd_shapes_folder)
    for bad in (96, 80):  # multiples of 16 (the old rule) but not of 8 x 8
        with pytest.raises(UserError, match="multiple of 64") as err:
            check_pretrained(sd_config(resolution=bad), sd_shapes_folder)
        assert err.value.option == "resolution"
    with pytest.raises(UserError, match="multiple of 64"):
        build_shapes(sd_config(resolution=96))  # cobl model summary: SD's shapes without a folder
    assert build_shapes(sd_config(resolution=128)).unet.config.sample_size == 16  # 128 / the VAE's 8
    write_shard(tmp_path / "s.tar", 1, size=32, max_objects=1, seed=0)
    argv = ["train", "--config", "sd", "--pretrained", str(sd_shapes_folder), "--resolution", "96",
            "--data", str(tmp_path / "s.tar"), "--out", str(tmp_path / "run")]  # fmt: skip
    assert app.cli.main(argv) == 2
    _one_error_line(capsys, "--resolution", "multiple of 64", "96")
    assert not (tmp_path / "run").exists()
    assert app.cli.main(["model", "summary", "--config", "sd", "--resolution", "96"]) == 2
    _one_error_line(capsys, "--resolution", "multiple of 64")


def test_tiny_takes_multiples_of_its_codec_and_unet():
    tiny_config(resolution=24).replace(space_to_depth_factor=4)  # 4 x 2: fine, though not a multiple of 16
    with pytest.raises(UserError, match="multiple of 8") as err:
        tiny_config(resolution=36).validate()
    assert err.value.option == "resolution"


def test_sd_recipe_trains_at_the_authors_batch_size(tmp_path):
    assert recipe_for(sd_config()).batch_size == 2 and recipe_for(tiny_config()).batch_size == 8
    opts = TrainOptions(data="d", out="o", config="sd")
    assert opts.batch_size is None  # unset: the recipe decides
    assert resolve_recipe(opts, get_config("sd")).batch_size == 2
    assert resolve_recipe(TrainOptions(data="d", out="o"), get_config("tiny")).batch_size == 8
    assert resolve_recipe(TrainOptions(data="d", out="o", batch_size=4), get_config("sd")).batch_size == 4


def test_sd_trained_at_128_on_a_folder_whose_unet_says_32_samples_at_128(tmp_path, monkeypatch):
    """The tiny SD folder's UNet has sample_size 16 and its VAE shrinks 2x: re-derived, 32. The model is
    trained at 128, exported, and ``cobl infer`` samples at 128."""
    from accelerate.state import AcceleratorState

    sd = write_sd_folder(tmp_path / "sd")
    write_shard(tmp_path / "s.tar", 2, size=128, max_objects=2, seed=0)
    argv = ["train", "--config", "sd", "--pretrained", str(sd), "--resolution", "128", "--num-objects", "2",
            "--data", str(tmp_path / "s.tar"), "--out", str(tmp_path / "run"), "--max-steps", "1",
            "--num-workers", "0", "--validate-every", "0", "--checkpoint-every", "100", "--no-progress",
            "--mixed-precision", "no"]  # fmt: skip
    AcceleratorState._reset_state(True)
    try:
        assert app.cli.main(argv) == 0
    finally:
        AcceleratorState._reset_state(True)
    final = tmp_path / "run" / "final"
    assert export_info(final)["resolution"] == 128
    pipe = load_pipeline(final)
    assert pipe.unet.unet.config.sample_size * pipe.codec.downsample == 32  # what it used to sample at
    assert pipe.resolution == 128

    scene = make_scene(np.random.default_rng(0), 96, 2)
    rgb = np.round(scene["photo"].transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    sampled, real_call = [], CObLPipeline.__call__

    def spy(self, photo, *args, **kwargs):
        sampled.append(tuple(photo.shape[-2:]))
        return real_call(self, photo, *args, **kwargs)

    monkeypatch.setattr(CObLPipeline, "__call__", spy)
    argv = ["infer", "--model", str(tmp_path / "run"), "--image", str(tmp_path / "p.png"),
            "--out", str(tmp_path / "out"), "--sampling-steps", "1", "--guidance-scale", "0"]  # fmt: skip
    assert app.cli.main(argv) == 0
    assert sampled == [(128, 128)]
    order = json.loads((tmp_path / "out" / "p" / "order.json").read_text())
    assert order["model_resolution"] == 128
    with Image.open(tmp_path / "out" / "p" / schema.BACKGROUND) as im:
        assert im.size == (96, 96)  # mapped back to the photo's own size
