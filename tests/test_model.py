"""CObLModel, cross-slot attention, codecs and the exported pipeline, on tiny shapes."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from cobl.codec import SpaceToDepthCodec, VAECodec, encode_condition
from cobl.configs import get_config, sd_config, tiny_config
from cobl.factory import build
from cobl.network import CObLModel
from core.errors import UserError
from core.layers import composite
from infer.pipeline import CObLPipeline, export_info, load_pipeline
from tests.sdfolder import sd_like_vae, write_sd_folder

torch.set_num_threads(1)


def tiny_unet(in_channels: int = 4, sample_size: int = 8) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )


def _inputs(b=2, s=3, c=8, cond_channels=3, hw=8, f=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, s, c, hw, hw, generator=g),
        torch.tensor([10, 500])[:b],
        torch.rand(b, cond_channels, hw * f, hw * f, generator=g) * 2 - 1,
    )


def _model(unet=None, cond_channels=3, **kwargs):
    torch.manual_seed(0)
    return CObLModel.from_unet(
        unet or tiny_unet(),
        prompt_embedding=torch.randn(1, 2, 32),
        num_slots=3,
        slot_channels=8,
        condition_channels=cond_channels,
        latent_downsample=2,
        slot_attention_heads=4,
        **kwargs,
    )


@pytest.mark.parametrize("cond_channels", [3, 4])  # photo / photo + depth
def test_zero_init_equals_frozen_unet_per_slot(cond_channels):
    unet = tiny_unet()
    model = _model(unet, cond_channels)
    noisy, t, cond = _inputs(cond_channels=cond_channels)
    with torch.no_grad():
        out = model(noisy, t, cond)
        assert out.shape == noisy.shape
        text = model.prompt_embedding.expand(2, -1, -1)
        for s in range(3):
            ref = unet(noisy[:, s, :4], t, encoder_hidden_states=text).sample
            torch.testing.assert_close(out[:, s, :4], ref, atol=1e-5, rtol=1e-5)
        assert out[:, :, 4:].abs().max() == 0  # the alpha prediction starts at zero
    resnets = [m for m in unet.modules() if type(m).__name__ == "ResnetBlock2D"]
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert model.module_counts() == {
        "slot_convs": len(resnets), "slot_attentions": len(blocks), "adapters": cond_channels - 2
    }  # fmt: skip
    assert len(blocks) == 4 and len(resnets) == 8  # one added module per block


@pytest.mark.parametrize("kind", ["slot_convs", "slot_attentions"])
def test_cross_slot_modules_mix_slots_once_their_gates_open(kind):
    model = _model()
    noisy, t, cond = _inputs()
    changed = noisy.clone()
    changed[:, 2] += 1.0  # perturb the background slot only
    with torch.no_grad():
        same = (model(noisy, t, cond)[:, 0] - model(changed, t, cond)[:, 0]).abs().max()
        for module in getattr(model, kind):
            module.gate.value.fill_(0.5)
        mixed = (model(noisy, t, cond)[:, 0] - model(changed, t, cond)[:, 0]).abs().max()
    assert same == 0  # gates at 1: slots are independent
    assert mixed > 1e-4  # opened: slot 0 sees the background slot


def test_the_photo_reaches_every_slot_through_the_adapter_once_the_injection_gates_open():
    model = _model()
    noisy, t, cond = _inputs()
    with torch.no_grad():
        assert torch.equal(model(noisy, t, cond), model(noisy, t, -cond))
        for gate in model.inject_gates:
            gate.value.fill_(0.5)
        moved = (model(noisy, t, cond) - model(noisy, t, -cond)).abs().flatten(2).amax(2)
    assert (moved > 1e-4).all()  # every slot of every scene


def test_trainable_parameters_are_only_new_modules():
    model = _model()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and not any(n.startswith("unet.") for n in names)
    kinds = ("photo_adapter.", "slot_convs.", "slot_attentions.", "inject_gates.", "alpha_in.", "alpha_out.")
    for kind in kinds:
        assert any(n.startswith(kind) for n in names), kind
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("attn1.to_q" in n for n in frozen) and all(n.startswith("unet.") for n in frozen)
    with pytest.raises(ValueError, match="condition"):
        model(*_inputs(cond_channels=4))


def test_save_load_roundtrip(tmp_path):
    model = _model()
    with torch.no_grad():
        for gate in model.gates():
            gate.value.uniform_(0.2, 0.9)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = CObLModel.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(loaded.prompt_embedding, model.prompt_embedding)
    noisy, t, cond = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(noisy, t, cond), model(noisy, t, cond))


def test_space_to_depth_codec_is_lossless_and_sets_background_alpha():
    codec = SpaceToDepthCodec(4)
    layers, bg = torch.rand(2, 3, 4, 32, 32), torch.rand(2, 3, 32, 32)
    lat = codec.encode_layers(layers, bg)
    assert lat.shape == (2, 4, 64, 8, 8) and codec.latent_channels == 64
    assert codec.encode_photo(bg).shape == (2, codec.photo_channels, 8, 8)
    back_layers, back_bg = codec.decode_layers(lat)
    torch.testing.assert_close(back_layers, layers)
    torch.testing.assert_close(back_bg, bg)
    bg_slot = torch.nn.functional.pixel_shuffle(lat[:, -1], 4)
    assert torch.all(bg_slot[:, 3] == 1)  # background carries alpha 1 (in [-1, 1] units)


def test_vae_codec_shapes_and_gradients():
    codec = VAECodec(sd_like_vae())
    layers = torch.rand(1, 2, 4, 32, 32)
    bg = torch.rand(1, 3, 32, 32)
    lat = codec.encode_layers(layers, bg).requires_grad_(True)
    assert lat.shape == (1, 3, 8, 16, 16)
    dec_layers, dec_bg = codec.decode_layers(lat)
    assert dec_layers.shape == layers.shape and dec_bg.shape == bg.shape
    composite(dec_layers, dec_bg).mean().backward()  # guidance differentiates through decode
    assert lat.grad is not None and lat.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in codec.parameters())


def _write_sd_folder(path):
    write_sd_folder(path)


def test_sd_config_loads_local_diffusers_folder_and_bundle_roundtrip(tmp_path):
    _write_sd_folder(tmp_path / "sd")
    config = sd_config(num_objects=2, resolution=32)
    model, codec, scheduler = build(config, pretrained=tmp_path / "sd")
    assert isinstance(codec, VAECodec) and model.num_slots == 3 and model.config.slot_channels == 8
    assert scheduler.config.beta_schedule == "scaled_linear"
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "sd" / "unet")
    layers, bg, photo = torch.rand(1, 2, 4, 32, 32), torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        lat = codec.encode_layers(layers, bg)
        pl = encode_condition(codec, photo, None)
        out = model(lat, torch.tensor([300]), pl)
        ref = unet(lat[:, 1, :4], torch.tensor([300]), encoder_hidden_states=model.prompt_embedding)
        torch.testing.assert_close(out[:, 1, :4], ref.sample, atol=1e-5, rtol=1e-5)

    CObLPipeline.from_parts(model, scheduler, codec, config, global_step=0).save_pretrained(
        tmp_path / "final"
    )
    loaded = CObLPipeline.from_pretrained(tmp_path / "final")
    assert export_info(tmp_path / "final")["num_objects"] == 2 and loaded.config.codec_kind == "vae"
    assert isinstance(loaded.codec, VAECodec) and loaded.cobl_config == config
    with torch.no_grad():
        torch.testing.assert_close(loaded.unet(lat, torch.tensor([300]), pl), out)
        torch.testing.assert_close(loaded.codec.encode_photo(photo), codec.encode_photo(photo))
        torch.testing.assert_close(loaded.unet.prompt_embedding, model.prompt_embedding)


def test_tiny_build_and_export(tmp_path):
    config = tiny_config(num_objects=2, resolution=32)
    model, codec, scheduler = build(config)
    assert model.config.train_base and scheduler.config.prediction_type == "sample"
    before = copy.deepcopy(model.state_dict())
    CObLPipeline.from_parts(model, scheduler, codec, config).save_pretrained(tmp_path / "final")
    loaded = CObLPipeline.from_pretrained(tmp_path / "final")
    assert isinstance(loaded.codec, SpaceToDepthCodec) and loaded.cobl_config == config
    for k, v in loaded.unet.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_bad_config_and_pretrained_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="huge") as err:
        get_config("huge")
    assert err.value.option == "config" and err.value.as_flag().startswith("--config: ")
    with pytest.raises(UserError, match="Stable Diffusion") as err:
        build(sd_config(), pretrained=tmp_path)
    assert err.value.option == "pretrained"
    with pytest.raises(UserError, match="resolution"):
        tiny_config().replace(resolution=30)
    with pytest.raises(UserError, match="not a CObL model") as err:
        load_pipeline(tmp_path)
    assert err.value.option == "model"


def test_train_vae_saves_a_loadable_vae_with_its_psnr(tmp_path):
    from tests.shardmaker import write_shard
    from train.vae import fit_vae

    write_shard(tmp_path / "v.tar", 3, size=32, seed=0)
    report = fit_vae(
        str(tmp_path / "v.tar"),
        tmp_path / "vae",
        resolution=32,
        max_steps=2,
        batch_size=2,
        num_workers=0,
        eval_scenes=2,
    )
    # The saved VAE, read back from disk, reconstructs the same images to the PSNR the report states.
    from diffusers import AutoencoderKL

    from cobl.data import make_dataset
    from train.vae import _images

    vae = AutoencoderKL.from_pretrained(tmp_path / "vae").eval()
    sq, count = 0.0, 0
    with torch.no_grad():
        scenes = make_dataset(str(tmp_path / "v.tar"), 99, 32, shuffle=False, epochs=1)
        for sample in itertools.islice(iter(scenes), 2):  # the report's eval_scenes
            x = _images(sample.photo[None], sample.background[None], sample.layers[None])
            recon = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample + 1) / 2).clamp(0, 1)
            sq, count = sq + float(((recon - x) ** 2).sum()), count + x.numel()
    assert report["num_images"] == count // (3 * 32 * 32)
    assert report["psnr"] == pytest.approx(10 * np.log10(count / sq), abs=1e-3)
    assert (tmp_path / "vae" / "train_report.json").is_file()
    model, codec, _ = build(tiny_config(num_objects=2, resolution=32), vae=tmp_path / "vae")
    assert isinstance(codec, VAECodec) and codec.downsample == 4 and model.config.slot_channels == 8
    lat = codec.encode_layers(torch.rand(1, 2, 4, 32, 32), torch.rand(1, 3, 32, 32))
    cond = encode_condition(codec, torch.rand(1, 3, 32, 32), None)
    assert model(lat, torch.tensor([5]), cond).shape == lat.shape


def test_sd_config_with_depth_takes_a_vae_encoded_depth_and_still_starts_as_the_frozen_unet(tmp_path):
    _write_sd_folder(tmp_path / "sd")
    config = sd_config(num_objects=2, resolution=32).replace(depth_condition=True)
    model, codec, _ = build(config, pretrained=tmp_path / "sd")
    assert model.condition_channels == 4 and model.uses_depth  # photo + depth, each through its adapter
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "sd" / "unet")
    layers, bg, photo = torch.rand(1, 2, 4, 32, 32), torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    depth = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        lat = codec.encode_layers(layers, bg)
        cond = encode_condition(codec, photo, depth)
        assert cond.shape == (1, 4, 32, 32)
        out = model(lat, torch.tensor([300]), cond)
        ref = unet(lat[:, 0, :4], torch.tensor([300]), encoder_hidden_states=model.prompt_embedding)
        torch.testing.assert_close(out[:, 0, :4], ref.sample, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="photo \\+ depth"):
            model(lat, torch.tensor([300]), encode_condition(codec, photo, None))
