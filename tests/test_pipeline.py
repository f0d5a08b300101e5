"""CObLPipeline: save/reload gives the same layers for a seed; loading; letterboxing; object discovery."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from cobl.configs import tiny_config
from cobl.factory import build
from core.errors import UserError
from core.layers import EMPTY_RGB
from infer.io import Letterbox
from infer.pipeline import CObLPipeline, decompose, discover_objects, export_info, kept_stack, load_pipeline
from tests.shardmaker import make_scene

torch.set_num_threads(1)
RES = 32


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    return build(tiny_config(num_objects=3, resolution=RES))


@pytest.fixture(scope="module")
def pipe(parts):
    model, codec, scheduler = parts
    p = CObLPipeline.from_parts(model.eval(), DDIMScheduler.from_config(scheduler.config), codec)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def photo():
    return torch.from_numpy(make_scene(np.random.default_rng(5), RES, 3)["photo"]).float()


def _sample(p, photo, seed, **kw):
    return p(
        photo[None],
        num_inference_steps=4,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def test_save_reload_gives_identical_layers(pipe, photo, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["unet"] == ["cobl.network", "CObLModel"] and index["codec_kind"] == "space_to_depth"
    loaded = load_pipeline(tmp_path / "pipe")
    assert isinstance(loaded, CObLPipeline) and loaded.resolution == RES and loaded.num_objects == 3
    for kw in ({}, {"reorder_every": 2}):
        a, b = _sample(pipe, photo, 7, **kw), _sample(loaded, photo, 7, **kw)
        assert torch.equal(a.layers, b.layers) and torch.equal(a.background, b.background)
    assert not torch.equal(_sample(pipe, photo, 7).layers, _sample(pipe, photo, 8).layers)


def test_loads_trainer_export_and_run_folder(parts, pipe, photo, tmp_path):
    """The trainer's export (``from_parts`` of its DDPM training scheduler, config and training record) is
    the one saved-pipeline layout, read by ``from_pretrained`` or, for a run folder, ``load_pipeline``."""
    model, codec, scheduler = parts
    config = tiny_config(num_objects=3, resolution=RES)
    exported = CObLPipeline.from_parts(model, scheduler, codec, config, global_step=7)
    exported.save_pretrained(tmp_path / "run" / "final")
    assert sorted(p.name for p in (tmp_path / "run" / "final").iterdir()) == [
        "model_index.json",
        "scheduler",
        "unet",
    ]
    for loaded in (
        CObLPipeline.from_pretrained(tmp_path / "run" / "final"),
        load_pipeline(tmp_path / "run"),
        load_pipeline(tmp_path / "run" / "final"),
    ):
        assert isinstance(loaded.scheduler, DDIMScheduler)
        assert loaded.cobl_config == config and loaded.config.training == {"global_step": 7}
        assert torch.equal(_sample(loaded, photo, 3).layers, _sample(pipe, photo, 3).layers)
    assert export_info(tmp_path / "run")["global_step"] == 7


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a CObL model"):
        load_pipeline(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(UserError) as err:
        load_pipeline(broken)
    assert "\n" not in str(err.value) and "broken" in str(err.value)


def _damaged(folder, how):
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    config = folder / "unet" / "config.json"
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "weights of another shape":
        config.write_text(config.read_text().replace('"num_slots": 4', '"num_slots": 6'))
    elif how == "no scheduler":
        for f in (folder / "scheduler").iterdir():
            f.unlink()


@pytest.mark.parametrize("how", ["truncated weights", "weights of another shape", "no scheduler"])
def test_a_damaged_model_folder_is_a_one_line_error(pipe, tmp_path, how):
    pipe.save_pretrained(tmp_path / "m")
    _damaged(tmp_path / "m", how)
    with pytest.raises(UserError, match="cannot load the model") as err:
        load_pipeline(tmp_path / "m")
    assert "\n" not in str(err.value) and err.value.option == "model"


def test_a_programming_error_while_loading_is_not_reworded(pipe, tmp_path, monkeypatch):
    """Only the errors a damaged folder raises become "cannot load"; a bug stays a traceback."""
    pipe.save_pretrained(tmp_path / "m")

    def bug(*args, **kwargs):
        raise TypeError("a bug in the loader")

    monkeypatch.setattr(CObLPipeline, "from_pretrained", bug)
    with pytest.raises(TypeError, match="a bug"):
        load_pipeline(tmp_path / "m")


def test_letterbox_round_trip_and_mask():
    box = Letterbox(height=30, width=48, resolution=32)
    assert box.content == (6, 0, 20, 32)
    img = torch.linspace(0, 1, 30)[None, :, None].expand(3, 30, 48).clone()
    fitted = box.fit(img)
    assert fitted.shape == (3, 32, 32)
    assert torch.equal(fitted[:, 0], fitted[:, 6])  # edge-padded
    mask = box.valid_mask()
    assert mask.sum() == 20 * 32 and mask[0, 5].sum() == 0 and mask[0, 6].sum() == 32
    back = box.unfit(fitted)
    assert back.shape == (3, 30, 48)
    assert (back - img).abs().mean() < 0.03


def _layer(h, w, box, alpha=1.0):
    layer = torch.zeros(4, h, w)
    layer[:3] = torch.tensor(EMPTY_RGB)[:, None, None]
    y0, y1, x0, x1 = box
    layer[:3, y0:y1, x0:x1] = 0.9
    layer[3, y0:y1, x0:x1] = alpha
    return layer


def test_discovery_drops_empty_tiny_and_hidden_slots():
    h = w = 20
    layers = torch.stack(
        [
            _layer(h, w, (0, 10, 0, 10)),  # object, 25 % of the pixels
            _layer(h, w, (0, 0, 0, 0)),  # empty
            _layer(h, w, (15, 17, 15, 17)),  # 1 % of the pixels: below 2 %
            _layer(h, w, (2, 8, 2, 8)),  # fully hidden behind slot 0
            _layer(h, w, (5, 15, 5, 15)),  # partly hidden object
        ]
    )
    assert discover_objects(layers) == [0, 4]
    kept = kept_stack(layers, torch.zeros(3, h, w))
    assert kept.slots == [0, 4] and kept.layers.shape == (2, 4, h, w)
    assert kept.areas == pytest.approx([0.25, 0.25])
    assert kept.visible_fractions == pytest.approx([1.0, 75 / 100])
    # Thresholds are "strictly above": a fully hidden slot (visible fraction 0) never counts.
    assert discover_objects(layers, min_area=0.005, min_visible=0.0) == [0, 2, 4]


def test_decompose_maps_back_to_photo_size(pipe, photo):
    wide = torch.cat([photo, photo[:, :, :16]], dim=2)  # 32 x 48
    result = decompose(pipe, wide, num_inference_steps=2, seed=0, min_area=0.0, min_visible=0.0)
    assert result.background.shape == (3, 32, 48)
    assert result.layers.shape[1:] == (4, 32, 48) and len(result.slots) == len(result.layers)
    again = decompose(pipe, wide, num_inference_steps=2, seed=0, min_area=0.0, min_visible=0.0)
    assert torch.equal(result.layers, again.layers)
