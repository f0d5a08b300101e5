"""CObLModel: one frozen Stable-Diffusion UNet shared by K object slots + 1 background slot, run together.

The authors' architecture (docs/architecture.md), built around an unmodified diffusers
``UNet2DConditionModel`` (the ``unet`` submodule, its own parameter names; frozen unless ``train_base``). The
added modules live beside it and are attached with forward hooks, so the UNet's code and state dict stay
those of diffusers:

  * two T2I-Adapters (diffusers ``T2IAdapter``, ``full_adapter``): one reads the photo (3 channels in
    [-1, 1]), one the relative depth (1 channel in [-1, 1]); per level the features fuse as
    ``f = f_photo + w * f_depth`` (``w`` learnable, initialised to 1) and are broadcast to every slot;
  * gated injection into every encoder ResBlock of level ``l``: ``h = a * ResBlock(x) + (1 - a) * f_l``;
  * a ``SlotConv`` after every ResBlock (down, mid and up) and a ``SlotAttention`` after every transformer
    block (``cobl.cross_slot``);
  * every gate ``a`` is clamped to [0, 1] and starts at 1, so at initialisation each slot's prediction is
    exactly the frozen UNet's on that slot.

Text: the UNet is fed ``prompt_embedding``, the frozen text encoder's output for the empty prompt, computed
once when the model is built (``cobl.factory``) and saved with it (a buffer, never trained).

Our one deviation from the authors (layers are straight-alpha RGBA, not RGB on a grey backdrop): a slot latent
has ``slot_channels`` = the UNet's ``in_channels`` + alpha channels. When there are alpha channels, a
zero-initialised ``alpha_in`` conv adds them to ``conv_in``'s output and a zero-initialised ``alpha_out`` conv
predicts them from ``conv_out``'s input; the UNet's own channels are untouched (the alpha prediction starts at
0). The optional per-slot ``photo_skip`` (ours, tiny config only; docs/demo.md) is a zero-initialised linear
map from the space-to-depth photo (+ depth) to each slot's prediction.

Slot layout: ``S = K + 1``; slots ``0..K-1`` are objects (0 frontmost), slot ``K`` is the background.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, T2IAdapter, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from cobl.cross_slot import Gate, SlotAttention, SlotConv
from core.errors import UserError

_PRIVATE_CONFIG_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")
PHOTO_CHANNELS, DEPTH_CHANNELS = 3, 1  # the adapters' inputs: RGB photo, one-channel relative depth
ATTENTION_KINDS = ("sdpa", "eager")


def clean_unet_config(config: Any) -> dict[str, Any]:
    """A plain JSON-able dict of a UNet config, without diffusers' bookkeeping keys."""
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()}
    return {k: v for k, v in out.items() if k not in _PRIVATE_CONFIG_KEYS}


def unet_resnets(unet: UNet2DConditionModel) -> list[tuple[str, int, ResnetBlock2D]]:
    """Every ResBlock of ``unet`` in forward order as ``(part, level, block)``, part in down/mid/up."""
    out = [("down", level, r) for level, block in enumerate(unet.down_blocks) for r in block.resnets]
    out += [("mid", len(unet.down_blocks), r) for r in unet.mid_block.resnets]
    out += [("up", level, r) for level, block in enumerate(unet.up_blocks) for r in block.resnets]
    return out


def unet_transformer_blocks(unet: UNet2DConditionModel) -> list[BasicTransformerBlock]:
    """Every transformer block of ``unet`` in forward order (down, mid, up)."""
    parts = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    return [m for part in parts for m in part.modules() if isinstance(m, BasicTransformerBlock)]


class CObLModel(ModelMixin, ConfigMixin):
    """``forward(noisy_latents [B,S,C,h,w], timesteps [B], condition [B,3(+1),H,W]) -> [B,S,C,h,w]``.

    ``condition`` is ``cobl.codec.encode_condition``'s: the photo in [-1, 1], then (for a depth-
    conditioned model) the relative depth in [-1, 1], at the image size ``H = h * latent_downsample``."""

    config_name = "config.json"
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        unet_config: dict[str, Any],
        num_slots: int = 7,
        slot_channels: int = 8,
        condition_channels: int = PHOTO_CHANNELS,
        latent_downsample: int = 8,
        adapter_res_blocks: int = 2,
        slot_attention_heads: int = 8,
        prompt_tokens: int = 77,
        train_base: bool = False,
        photo_skip: bool = False,
    ):
        super().__init__()
        if condition_channels not in (PHOTO_CHANNELS, PHOTO_CHANNELS + DEPTH_CHANNELS):
            raise ValueError(
                f"condition_channels must be 3 (photo) or 4 (photo + depth), got {condition_channels}"
            )
        self.unet = UNet2DConditionModel.from_config(unet_config)
        ucfg = self.unet.config
        c0 = ucfg.in_channels
        if ucfg.out_channels != c0 or slot_channels < c0:
            raise ValueError(
                f"the base UNet needs out_channels == in_channels <= slot_channels {slot_channels}, got "
                f"{ucfg.in_channels} -> {ucfg.out_channels}"
            )
        levels = list(ucfg.block_out_channels)
        groups = ucfg.norm_num_groups
        # --- the condition: T2I-Adapters, per-level fusion, gated injection into the encoder ResBlocks
        adapter = dict(channels=levels, num_res_blocks=adapter_res_blocks, downscale_factor=latent_downsample)
        self.photo_adapter = T2IAdapter(in_channels=PHOTO_CHANNELS, **adapter)
        if condition_channels > PHOTO_CHANNELS:
            self.depth_adapter = T2IAdapter(in_channels=DEPTH_CHANNELS, **adapter)
            self.depth_weights = nn.Parameter(torch.ones(len(levels)))
        resnets = unet_resnets(self.unet)
        encoder = [(i, level) for i, (part, level, _) in enumerate(resnets) if part == "down"]
        self.inject_gates = nn.ModuleList(Gate() for _ in encoder)
        self._injection = {i: (g, level) for g, (i, level) in enumerate(encoder)}
        # --- across slots: a slot conv after every ResBlock, slot attention after every transformer block
        self.slot_convs = nn.ModuleList(SlotConv(r.out_channels, num_slots, groups) for _, _, r in resnets)
        blocks = unet_transformer_blocks(self.unet)
        self.slot_attentions = nn.ModuleList(
            SlotAttention(b.attn1.query_dim, num_slots, slot_attention_heads) for b in blocks
        )
        # --- ours: the alpha latent beside the UNet's own channels; the optional photo skip
        extra = slot_channels - c0
        if extra:
            conv_in, conv_out = self.unet.conv_in, self.unet.conv_out
            self.alpha_in = nn.Conv2d(
                extra, conv_in.out_channels, conv_in.kernel_size, padding=conv_in.padding
            )
            self.alpha_out = nn.Conv2d(
                conv_out.in_channels, extra, conv_out.kernel_size, padding=conv_out.padding
            )
            for conv in (self.alpha_in, self.alpha_out):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        if photo_skip:
            skip_inputs = condition_channels * latent_downsample**2
            self.photo_skip_weight = nn.Parameter(torch.zeros(num_slots, slot_channels, skip_inputs))
            self.photo_skip_bias = nn.Parameter(torch.zeros(num_slots, slot_channels))
        dim = ucfg.cross_attention_dim
        dim = dim[0] if isinstance(dim, (list, tuple)) else dim
        self.register_buffer("prompt_embedding", torch.zeros(1, prompt_tokens, dim))
        # --- attach: hooks keep the UNet's code and parameter names those of diffusers
        self._context: dict[str, Any] = {}
        self._plain = False  # True: the hooks step aside and the UNet runs as the plain frozen prior
        for index, (_, _, resnet) in enumerate(resnets):
            resnet.register_forward_hook(partial(self._after_resnet, index))
        for index, block in enumerate(blocks):
            block.register_forward_hook(partial(self._after_transformer_block, index))
        self.unet.conv_in.register_forward_hook(self._after_conv_in)
        self.unet.conv_out.register_forward_hook(self._after_conv_out)
        self.set_trainable()

    # ------------------------------------------------------------------ hooks
    def _after_resnet(self, index: int, module: nn.Module, args: tuple, output: torch.Tensor) -> Any:
        if self._plain:
            return None
        if index in self._injection:
            gate, level = self._injection[index]
            output = self.inject_gates[gate](output, self._context["features"][level])
        return self.slot_convs[index](output)

    def _after_transformer_block(self, index: int, module: nn.Module, args: tuple, output: Any) -> Any:
        if self._plain:
            return None
        return self.slot_attentions[index](output)

    def _after_conv_in(self, module: nn.Module, args: tuple, output: torch.Tensor) -> Any:
        alpha = self._context.get("alpha")
        if self._plain or alpha is None:
            return None
        return output + self.alpha_in(alpha.to(output.dtype))

    def _after_conv_out(self, module: nn.Module, args: tuple, output: torch.Tensor) -> Any:
        if self._plain or not hasattr(self, "alpha_out"):
            return None
        return torch.cat([output, self.alpha_out(args[0]).to(output.dtype)], dim=1)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_unet(
        cls, unet: UNet2DConditionModel, prompt_embedding: torch.Tensor | None = None, **config: Any
    ) -> CObLModel:
        """CObL around a (pretrained) base UNet, whose weights are copied (``unet`` itself is left untouched);
        ``prompt_embedding [1, T, D]`` is the text encoder's output for "" (``config`` as ``__init__``'s)."""
        if prompt_embedding is not None:
            config["prompt_tokens"] = prompt_embedding.shape[-2]
        model = cls(unet_config=clean_unet_config(unet.config), **config)
        model.unet.load_state_dict(unet.state_dict(), strict=True)
        if prompt_embedding is not None:
            model.prompt_embedding.copy_(prompt_embedding.reshape(model.prompt_embedding.shape))
        if unet.dtype != model.dtype:
            model.to(unet.dtype)
        model.set_trainable()
        return model

    @classmethod
    def from_pretrained_sd(cls, path: str | Path, prompt_embedding: torch.Tensor, **config: Any) -> CObLModel:
        """CObL around the UNet of a local diffusers-format Stable Diffusion folder (``PATH/unet``)."""
        unet_dir = Path(path) / "unet"
        if not (unet_dir / "config.json").is_file():
            raise UserError(
                f"{path}: expected a diffusers Stable Diffusion folder with unet/config.json",
                option="pretrained",
            )
        return cls.from_unet(UNet2DConditionModel.from_pretrained(unet_dir), prompt_embedding, **config)

    # ------------------------------------------------------------------ training helpers
    def set_trainable(self) -> None:
        """Freeze the base UNet (unless ``train_base``); the added modules always train."""
        for name, param in self.named_parameters():
            param.requires_grad_(self.config.train_base or not name.startswith("unet."))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def gates(self) -> list[Gate]:
        return [m for m in self.modules() if isinstance(m, Gate)]

    def clamp_gates_(self) -> None:
        """Project every gate back into [0, 1] (after an optimizer step; the forward clamps as well)."""
        for gate in self.gates():
            gate.clamp_()

    def set_attention(self, kind: str) -> None:
        """``sdpa``: torch's scaled_dot_product_attention (diffusers' default); ``eager``: the plain matmul
        processor. Applies to the UNet's attention and to the slot attention alike."""
        if kind not in ATTENTION_KINDS:
            raise UserError(f"expected one of {ATTENTION_KINDS}, got {kind!r}", option="attention")
        for module in self.modules():
            if isinstance(module, Attention):
                module.set_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())

    def module_counts(self) -> dict[str, int]:
        """How many of each added module kind the model holds."""
        return {
            "slot_convs": len(self.slot_convs),
            "slot_attentions": len(self.slot_attentions),
            "adapters": 1 + int(self.uses_depth),
        }

    @property
    def num_slots(self) -> int:
        return self.config.num_slots

    @property
    def condition_channels(self) -> int:
        """Channels of the condition the model takes: the photo (3), then the depth (1) if any."""
        return self.config.condition_channels

    @property
    def uses_depth(self) -> bool:
        return self.config.condition_channels > PHOTO_CHANNELS

    # ------------------------------------------------------------------ forward
    def _check(self, noisy_latents: torch.Tensor, condition: torch.Tensor | None) -> None:
        b, s, c, h, w = noisy_latents.shape
        if s != self.config.num_slots or c != self.config.slot_channels:
            raise ValueError(
                f"noisy_latents: expected [B, {self.config.num_slots}, {self.config.slot_channels}, h, w], "
                f"got {list(noisy_latents.shape)}"
            )
        if condition is None:
            return
        f = self.config.latent_downsample
        if condition.shape[1] != self.condition_channels or condition.shape[-2:] != (h * f, w * f):
            what = "photo + depth" if self.uses_depth else "photo"
            raise ValueError(
                f"condition: expected [B, {self.condition_channels}, {h * f}, {w * f}] ({what}), "
                f"got {list(condition.shape)}"
            )

    def _unet(self, x: torch.Tensor, timesteps: torch.Tensor, b: int, s: int) -> torch.Tensor:
        t = torch.as_tensor(timesteps, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t
        t = t.repeat_interleave(s)  # one timestep per scene, shared by its slots
        text = self.prompt_embedding.to(x.dtype).expand(x.shape[0], -1, -1)
        return self.unet(x, t, encoder_hidden_states=text, return_dict=False)[0]

    def forward(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor
    ) -> torch.Tensor:
        self._check(noisy_latents, condition)
        b, s, c, h, w = noisy_latents.shape
        c0 = self.unet.config.in_channels
        condition = condition.to(noisy_latents.dtype)
        features = self.photo_adapter(condition[:, :PHOTO_CHANNELS])
        if self.uses_depth:
            depth = self.depth_adapter(condition[:, PHOTO_CHANNELS:])
            weights = self.depth_weights.to(condition.dtype)
            features = [f + weights[i] * d for i, (f, d) in enumerate(zip(features, depth, strict=True))]
        x = noisy_latents.reshape(b * s, c, h, w)
        # Read by the hooks during this forward (and by gradient checkpointing's recomputation in backward).
        self._context = {
            "features": [f.repeat_interleave(s, dim=0) for f in features],
            "alpha": x[:, c0:] if c > c0 else None,
        }
        out = self._unet(x[:, :c0], timesteps, b, s).view(b, s, c, h, w)
        if self.config.photo_skip:
            skip_in = F.pixel_unshuffle(condition, self.config.latent_downsample).to(out.dtype)
            skip = torch.einsum("sck,bkhw->bschw", self.photo_skip_weight.to(out.dtype), skip_in)
            out = out + skip + self.photo_skip_bias.to(out.dtype)[None, :, :, None, None]
        return out

    @contextmanager
    def plain(self):
        """Within this context the hooks step aside: ``self.unet`` is the plain (frozen) UNet."""
        self._plain, before = True, self._plain
        try:
            yield self.unet
        finally:
            self._plain = before

    def prior(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The plain UNet's prediction ``[B, S, c0, h, w]`` for the UNet's own channels of every slot (no
        condition, no cross-slot modules): the Stable Diffusion prior the sampler may pull towards."""
        self._check(noisy_latents, None)
        b, s, c, h, w = noisy_latents.shape
        c0 = self.unet.config.in_channels
        with self.plain():
            out = self._unet(noisy_latents[:, :, :c0].reshape(b * s, c0, h, w), timesteps, b, s)
        return out.view(b, s, c0, h, w)
