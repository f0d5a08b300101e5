"""A tiny Stable-Diffusion-shaped diffusers folder, written offline with ``save_pretrained``:
``unet/`` (SD 2.x block types, linear projections), ``vae/``, ``scheduler/``, ``text_encoder/`` (CLIP) and
``tokenizer/`` (a CLIP BPE tokenizer over a handful of tokens: vocab.json + merges.txt)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

TEXT_DIM = 32


def sd_like_unet(sample_size: int = 16) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=[2, 4],
        use_linear_projection=True,
        norm_num_groups=8,
    )


def sd_like_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def write_tokenizer(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a": 2, "b": 3, "a</w>": 4, "b</w>": 5, "ab</w>": 6}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\na b</w>\n")
    (path / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    )


def text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=7,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def write_sd_folder(path: Path, text: bool = True) -> Path:
    """The folder; ``text=False`` leaves out tokenizer/ and text_encoder/."""
    sd_like_unet().save_pretrained(path / "unet")
    sd_like_vae().save_pretrained(path / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", prediction_type="epsilon").save_pretrained(
        path / "scheduler"
    )
    if text:
        write_tokenizer(path / "tokenizer")
        text_encoder().save_pretrained(path / "text_encoder")
    return path
