"""CObLModel: one Stable-Diffusion UNet shared by K object slots + 1 background slot, denoised concurrently.

The diffusers ``UNet2DConditionModel`` is wrapped, not forked (it is the ``unet`` submodule):
  * ``conv_in`` is expanded to take ``[slot latent (C) | photo latent (Cp)]``. The first ``c0`` slot channels
    (the RGB latent, ``c0`` = the base UNet's ``in_channels``) keep the pretrained weights; the remaining slot
    channels (the alpha latent) and the photo channels start at zero, so the pretrained behaviour is the
    starting point.
  * ``conv_out`` is expanded to predict all C slot channels; the RGB part keeps the pretrained weights, the
    alpha part starts at zero.
  * every transformer block's self-attention gets a zero-initialised cross-slot residual
    (``cobl.cross_slot``).
  * a learned null conditioning replaces the text encoder's output: no text model is needed.
So at initialisation, the RGB channels of every slot equal the base UNet's output on that slot's RGB latent.

Slot layout: ``S = K + 1``; slots ``0..K-1`` are objects (0 frontmost), slot ``K`` is the background.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from cobl.cross_slot import CrossSlotAttention, insert_cross_slot_attention
from core.errors import UserError

# Parameter-name fragments of the modules CObL adds; everything else in ``unet`` is the (frozen) base.
NEW_MODULE_KEYS = ("conv_in", "conv_out", "cross_slot", "null_encoder_hidden_states", "photo_skip")
_PRIVATE_CONFIG_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def clean_unet_config(config: Any) -> dict[str, Any]:
    """A plain JSON-able dict of a UNet config, without diffusers' bookkeeping keys."""
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()}
    return {k: v for k, v in out.items() if k not in _PRIVATE_CONFIG_KEYS}


class CObLModel(ModelMixin, ConfigMixin):
    """``forward(noisy_latents [B,S,C,h,w], timesteps [B], photo_latents [B,Cp(+Cd),h,w]) -> [B,S,C,h,w]``.

    ``photo_latents`` is the condition of ``cobl.codec.encode_condition``: with ``depth_channels`` > 0 the
    depth latent follows the photo latent on the channel axis."""

    config_name = "config.json"
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        unet_config: dict[str, Any],
        num_slots: int = 7,
        slot_channels: int = 8,
        photo_channels: int = 4,
        null_cond_tokens: int = 77,
        cross_slot_head_dim: int = 64,
        full_attention_max_tokens: int = 1024,
        train_base: bool = False,
        photo_skip: bool = False,
        depth_channels: int = 0,
    ):
        super().__init__()
        self.unet = UNet2DConditionModel.from_config(unet_config)
        c0 = self.unet.config.in_channels
        if slot_channels % c0 or self.unet.config.out_channels != c0:
            raise ValueError(
                f"slot_channels {slot_channels} must be a multiple of the base UNet's in_channels {c0}, "
                f"and its out_channels must equal in_channels"
            )
        self._expand_convs(self.unet.conv_in, self.unet.conv_out)
        insert_cross_slot_attention(self.unet, num_slots, cross_slot_head_dim, full_attention_max_tokens)
        dim = self.unet.config.cross_attention_dim
        dim = dim[0] if isinstance(dim, (list, tuple)) else dim
        self.null_encoder_hidden_states = nn.Parameter(torch.zeros(1, null_cond_tokens, dim))
        # Optional per-slot linear map photo latent -> slot prediction, zero-initialised (so step 0 is still
        # the base UNet). It makes "copy the photo where this slot shows it" a linear job instead of one the
        # whole UNet must learn; with a lossless pixel codec that is most of the background slot and the
        # visible part of every object.
        if photo_skip:
            self.photo_skip_weight = nn.Parameter(
                torch.zeros(num_slots, slot_channels, photo_channels + depth_channels)
            )
            self.photo_skip_bias = nn.Parameter(torch.zeros(num_slots, slot_channels))
        self.set_trainable()

    # ------------------------------------------------------------------ construction
    def _expand_convs(self, base_in: nn.Conv2d, base_out: nn.Conv2d) -> None:
        """Replace ``conv_in``/``conv_out`` by expanded ones, initialised from ``base_in``/``base_out``."""
        cfg = self.config
        c0 = base_in.in_channels
        conv_in = nn.Conv2d(
            cfg.slot_channels + self.condition_channels,
            base_in.out_channels,
            kernel_size=base_in.kernel_size,
            padding=base_in.padding,
        )
        conv_out = nn.Conv2d(
            base_out.in_channels,
            cfg.slot_channels,
            kernel_size=base_out.kernel_size,
            padding=base_out.padding,
        )
        with torch.no_grad():
            conv_in.weight.zero_()
            conv_in.weight[:, :c0] = base_in.weight
            conv_in.bias.copy_(base_in.bias)
            conv_out.weight.zero_()
            conv_out.bias.zero_()
            conv_out.weight[:c0] = base_out.weight
            conv_out.bias[:c0] = base_out.bias
        self.unet.conv_in = conv_in.to(base_in.weight.dtype)
        self.unet.conv_out = conv_out.to(base_out.weight.dtype)

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        num_slots: int,
        slot_channels: int,
        photo_channels: int,
        null_cond_tokens: int = 77,
        cross_slot_head_dim: int = 64,
        full_attention_max_tokens: int = 1024,
        train_base: bool = False,
        null_cond_init: torch.Tensor | None = None,
        photo_skip: bool = False,
        depth_channels: int = 0,
    ) -> CObLModel:
        """Build CObL around a (pretrained) base UNet; ``unet`` itself is left untouched."""
        model = cls(
            unet_config=clean_unet_config(unet.config),
            num_slots=num_slots,
            slot_channels=slot_channels,
            photo_channels=photo_channels,
            null_cond_tokens=null_cond_tokens,
            cross_slot_head_dim=cross_slot_head_dim,
            full_attention_max_tokens=full_attention_max_tokens,
            train_base=train_base,
            photo_skip=photo_skip,
            depth_channels=depth_channels,
        )
        base_state = {
            k: v for k, v in unet.state_dict().items() if not k.startswith(("conv_in.", "conv_out."))
        }
        # The wrapped self-attention lives one level deeper: "...attn1.to_q" -> "...attn1.attn.to_q".
        base_state = {k.replace(".attn1.", ".attn1.attn."): v for k, v in base_state.items()}
        missing, unexpected = model.unet.load_state_dict(base_state, strict=False)
        new_missing = [k for k in missing if not any(n in k for n in NEW_MODULE_KEYS)]
        if new_missing or unexpected:
            raise ValueError(
                f"base UNet does not fit: missing {new_missing[:3]}, unexpected {unexpected[:3]}"
            )
        model._expand_convs(copy.deepcopy(unet.conv_in), copy.deepcopy(unet.conv_out))
        if null_cond_init is not None:
            with torch.no_grad():
                model.null_encoder_hidden_states.copy_(
                    null_cond_init.reshape(model.null_encoder_hidden_states.shape)
                )
        if unet.dtype != model.dtype:
            model.to(unet.dtype)
        model.set_trainable()
        return model

    @classmethod
    def from_pretrained_sd(
        cls, path: str | Path, num_objects: int, slot_channels: int, photo_channels: int, **kwargs: Any
    ) -> CObLModel:
        """CObL around the UNet of a local diffusers-format Stable Diffusion folder (``PATH/unet``)."""
        unet_dir = Path(path) / "unet"
        if not (unet_dir / "config.json").is_file():
            raise UserError(
                f"{path}: expected a diffusers Stable Diffusion folder with unet/config.json",
                option="pretrained",
            )
        unet = UNet2DConditionModel.from_pretrained(unet_dir)
        return cls.from_unet(unet, num_objects + 1, slot_channels, photo_channels, **kwargs)

    # ------------------------------------------------------------------ training helpers
    def set_trainable(self) -> None:
        """Freeze the base UNet (unless ``train_base``); the new modules always train."""
        for name, param in self.named_parameters():
            param.requires_grad_(self.config.train_base or any(k in name for k in NEW_MODULE_KEYS))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def cross_slot_modules(self) -> list[CrossSlotAttention]:
        return [m for m in self.modules() if isinstance(m, CrossSlotAttention)]

    @property
    def num_slots(self) -> int:
        return self.config.num_slots

    @property
    def condition_channels(self) -> int:
        """Channels of the condition the model takes: the photo latent, then the depth latent if any."""
        return self.config.photo_channels + self.config.depth_channels

    @property
    def uses_depth(self) -> bool:
        return self.config.depth_channels > 0

    # ------------------------------------------------------------------ forward
    def forward(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, photo_latents: torch.Tensor
    ) -> torch.Tensor:
        b, s, c, h, w = noisy_latents.shape
        if s != self.config.num_slots or c != self.config.slot_channels:
            raise ValueError(
                f"noisy_latents: expected [B, {self.config.num_slots}, {self.config.slot_channels}, h, w], "
                f"got {list(noisy_latents.shape)}"
            )
        if photo_latents.shape[1] != self.condition_channels:
            what = "photo + depth" if self.uses_depth else "photo"
            raise ValueError(
                f"photo_latents: expected {self.condition_channels} channels ({what} condition), "
                f"got {photo_latents.shape[1]}"
            )
        photo = photo_latents.to(noisy_latents.dtype)[:, None].expand(b, s, *photo_latents.shape[1:])
        x = torch.cat([noisy_latents, photo], dim=2).reshape(b * s, c + photo_latents.shape[1], h, w)
        t = torch.as_tensor(timesteps, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t
        t = t.repeat_interleave(s)  # one timestep per scene, shared by its slots
        cond = self.null_encoder_hidden_states.to(x.dtype).expand(b * s, -1, -1)
        out = self.unet(x, t, encoder_hidden_states=cond, return_dict=False)[0].view(b, s, c, h, w)
        if self.config.photo_skip:
            weight = self.photo_skip_weight.to(out.dtype)
            skip = torch.einsum("sck,bkhw->bschw", weight, photo_latents.to(out.dtype))
            out = out + skip + self.photo_skip_bias.to(out.dtype)[None, :, :, None, None]
        return out
