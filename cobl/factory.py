"""Build a CObL model + codec + noise scheduler from a config (the trainer's starting point).

The trained model is exported and loaded as a diffusers pipeline (``infer.pipeline.CObLPipeline``'s
``save_pretrained``/``from_pretrained``); this module only builds the parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cobl.codec import LayerCodec, SpaceToDepthCodec, VAECodec, load_vae
from cobl.configs import CObLConfig
from cobl.network import CObLModel
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


def build(
    config: CObLConfig, pretrained: str | Path | None = None, vae: str | Path | None = None
) -> tuple[CObLModel, LayerCodec, Any]:
    """A fresh model, its frozen codec and the training scheduler.

    ``tiny``: a randomly initialised UNet of ``config.unet`` (trained whole), the space-to-depth codec, or a
    VAE fitted by ``cobl train-vae`` when ``vae`` is given. ``sd``: the UNet, VAE and scheduler of the local
    diffusers folder ``pretrained``.
    """
    config.validate()
    # What the config decides about the new modules, the same for a pretrained and a fresh base UNet.
    module_options = dict(
        null_cond_tokens=config.null_cond_tokens,
        cross_slot_head_dim=config.cross_slot_head_dim,
        full_attention_max_tokens=config.full_attention_max_tokens,
        train_base=config.train_base,
        photo_skip=config.photo_skip,
    )
    if config.name == "sd" or pretrained is not None:
        if pretrained is None:
            raise UserError(
                f"config {config.name} needs a local diffusers Stable Diffusion folder", option="pretrained"
            )
        path = Path(pretrained)
        if not (path / "unet" / "config.json").is_file():
            raise UserError(
                f"{path}: expected a diffusers Stable Diffusion folder with unet/", option="pretrained"
            )
        codec: LayerCodec = VAECodec(load_vae(vae if vae is not None else path / "vae"))
        model = CObLModel.from_pretrained_sd(
            path,
            num_objects=config.num_objects,
            slot_channels=codec.latent_channels,
            photo_channels=codec.photo_channels,
            depth_channels=_depth_channels(config, codec),
            null_cond_init=_empty_prompt_embedding(path, config.null_cond_tokens),
            **module_options,
        )
        return model, codec, make_scheduler(config, path)

    if vae is not None or config.codec == "vae":
        if vae is None:
            raise UserError(
                f"config {config.name}: codec 'vae' needs a VAE folder (from `cobl train-vae`)", option="vae"
            )
        codec = VAECodec(load_vae(vae))
        base_channels = codec.vae_channels
    else:
        codec = SpaceToDepthCodec(config.space_to_depth_factor)
        base_channels = codec.latent_channels
    unet_config = dict(
        config.unet,
        sample_size=config.resolution // codec.downsample,
        in_channels=base_channels,
        out_channels=base_channels,
    )
    model = CObLModel(
        unet_config=unet_config,
        num_slots=config.num_slots,
        slot_channels=codec.latent_channels,
        photo_channels=codec.photo_channels,
        depth_channels=_depth_channels(config, codec),
        **module_options,
    )
    return model, codec, make_scheduler(config)


def _depth_channels(config: CObLConfig, codec: LayerCodec) -> int:
    """Condition channels the depth map adds: the codec's depth latent when the config asks for depth."""
    return codec.depth_channels if config.depth_condition else 0


def _empty_prompt_embedding(path: Path, tokens: int):
    """The text encoder's output for "" when the SD folder ships one (better than zeros), else None."""
    if not ((path / "text_encoder").is_dir() and (path / "tokenizer").is_dir()):
        return None
    try:
        import torch
        from transformers import AutoTokenizer, CLIPTextModel

        tok = AutoTokenizer.from_pretrained(path / "tokenizer")
        enc = CLIPTextModel.from_pretrained(path / "text_encoder")
        ids = tok(
            [""], padding="max_length", max_length=tokens, truncation=True, return_tensors="pt"
        ).input_ids
        with torch.no_grad():
            return enc(ids)[0]
    except (OSError, ValueError, KeyError, ImportError, RuntimeError):  # optional: zeros instead
        return None


__all__ = ["build", "make_scheduler"]
