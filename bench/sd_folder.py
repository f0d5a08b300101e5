"""Write a diffusers Stable-Diffusion folder of random weights, offline (``save_pretrained``), for benches.

    python bench/sd_folder.py --out DIR               # SD 2.1-base's shapes: UNet, VAE, 23-layer CLIP (~5 GB)
    python bench/sd_folder.py --out DIR --shape tiny  # tests/sdfolder.py's tiny SD-like folder (seconds)

``real``: the UNet of ``cobl.configs.sd21_base_unet_kwargs`` (865,910,724 parameters), the SD VAE (blocks
128/256/512/512, 4 latent channels, scaling 0.18215), a CLIP text encoder of SD 2.x's width (hidden 1024,
23 layers, 16 heads; vocabulary 7 is enough for the empty prompt) with ``tests.sdfolder.write_tokenizer``,
and SD 2.1-base's DDPM schedule (scaled_linear 0.00085-0.012, epsilon). No PyPI package ships loadable SD
weights, and the checks need shapes and speeds, not pictures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_real(path: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cobl.configs import sd21_base_unet_kwargs
    from tests.sdfolder import write_tokenizer

    torch.manual_seed(0)
    UNet2DConditionModel(**sd21_base_unet_kwargs()).save_pretrained(path / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
        latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
    ).save_pretrained(path / "vae")
    text = CLIPTextConfig(
        vocab_size=7, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=1024, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )
    CLIPTextModel(text).save_pretrained(path / "text_encoder")
    write_tokenizer(path / "tokenizer")
    DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon",
        num_train_timesteps=1000,
    ).save_pretrained(path / "scheduler")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--shape", choices=("real", "tiny"), default="real")
    args = p.parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    if args.shape == "tiny":
        from tests.sdfolder import write_sd_folder

        write_sd_folder(out)
    else:
        write_real(out)
    print(f"wrote {args.shape} SD folder {out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
