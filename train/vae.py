"""Fit a small ``AutoencoderKL`` on rendered images (``cobl train-vae``) for the tiny config's VAE codec.

A frozen codec must reconstruct, or nothing downstream means anything; a randomly initialised VAE does not.
The VAE is trained on everything the codec will encode: photos, backgrounds, object-layer RGB (transparent
parts neutral grey) and alphas as grey images. Its reconstruction PSNR (torchmetrics) is reported and saved
beside the weights (``train_report.json``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from core.layers import ALPHA_CHANNEL

TINY_VAE_KWARGS: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 64, 64],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    scaling_factor=1.0,
)


def _images(photo: torch.Tensor, background: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
    """Every image the codec encodes (photos [B,3,H,W], backgrounds, layers [B,K,4,H,W]), as [N, 3, H, W] in
    [0, 1]."""
    layers = layers.flatten(0, 1)
    alpha = layers[:, ALPHA_CHANNEL : ALPHA_CHANNEL + 1].expand(-1, 3, -1, -1)
    occupied = layers[:, ALPHA_CHANNEL].flatten(1).amax(1) > 0
    return torch.cat([photo, background, layers[occupied, :3], alpha[occupied]])


def fit_vae(
    data: str,
    out: str | Path,
    resolution: int = 64,
    max_steps: int = 1500,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    num_workers: int = 1,
    kl_weight: float = 1e-6,
    eval_scenes: int = 16,
) -> dict[str, Any]:
    """Train, save (diffusers format, atomically) and return ``{"psnr", "num_images", "steps"}``."""
    from diffusers import AutoencoderKL
    from torchmetrics.image import PeakSignalNoiseRatio
    from tqdm.auto import tqdm

    from cobl.data import batches, expand_urls, make_dataset, make_loader
    from core.atomic import atomic_path
    from train.common import lr_schedule

    urls = expand_urls(data)
    torch.manual_seed(seed)
    vae = AutoencoderKL(sample_size=resolution, **TINY_VAE_KWARGS)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    sched = lr_schedule("cosine", opt, 0, max_steps, lr)  # cosine to 0, as the prior's
    num_objects = 99  # keep every scene: the VAE does not care about the slot count
    stream = batches(
        iter(make_loader(make_dataset(urls, num_objects, resolution, seed=seed), num_workers)), batch_size
    )
    start = time.perf_counter()
    for _ in tqdm(range(max_steps), desc="train-vae", unit="step"):
        batch = next(stream)
        x = _images(batch.photo, batch.background, batch.layers) * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean() + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    del stream

    vae.eval()
    psnr = PeakSignalNoiseRatio(data_range=1.0)
    n = 0
    with torch.no_grad():
        eval_ds = make_dataset(urls, num_objects, resolution, shuffle=False, epochs=1)
        for i, sample in enumerate(eval_ds):
            if i >= eval_scenes:
                break
            x = _images(sample.photo[None], sample.background[None], sample.layers[None])
            recon = (vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample + 1) / 2
            psnr.update(recon.clamp(0, 1), x)
            n += x.shape[0]
    report = {
        "psnr": float(psnr.compute()),
        "num_images": n,
        "steps": max_steps,
        "seconds": time.perf_counter() - start,
    }
    with atomic_path(out) as tmp:
        vae.save_pretrained(tmp)
        (tmp / "train_report.json").write_text(json.dumps(report, indent=2))
    return report
