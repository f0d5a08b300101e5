"""Build a CObL model + codec + noise scheduler from a config, and save/load the exported bundle.

Exported layout (what ``cobl train`` writes to ``RUN/final/`` and ``cobl infer``/``cobl eval`` read)::

    RUN/final/
      cobl.json            {"config": <CObLConfig as dict>, "name", "num_objects" (K), "num_slots" (K+1),
                            "resolution", "codec", "prediction_type", "global_step", ...}
      unet/                CObLModel.save_pretrained (config.json + diffusion_pytorch_model.safetensors)
      codec.json           {"kind": "space_to_depth", "factor": f}  or  {"kind": "vae", "vae": "vae"}
      vae/                 AutoencoderKL.save_pretrained (only for the "vae" codec)
      scheduler/           DDPMScheduler.save_pretrained (scheduler_config.json; any diffusers scheduler
                           can be built from it with ``from_config``)

``load_bundle(path)`` returns all of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobl.core.errors import UserError
from cobl.model.codec import LayerCodec, SpaceToDepthCodec, VAECodec, load_codec, load_vae
from cobl.model.configs import CObLConfig
from cobl.model.network import CObLModel

BUNDLE_FILE = "cobl.json"


@dataclass
class Bundle:
    model: CObLModel
    codec: LayerCodec
    scheduler: Any  # a diffusers scheduler (DDPMScheduler)
    config: CObLConfig
    meta: dict[str, Any]


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
            raise UserError("--config sd needs --pretrained PATH (a local diffusers Stable Diffusion folder)")
        path = Path(pretrained)
        if not (path / "unet" / "config.json").is_file():
            raise UserError(f"--pretrained {path}: expected a diffusers Stable Diffusion folder with unet/")
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
            raise UserError(f"config {config.name}: codec 'vae' needs --vae DIR (from `cobl train-vae`)")
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
    except Exception:  # optional nicety: fall back to the zero initialisation
        return None


def save_bundle(
    directory: str | Path,
    model: CObLModel,
    codec: LayerCodec,
    scheduler: Any,
    config: CObLConfig,
    **meta: Any,
) -> None:
    """Write the layout in the module docstring (weights as safetensors)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory / "unet", safe_serialization=True)
    codec.save(directory)
    scheduler.save_pretrained(directory / "scheduler")
    info = {
        "config": json.loads(config.to_json()),
        "name": config.name,
        "num_objects": config.num_objects,
        "num_slots": config.num_slots,
        "resolution": config.resolution,
        "codec": codec.kind,
        "prediction_type": scheduler.config.prediction_type,
        **meta,
    }
    (directory / BUNDLE_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))


def load_bundle(directory: str | Path, device: Any = "cpu") -> Bundle:
    """Everything ``save_bundle`` wrote; a UserError naming the folder if it is not a CObL export."""
    from diffusers import DDPMScheduler

    directory = Path(directory)
    try:
        info = json.loads((directory / BUNDLE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{directory}: not a CObL model export (cannot read {BUNDLE_FILE}: {err})") from None
    config = CObLConfig.from_dict(info["config"])
    model = CObLModel.from_pretrained(directory / "unet").to(device).eval()
    codec = load_codec(directory).to(device)
    scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
    return Bundle(model=model, codec=codec, scheduler=scheduler, config=config, meta=info)


__all__ = ["Bundle", "build", "load_bundle", "make_scheduler", "save_bundle", "load_vae"]
