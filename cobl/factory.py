"""Build a CObL model + codec + noise scheduler from a config (the trainer's starting point).

The trained model is exported and loaded as a diffusers pipeline (``infer.pipeline.CObLPipeline``'s
``save_pretrained``/``from_pretrained``); this module only builds the parts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cobl.codec import LayerCodec, SpaceToDepthCodec, VAECodec, load_vae, vae_downsample
from cobl.configs import CObLConfig, check_resolution, sd21_base_unet_kwargs, sd_vae_kwargs
from cobl.network import DEPTH_CHANNELS, PHOTO_CHANNELS, CObLModel
from core.errors import UserError


def make_scheduler(config: CObLConfig, pretrained: str | Path | None = None):
    """A DDPM training scheduler for ``config`` (from ``PATH/scheduler`` when pretrained has one)."""
    from diffusers import DDPMScheduler

    sched_dir = Path(pretrained) / "scheduler" if pretrained else None
    if sched_dir is not None and (sched_dir / "scheduler_config.json").is_file():
        base = DDPMScheduler.from_pretrained(sched_dir)
        return DDPMScheduler.from_config(
            base.config, prediction_type=config.prediction_type, clip_sample=False
        )
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=False,
    )


def _module_options(config: CObLConfig, codec: LayerCodec) -> dict[str, Any]:
    """What the config decides about the added modules, the same for a pretrained and a fresh base UNet."""
    return dict(
        num_slots=config.num_slots,
        slot_channels=codec.latent_channels,
        condition_channels=PHOTO_CHANNELS + (DEPTH_CHANNELS if config.depth_condition else 0),
        latent_downsample=codec.downsample,
        adapter_res_blocks=config.adapter_res_blocks,
        slot_attention_heads=config.slot_attention_heads,
        train_base=config.train_base,
        photo_skip=config.photo_skip,
    )


def load_unet_config(path: Path) -> dict[str, Any]:
    """``PATH/unet/config.json`` of a diffusers Stable Diffusion folder."""
    return json.loads((Path(path) / "unet" / "config.json").read_text())


def _check_text_folders(path: Path) -> None:
    for part in ("tokenizer", "text_encoder"):
        if not (path / part).is_dir():
            raise UserError(
                f"{path}: no {part}/ folder: CObL feeds the frozen UNet the text encoder's embedding of the "
                f"empty prompt, so the Stable Diffusion folder needs tokenizer/ and text_encoder/",
                option="pretrained",
            )


def check_pretrained(config: CObLConfig, pretrained: str | Path | None) -> None:
    """A one-line UserError unless ``pretrained`` is what ``config`` needs: for ``sd`` (or any given folder)
    a diffusers Stable Diffusion folder with unet/, tokenizer/ and text_encoder/, whose VAE and UNet take
    the config's resolution (``cobl.configs.check_resolution``: a multiple of 64 for Stable Diffusion's)."""
    if config.name != "sd" and pretrained is None:
        return
    if pretrained is None:
        raise UserError(
            f"config {config.name} needs a local diffusers Stable Diffusion folder", option="pretrained"
        )
    path = Path(pretrained)
    if not (path / "unet" / "config.json").is_file():
        raise UserError(f"{path}: expected a diffusers Stable Diffusion folder (unet/)", option="pretrained")
    _check_text_folders(path)
    vae_config = path / "vae" / "config.json"
    if vae_config.is_file():  # the resolution against the folder's shapes, before any weights load
        factor = vae_downsample(json.loads(vae_config.read_text()))
        check_resolution(config, factor, load_unet_config(path), "the VAE")


def make_codec(config: CObLConfig, vae: str | Path | None = None) -> LayerCodec:
    """The tiny config's frozen codec: space-to-depth, or a VAE fitted by ``cobl train-vae``."""
    if vae is not None or config.codec == "vae":
        if vae is None:
            raise UserError(
                f"config {config.name}: codec 'vae' needs a VAE folder (from `cobl train-vae`)", option="vae"
            )
        return VAECodec(load_vae(vae))
    return SpaceToDepthCodec(config.space_to_depth_factor)


def base_unet_config(config: CObLConfig, codec: LayerCodec) -> dict[str, Any]:
    """The tiny base UNet's ``UNet2DConditionModel`` config: it models the whole slot latent (alpha too)."""
    return dict(
        config.unet,
        sample_size=config.resolution // codec.downsample,
        in_channels=codec.latent_channels,
        out_channels=codec.latent_channels,
    )


def tiny_prompt_embedding(config: CObLConfig, dim: int) -> torch.Tensor:
    """No text encoder at this size: a fixed random "prompt" ``[1, T, D]`` the UNet learns to read (the
    same for the CObL model and its prior, ``train.prior``)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn((1, config.prompt_tokens, dim), generator=generator)


def load_prior(path: str | Path, expected: dict[str, Any]):
    """The base UNet saved by ``cobl train-prior`` in ``path``; a one-line UserError unless its architecture
    is ``expected`` (the config's base UNet)."""
    from diffusers import UNet2DConditionModel

    path = Path(path)
    if not (path / "config.json").is_file():
        message = f"{path}: expected a prior folder from `cobl train-prior` (config.json)"
        raise UserError(message, option="prior")
    unet = UNet2DConditionModel.from_pretrained(path)
    have = dict(unet.config)
    differ = sorted(k for k, v in expected.items() if _jsonish(have.get(k)) != _jsonish(v))
    if differ:
        k = differ[0]
        raise UserError(
            f"{path}: the prior's UNet has {k}={have.get(k)!r}, the model config needs {expected[k]!r}",
            option="prior",
        )
    return unet


def _jsonish(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def build(
    config: CObLConfig,
    pretrained: str | Path | None = None,
    vae: str | Path | None = None,
    prior: str | Path | None = None,
) -> tuple[CObLModel, LayerCodec, Any]:
    """A fresh model, its frozen codec and the training scheduler.

    ``tiny``: a randomly initialised UNet of ``config.unet`` fed a fixed random prompt embedding, or the
    prior of whole objects in ``prior`` (``cobl train-prior``; trained on only when the config says
    ``train_base``), with the space-to-depth codec, or a VAE fitted by ``cobl train-vae`` when ``vae`` is
    given. ``sd``: the UNet, VAE, scheduler and the empty prompt's text embedding (tokenizer/ +
    text_encoder/) of the local diffusers folder ``pretrained``.
    """
    config.validate()
    if config.name == "sd" or pretrained is not None:
        if prior is not None:
            raise UserError("--prior is for the tiny config; sd's prior is --pretrained", option="prior")
        check_pretrained(config, pretrained)
        path = Path(pretrained)
        codec: LayerCodec = VAECodec(load_vae(vae if vae is not None else path / "vae"))
        check_resolution(config, codec.downsample, load_unet_config(path), "the VAE")
        model = CObLModel.from_pretrained_sd(
            path, empty_prompt_embedding(path), **_module_options(config, codec)
        )
        return model, codec, make_scheduler(config, path)

    codec = make_codec(config, vae)
    unet_config = base_unet_config(config, codec)
    check_resolution(config, codec.downsample, unet_config, f"the {codec.kind} codec")
    if prior is not None:
        base = load_prior(prior, unet_config)
        prompt = tiny_prompt_embedding(config, base.config.cross_attention_dim)
        model = CObLModel.from_unet(base, prompt, **_module_options(config, codec))
        return model, codec, make_scheduler(config)
    model = CObLModel(
        unet_config=unet_config, prompt_tokens=config.prompt_tokens, **_module_options(config, codec)
    )
    with torch.no_grad():
        model.prompt_embedding.copy_(tiny_prompt_embedding(config, model.prompt_embedding.shape[-1]))
    return model, codec, make_scheduler(config)


def build_shapes(config: CObLConfig, unet: dict[str, Any] | None = None) -> CObLModel:
    """The model's modules on the meta device (shapes, no memory, no weights): ``sd`` at Stable Diffusion
    2.1-base's UNet architecture (``sd21_base_unet_kwargs``) with its VAE's 8x / 4-channel latents."""
    config.validate()
    if config.codec == "vae":
        kwargs = dict(unet or sd21_base_unet_kwargs())
        factor = vae_downsample(sd_vae_kwargs())
        check_resolution(config, factor, kwargs, "Stable Diffusion's VAE")
        kwargs["sample_size"] = config.resolution // factor
        codec_like = _Shapes(latent_channels=2 * kwargs["in_channels"], downsample=factor)
    else:
        codec_like = SpaceToDepthCodec(config.space_to_depth_factor)
        kwargs = dict(
            config.unet,
            sample_size=config.resolution // codec_like.downsample,
            in_channels=codec_like.latent_channels,
            out_channels=codec_like.latent_channels,
        )
    with torch.device("meta"):
        return CObLModel(
            unet_config=kwargs, prompt_tokens=config.prompt_tokens, **_module_options(config, codec_like)
        )


class _Shapes:
    def __init__(self, latent_channels: int, downsample: int) -> None:
        self.latent_channels, self.downsample = latent_channels, downsample


def empty_prompt_embedding(path: str | Path) -> torch.Tensor:
    """The frozen text encoder's output ``[1, 77, D]`` for the empty prompt "", from ``PATH/tokenizer`` and
    ``PATH/text_encoder`` of a diffusers Stable Diffusion folder; a one-line UserError if one is missing."""
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as err:  # a declared dependency (pyproject.toml); say so on one line
        message = f"the sd config needs the transformers package ({err})"
        raise UserError(message, option="pretrained") from None

    path = Path(path)
    _check_text_folders(path)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(path / "text_encoder").eval()
    ids = tokenizer(
        [""],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return encoder(ids)[0].float()


__all__ = [
    "base_unet_config",
    "build",
    "build_shapes",
    "empty_prompt_embedding",
    "load_prior",
    "make_codec",
    "make_scheduler",
    "tiny_prompt_embedding",
]
