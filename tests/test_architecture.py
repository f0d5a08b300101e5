"""The authors' CObL architecture around a frozen SD-shaped UNet, on a tiny diffusers folder written offline
(tests/sdfolder.py): loading through the real path, the empty-prompt embedding, the identity at
initialisation, the frozen UNet after training, the text-encoder error, and the real-size parameter counts."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D

from cobl.codec import encode_condition
from cobl.configs import sd21_base_unet_kwargs, sd_config
from cobl.cross_slot import SlotAttention
from cobl.factory import build
from core.errors import UserError
from tests.sdfolder import write_sd_folder

torch.set_num_threads(1)
RES = 32


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return write_sd_folder(tmp_path_factory.mktemp("sd") / "sd")


def _build(sd, depth=True, k=2):
    return build(sd_config(num_objects=k, resolution=RES).replace(depth_condition=depth), pretrained=sd)


def test_sd_folder_loads_with_the_text_encoders_empty_prompt_and_a_frozen_unmodified_unet(sd):
    from transformers import CLIPTextModel, CLIPTokenizer

    model, codec, scheduler = _build(sd)
    tok = CLIPTokenizer.from_pretrained(sd / "tokenizer")
    ids = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = CLIPTextModel.from_pretrained(sd / "text_encoder")(ids).last_hidden_state
    assert model.prompt_embedding.shape == (1, 77, 32) and model.prompt_embedding.abs().max() > 0
    torch.testing.assert_close(model.prompt_embedding, expected, atol=0, rtol=0)
    assert "prompt_embedding" in model.state_dict()  # saved with the model, not trained
    base = UNet2DConditionModel.from_pretrained(sd / "unet")
    ours = model.unet.state_dict()
    assert ours.keys() == base.state_dict().keys()  # the diffusers UNet, unmodified
    assert all(torch.equal(ours[k], v) for k, v in base.state_dict().items())
    frozen = [p for n, p in model.named_parameters() if n.startswith("unet.")]
    assert frozen and not any(p.requires_grad for p in frozen)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not any(id(p) in trainable for p in frozen)
    resnets = [m for m in model.unet.modules() if isinstance(m, ResnetBlock2D)]
    blocks = [m for m in model.unet.modules() if isinstance(m, BasicTransformerBlock)]
    assert model.module_counts() == {
        "slot_convs": len(resnets),
        "slot_attentions": len(blocks),
        "adapters": 2,
    }
    assert len(model.inject_gates) == 4  # 2 levels x 2 encoder ResBlocks
    assert scheduler.config.prediction_type == "epsilon" and codec.latent_channels == 8


def _inputs(codec, b=2, s=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    h = RES // codec.downsample
    noisy = torch.randn(b, s, codec.latent_channels, h, h, generator=g)
    cond = encode_condition(
        codec, torch.rand(b, 3, RES, RES, generator=g), torch.rand(b, 1, RES, RES, generator=g)
    )
    return noisy, torch.tensor([10, 700])[:b], cond


def test_at_initialisation_every_slot_is_the_frozen_unet_and_the_gates_open_the_new_paths(sd):
    model, codec, _ = _build(sd)
    base = UNet2DConditionModel.from_pretrained(sd / "unet")
    noisy, t, cond = _inputs(codec)
    with torch.no_grad():
        out = model(noisy, t, cond)
        text = model.prompt_embedding.expand(2, -1, -1)
        for s in range(3):
            ref = base(noisy[:, s, :4], t, encoder_hidden_states=text).sample
            assert (out[:, s, :4] - ref).abs().max() < 1e-5
        assert out[:, :, 4:].abs().max() == 0  # the alpha prediction starts at zero
        # The adapters and slot modules are randomly initialised: only the gates make the identity.
        changed = noisy.clone()
        changed[:, 2] += 1.0  # the background slot only
        other = cond.clone()
        other[:, 3] = -other[:, 3]  # the depth only
        assert torch.equal(model(changed, t, cond)[:, 0], out[:, 0]) and torch.equal(
            model(noisy, t, other), out
        )
        for gate in model.gates():
            gate.value.fill_(0.5)
        mixed = model(noisy, t, cond)
        assert (model(changed, t, cond)[:, 0] - mixed[:, 0]).abs().max() > 1e-4  # slots see each other
        assert (model(noisy, t, other) - mixed).abs().max() > 1e-4  # the depth adapter reaches the UNet


def test_slot_index_encoding_tells_identical_slots_apart():
    attn = SlotAttention(dim=32, num_slots=3, heads=8)
    attn.gate.value.data.fill_(0.0)
    x = torch.randn(1, 5, 32).repeat(3, 1, 1)  # three identical slots
    out = attn(x)
    assert (out[0] - out[1]).abs().max() > 1e-5
    attn.gate.value.data.fill_(2.0)  # clamped to 1: the identity
    assert torch.equal(attn(x), x)


def test_a_folder_without_a_text_encoder_is_a_one_line_error(tmp_path):
    path = write_sd_folder(tmp_path / "sd", text=False)
    with pytest.raises(UserError, match="text_encoder") as err:
        build(sd_config(num_objects=2, resolution=RES), pretrained=path)
    assert "\n" not in str(err.value) and err.value.option == "pretrained"


def test_three_training_steps_leave_the_frozen_unet_bit_identical_and_move_the_added_modules(sd, tmp_path):
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    from tests.shardmaker import write_shard
    from train.loop import train
    from train.options import TrainOptions

    write_shard(tmp_path / "s.tar", 4, size=RES, max_objects=2, seed=0)
    config = sd_config(num_objects=2, resolution=RES).replace(depth_condition=True)
    (tmp_path / "sd.json").write_text(config.to_json())
    opts = TrainOptions(
        data=str(tmp_path / "s.tar"),
        out=str(tmp_path / "run"),
        config=str(tmp_path / "sd.json"),
        pretrained=str(sd),
        max_steps=3,
        batch_size=2,
        lr=1e-2,
        weight_decay=0.0,
        num_workers=0,
        validate_every=0,
        checkpoint_every=100,
        progress=False,
    )  # fmt: skip  -- the rest is the sd recipe: bf16 autocast, checkpointing, min-SNR 5, 10 % dropout
    AcceleratorState._reset_state(True)  # earlier tests in this process may have set another precision
    set_seed(0)
    initial = {k: v.clone() for k, v in _build(sd)[0].state_dict().items()}
    try:
        result = train(opts)
    finally:
        AcceleratorState._reset_state(True)
    trained = result["pipeline"].unet.state_dict()
    base = UNet2DConditionModel.from_pretrained(sd / "unet").state_dict()
    assert all(torch.equal(trained["unet." + k], v) for k, v in base.items())
    for kind in (
        "photo_adapter.",
        "depth_adapter.",
        "slot_convs.",
        "slot_attentions.",
        "inject_gates.",
        "alpha_out.",
    ):
        keys = [k for k in trained if k.startswith(kind)]
        assert keys and any(not torch.equal(trained[k], initial[k]) for k in keys), kind
    gates = [v for k, v in trained.items() if k.endswith("gate.value") or k.startswith("inject_gates.")]
    assert all(0 <= float(g) <= 1 for g in gates) and any(float(g) < 1 for g in gates)
    assert (
        json.loads((tmp_path / "run" / "final" / "model_index.json").read_text())["cobl_config"]["name"]
        == "sd"
    )


def test_model_summary_reports_the_real_sd21_base_shapes(capsys):
    from app.cli import main

    assert main(["model", "summary", "--config", "sd", "--num-objects", "6", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        sd21 = sum(p.numel() for p in UNet2DConditionModel(**sd21_base_unet_kwargs()).parameters())
    assert sd21 == 865_910_724
    assert abs(info["frozen_params"] - sd21) <= 0.02 * sd21
    assert 0.25e9 <= info["trainable_params"] <= 0.45e9
    assert info["total_params"] == info["frozen_params"] + info["trainable_params"]
    assert (info["slot_convs"], info["slot_attentions"], info["adapters"]) == (22, 16, 2)
