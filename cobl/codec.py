"""Frozen codecs between layer stacks (``core.layers`` layout) and the slot latents CObL denoises.

Interface shared by both codecs (all differentiable, values in [0, 1] on the image side):
  * ``encode_layers(layers [B,K,4,H,W], background [B,3,H,W]) -> [B,S,C,h,w]`` with S = K + 1, the background
    slot last, carrying alpha = 1;
  * ``decode_layers(latents [B,S,C,h,w]) -> (layers [B,K,4,H,W], background [B,3,H,W])``;
  * ``encode_photo(photo [B,3,H,W]) -> [B,Cp,h,w]``, ``decode_photo(latents) -> [B,3,H,W]``;
  * ``latent_channels`` (C), ``photo_channels`` (Cp), ``depth_channels`` (Cd), ``downsample`` (H / h).

``VAECodec`` encodes a slot's RGB through a frozen ``AutoencoderKL`` and its alpha as a grey image through the
same VAE, stacking the two latents (C = 2 x the VAE's latent channels): alpha then lives in the latent space
the UNet already models, and the RGB half of each slot is exactly an SD image latent.
``SpaceToDepthCodec`` is a lossless pixel-space stand-in with the same interface (pixel_unshuffle by f, values
scaled to [-1, 1]); the tiny config uses it because a frozen codec must reconstruct, and this one is exact.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from core.layers import ALPHA_CHANNEL, NUM_LAYER_CHANNELS


def _to_signed(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


class LayerCodec(nn.Module):
    """Slot bookkeeping; subclasses implement ``_encode_images``/``_decode_images`` on [-1,1] images."""

    kind = "base"
    image_channels = NUM_LAYER_CHANNELS  # channels per slot image on the pixel side (RGBA)

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:  # [N, 4, H, W] -> [N, C, h, w]
        raise NotImplementedError

    def _decode_images(self, latents: torch.Tensor) -> torch.Tensor:  # [N, C, h, w] -> [N, 4, H, W]
        raise NotImplementedError

    def encode_layers(self, layers: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        b, k = layers.shape[:2]
        ones = torch.ones_like(background[:, :1])
        bg = torch.cat([background, ones], dim=1)[:, None]
        slots = torch.cat([layers, bg.to(layers.dtype)], dim=1)  # [B, S, 4, H, W]
        lat = self._encode_images(_to_signed(slots.flatten(0, 1)))
        return lat.view(b, k + 1, *lat.shape[1:])

    def decode_slots(self, latents: torch.Tensor) -> torch.Tensor:
        """Slot latents ``[N, C, h, w]`` -> RGBA images ``[N, 4, H, W]`` in [0, 1], slot by slot."""
        return _to_unit(self._decode_images(latents))

    def decode_layers(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s = latents.shape[:2]
        img = self.decode_slots(latents.flatten(0, 1))
        img = img.view(b, s, *img.shape[1:])
        return img[:, :-1], img[:, -1, :3]


class SpaceToDepthCodec(LayerCodec):
    """Lossless: ``pixel_unshuffle`` by ``factor``. Slot C = 4 f^2, photo Cp = 3 f^2."""

    kind = "space_to_depth"

    def __init__(self, factor: int = 4):
        super().__init__()
        self.factor = factor

    @property
    def latent_channels(self) -> int:
        return self.image_channels * self.factor**2

    @property
    def photo_channels(self) -> int:
        return 3 * self.factor**2

    @property
    def downsample(self) -> int:
        return self.factor

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.factor)

    def _decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.factor)

    @property
    def depth_channels(self) -> int:
        return self.factor**2

    def encode_photo(self, photo: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(_to_signed(photo), self.factor)

    def encode_depth(self, depth: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(_to_signed(depth), self.factor)

    def decode_photo(self, latents: torch.Tensor) -> torch.Tensor:
        return _to_unit(F.pixel_shuffle(latents, self.factor))


class VAECodec(LayerCodec):
    """A frozen ``AutoencoderKL``: RGB latent + alpha-as-grey latent per slot. Slot C = 2 c, photo Cp = c."""

    kind = "vae"

    def __init__(self, vae, sample: bool = False):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.sample = sample  # the posterior mean by default: deterministic targets
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0

    @property
    def vae_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def latent_channels(self) -> int:
        return 2 * self.vae_channels

    @property
    def photo_channels(self) -> int:
        return self.vae_channels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _encode_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(rgb.to(self.vae.dtype)).latent_dist
        z = dist.sample() if self.sample else dist.mode()
        return (z - self.shift_factor) * self.scaling_factor

    def _decode_rgb(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.vae.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        rgb, alpha = images[:, :3], images[:, ALPHA_CHANNEL : ALPHA_CHANNEL + 1].expand(-1, 3, -1, -1)
        z = self._encode_rgb(torch.cat([rgb, alpha], dim=0))
        n = images.shape[0]
        return torch.cat([z[:n], z[n:]], dim=1)

    def _decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        c = self.vae_channels
        n = latents.shape[0]
        img = self._decode_rgb(torch.cat([latents[:, :c], latents[:, c:]], dim=0))
        alpha = img[n:].mean(dim=1, keepdim=True)
        return torch.cat([img[:n], alpha], dim=1)

    @property
    def depth_channels(self) -> int:
        return self.vae_channels

    def encode_photo(self, photo: torch.Tensor) -> torch.Tensor:
        return self._encode_rgb(_to_signed(photo))

    def encode_depth(self, depth: torch.Tensor) -> torch.Tensor:
        """Depth as a grey image through the same VAE (as the alpha channel is)."""
        return self._encode_rgb(_to_signed(depth).expand(-1, 3, -1, -1))

    def decode_photo(self, latents: torch.Tensor) -> torch.Tensor:
        return _to_unit(self._decode_rgb(latents))


def encode_condition(codec: LayerCodec, photo: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
    """The model's condition ``[B, 3 (+ 1), H, W]``: the photo, then the relative depth when given, both in
    [-1, 1] at the image resolution (what CObL's T2I-Adapters read; ``cobl.network``).

    The one place the condition is assembled, so the trainer and the sampler feed the model alike. ``codec``
    is unused: the condition no longer goes through it (kept so callers need not change)."""
    del codec
    if depth is None:
        return _to_signed(photo)
    return torch.cat([_to_signed(photo), _to_signed(depth.to(photo.dtype))], dim=1)


def load_vae(path: str | Path):
    """An ``AutoencoderKL`` from a diffusers folder (``path`` itself or ``path/vae``), or a UserError."""
    from diffusers import AutoencoderKL

    path = Path(path)
    for candidate in (path, path / "vae"):
        if (candidate / "config.json").is_file():
            return AutoencoderKL.from_pretrained(candidate)
    raise UserError(
        f"{path}: expected a diffusers AutoencoderKL folder (config.json + weights)", option="vae"
    )
