"""Frozen codecs between layer stacks (``core.layers`` layout) and the slot latents CObL denoises.

Interface shared by both codecs (all differentiable, values in [0, 1] on the image side):
  * ``encode_layers(layers [B,K,4,H,W], background [B,3,H,W]) -> [B,S,C,h,w]`` with S = K + 1, the background
    slot last, carrying alpha = 1;
  * ``decode_layers(latents [B,S,C,h,w]) -> (layers [B,K,4,H,W], background [B,3,H,W])``;
  * ``encode_photo(photo [B,3,H,W]) -> [B,Cp,h,w]``, ``decode_photo(latents) -> [B,3,H,W]``;
  * ``latent_channels`` (C), ``photo_channels`` (Cp), ``depth_channels`` (Cd), ``downsample`` (H / h).

Decoding runs in three parts, so a caller can run the costly middle one piece by piece (composite guidance
differentiates it one image at a time, ``infer.guidance``): ``decoder_inputs`` (slot latents -> the images the
decoder network maps one by one), ``run_decoder`` (the network; batch items independent), ``decoder_outputs``
(-> RGBA in [0, 1]). ``decoder_pass_pixels`` bounds the output pixels of one pass (``decoder_pass``: how many
images that is, at least one): None = all at once (a reshuffle that keeps no activations), else passes of that
size (a network whose activations are large at full resolution; docs/training.md, "Inference memory").

``VAECodec`` encodes a slot's RGB through a frozen ``AutoencoderKL`` and its alpha as a grey image through the
same VAE, stacking the two latents (C = 2 x the VAE's latent channels): alpha then lives in the latent space
the UNet already models, and the RGB half of each slot is exactly an SD image latent.
``SpaceToDepthCodec`` is a lossless pixel-space stand-in with the same interface (pixel_unshuffle by f, values
scaled to [-1, 1]); the tiny config uses it because a frozen codec must reconstruct, and this one is exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    """Slot bookkeeping; subclasses implement ``_encode_images`` and ``run_decoder`` (+ ``decoder_inputs``/
    ``_slot_images`` when a slot is not one network image) on [-1, 1] images."""

    kind = "base"
    image_channels = NUM_LAYER_CHANNELS  # channels per slot image on the pixel side (RGBA)
    decoder_pass_pixels: int | None = None  # output pixels per pass of the decoder network (None: all)

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:  # [N, 4, H, W] -> [N, C, h, w]
        raise NotImplementedError

    def decoder_inputs(self, latents: torch.Tensor) -> torch.Tensor:
        """Slot latents ``[N, C, h, w]`` -> the decoder network's inputs ``[M, c, h, w]``."""
        return latents

    def run_decoder(self, inputs: torch.Tensor) -> torch.Tensor:
        """The decoder network on ``[m, c, h, w]`` (any subset of ``decoder_inputs``), one pass."""
        raise NotImplementedError

    def decoder_pass(self, inputs: torch.Tensor) -> int:
        """How many of the network inputs ``[M, c, h, w]`` one pass takes (``decoder_pass_pixels``)."""
        if self.decoder_pass_pixels is None:
            return max(1, inputs.shape[0])
        pixels = inputs.shape[-2] * inputs.shape[-1] * self.downsample**2
        return max(1, self.decoder_pass_pixels // pixels)

    def _slot_images(self, decoded: torch.Tensor, num_slots: int) -> torch.Tensor:
        return decoded  # one network image per slot

    def decoder_outputs(self, decoded: torch.Tensor, num_slots: int) -> torch.Tensor:
        """The network's outputs for all ``M`` inputs -> RGBA images ``[N, 4, H, W]`` in [0, 1]."""
        return _to_unit(self._slot_images(decoded, num_slots))

    def encode_layers(self, layers: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        b, k = layers.shape[:2]
        ones = torch.ones_like(background[:, :1])
        bg = torch.cat([background, ones], dim=1)[:, None]
        slots = torch.cat([layers, bg.to(layers.dtype)], dim=1)  # [B, S, 4, H, W]
        lat = self._encode_images(_to_signed(slots.flatten(0, 1)))
        return lat.view(b, k + 1, *lat.shape[1:])

    def decode_slots(self, latents: torch.Tensor) -> torch.Tensor:
        """Slot latents ``[N, C, h, w]`` -> RGBA images ``[N, 4, H, W]`` in [0, 1], slot by slot."""
        inputs = self.decoder_inputs(latents)
        decoded = torch.cat([self.run_decoder(part) for part in inputs.split(self.decoder_pass(inputs))])
        return self.decoder_outputs(decoded, latents.shape[0])

    def decode_layers(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s = latents.shape[:2]
        img = self.decode_slots(latents.flatten(0, 1))
        return split_stack(img.view(b, s, *img.shape[1:]))


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

    def run_decoder(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(inputs, self.factor)

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
    # Activations with their gradient are GiBs per 512² image (SD's VAE): one image per pass at 256² and up,
    # two at 128², where batching still pays on a CPU.
    decoder_pass_pixels = 2 * 128 * 128

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
        return vae_downsample(self.vae.config)

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

    def decoder_inputs(self, latents: torch.Tensor) -> torch.Tensor:
        """The RGB latents of the ``N`` slots, then their alpha latents: ``[2N, c, h, w]``."""
        c = self.vae_channels
        return torch.cat([latents[:, :c], latents[:, c:]], dim=0)

    def run_decoder(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._decode_rgb(inputs)

    def _slot_images(self, decoded: torch.Tensor, num_slots: int) -> torch.Tensor:
        alpha = decoded[num_slots:].mean(dim=1, keepdim=True)
        return torch.cat([decoded[:num_slots], alpha], dim=1)

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


def vae_downsample(vae_config: Mapping[str, Any]) -> int:
    """Image side / latent side of an ``AutoencoderKL`` config (a dict or ``vae.config``): one halving per
    block after the first."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def split_stack(slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded slots ``[B, S, 4, H, W]`` -> (layers ``[B, K, 4, H, W]``, background ``[B, 3, H, W]``)."""
    return slots[:, :-1], slots[:, -1, :3]


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
