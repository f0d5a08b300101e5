"""Named model configurations: ``tiny`` (CPU-sized, trained from scratch) and ``sd`` (local Stable Diffusion).

A config fixes everything the trainer and the exported bundle need to rebuild the model: the base UNet's
architecture, the number of object slots K, the image resolution, the codec and the noise schedule. ``sd``
takes its UNet/VAE/scheduler from a diffusers-format folder given with ``--pretrained`` (never the hub).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.policy import DEFAULT_OBJECTS, DEFAULT_RESOLUTION, DEPTH_SOURCES

CODEC_KINDS = ("space_to_depth", "vae")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass(frozen=True)
class CObLConfig:
    """Everything that shapes a CObL model. ``unet`` holds ``UNet2DConditionModel`` keyword arguments
    (in/out channels are filled in from the codec); for ``sd`` they come from the pretrained folder."""

    name: str
    num_objects: int  # K object slots; the model has S = K + 1 slots (the last one is the background)
    resolution: int
    codec: str  # one of CODEC_KINDS
    space_to_depth_factor: int = 4
    unet: dict[str, Any] = field(default_factory=dict)
    train_base: bool = False  # tiny has no pretrained prior to keep, so it trains the whole UNet
    prompt_tokens: int = 4  # tiny: length of its fixed random prompt (sd: the tokenizer's, 77)
    slot_attention_heads: int = 8  # heads of the attention across slots
    adapter_res_blocks: int = 2  # ResBlocks per level of each T2I-Adapter
    photo_skip: bool = False  # ours: zero-initialised per-slot linear photo -> prediction path (CObLModel)
    depth_condition: bool = False  # condition on relative depth as well as the photo (cobl.depth)
    depth_source: str = "rendered"  # train/eval depth: "rendered" (oracle) or "monocular" (simulated)
    prediction_type: str = "sample"
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000

    @property
    def num_slots(self) -> int:
        return self.num_objects + 1

    def replace(self, **changes: Any) -> CObLConfig:
        """A copy with ``changes`` applied; ``None`` values are ignored (unset CLI options)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        if self.num_objects < 1:
            raise UserError(f"config {self.name}: must be >= 1, got {self.num_objects}", option="num_objects")
        if self.codec not in CODEC_KINDS:
            raise UserError(f"config {self.name}: codec must be one of {CODEC_KINDS}, got {self.codec!r}")
        if self.depth_source not in DEPTH_SOURCES:
            raise UserError(
                f"config {self.name}: must be one of {DEPTH_SOURCES}, got {self.depth_source!r}",
                option="depth_source",
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise UserError(
                f"config {self.name}: must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}",
                option="prediction_type",
            )
        if self.resolution <= 0:
            message = f"config {self.name}: must be positive, got {self.resolution}"
            raise UserError(message, option="resolution")
        if self.codec == "space_to_depth":  # a VAE's factor is known once it is loaded (cobl.factory)
            check_resolution(self, self.space_to_depth_factor, self.unet, "the space-to-depth codec")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CObLConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def unet_downsample(unet: dict[str, Any]) -> int:
    """Latent side / smallest feature side of a ``UNet2DConditionModel`` config: a halving per level after
    the first."""
    return 2 ** (len(unet.get("block_out_channels") or [0]) - 1)


def check_resolution(config: CObLConfig, codec_downsample: int, unet: dict[str, Any], codec: str) -> None:
    """A UserError (``option="resolution"``) unless the image side divides into the codec's latents and then
    the UNet's levels: a multiple of ``codec_downsample * unet_downsample(unet)`` (64 for Stable
    Diffusion's VAE and UNet)."""
    multiple = codec_downsample * unet_downsample(unet)
    if config.resolution % multiple:
        raise UserError(
            f"config {config.name}: must be a multiple of {multiple} ({codec} shrinks {codec_downsample}x, "
            f"the UNet {unet_downsample(unet)}x more), got {config.resolution}",
            option="resolution",
        )


def tiny_unet_kwargs() -> dict[str, Any]:
    """A two-level UNet2DConditionModel with transformer blocks at both levels (~1 M parameters).
    Lists, not tuples, so the config survives its JSON round trip unchanged."""
    return dict(
        layers_per_block=1,
        block_out_channels=[32, 64],
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=32,
        attention_head_dim=[2, 4],  # diffusers' historical name: the number of heads (head dim 16)
        norm_num_groups=8,
    )


def tiny_config(
    num_objects: int = DEFAULT_OBJECTS[1], resolution: int = DEFAULT_RESOLUTION
) -> CObLConfig:
    """The CPU-sized config; its defaults are the data's (``core.policy``): K = the most objects a default
    scene holds, and the default resolution, so default data trains without a skip or a resize."""
    return CObLConfig(
        name="tiny",
        num_objects=num_objects,
        resolution=resolution,
        codec="space_to_depth",  # exact and free; learns far faster on a CPU than a fitted tiny VAE
        space_to_depth_factor=4,
        unet=tiny_unet_kwargs(),
        train_base=True,
        prompt_tokens=4,
        slot_attention_heads=2,  # head width 16 at 32 channels
        adapter_res_blocks=1,
        photo_skip=True,
        prediction_type="sample",
        beta_schedule="squaredcos_cap_v2",
    )


def sd_config(num_objects: int = 6, resolution: int = 512) -> CObLConfig:
    """Stable Diffusion: the UNet architecture comes from ``--pretrained``; the base stays frozen."""
    return CObLConfig(
        name="sd",
        num_objects=num_objects,
        resolution=resolution,
        codec="vae",
        unet={},
        train_base=False,
        prompt_tokens=77,
        slot_attention_heads=8,
        adapter_res_blocks=2,
        prediction_type="epsilon",
        beta_schedule="scaled_linear",
    )


def sd21_base_unet_kwargs() -> dict[str, Any]:
    """Stable Diffusion 2.1-base's UNet architecture (865,910,724 parameters, 22 ResBlocks, 16 transformer
    blocks), to build the real shapes without weights (``cobl model summary``, bench/bench_train.py)."""
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=[320, 640, 1280, 1280],
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=1024,
        attention_head_dim=[5, 10, 20, 20],
        use_linear_projection=True,
        norm_num_groups=32,
    )


def sd_vae_kwargs() -> dict[str, Any]:
    """Stable Diffusion's VAE architecture (``AutoencoderKL``, 83,653,863 parameters, 8x / 4-channel
    latents), to build the real shapes without weights (``cobl.factory.build_shapes``,
    bench/bench_infer.py)."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )


CONFIGS = {"tiny": tiny_config, "sd": sd_config}


@dataclass(frozen=True)
class TrainRecipe:
    """A config's training defaults (each overridable by its ``cobl train`` flag; train.options)."""

    batch_size: int  # scenes per process per micro-step
    lr: float
    min_lr: float  # the cosine schedule decays to this
    snr_gamma: float  # min-SNR loss weighting; 0 = off
    cond_dropout: float  # probability of zeroing the photo and depth conditions together
    mixed_precision: str  # no | fp16 | bf16 (autocast)
    gradient_checkpointing: bool
    attention: str  # sdpa | eager


RECIPES = {
    # Ours, measured on the demo (docs/demo.md): tiny trains from scratch at a high rate in fp32.
    "tiny": TrainRecipe(
        batch_size=8, lr=5e-4, min_lr=0.0, snr_gamma=0.0, cond_dropout=0.0, mixed_precision="no",
        gradient_checkpointing=False, attention="sdpa",
    ),
    # The authors' recipe (docs/training.md).
    "sd": TrainRecipe(
        batch_size=2, lr=1e-4, min_lr=1e-6, snr_gamma=5.0, cond_dropout=0.1, mixed_precision="bf16",
        gradient_checkpointing=True, attention="sdpa",
    ),
}  # fmt: skip


def recipe_for(config: CObLConfig) -> TrainRecipe:
    """The training defaults of ``config`` (a config file takes its ``name``'s; unknown names: tiny's)."""
    return RECIPES.get(config.name, RECIPES["tiny"])


def get_config(name: str) -> CObLConfig:
    """A named config, or a JSON file holding a ``CObLConfig``."""
    if name in CONFIGS:
        return CONFIGS[name]()
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text())
        except (ValueError, OSError) as err:
            raise UserError(f"{path}: not a CObL config JSON ({err})", option="config") from None
        from core.config_check import check_fields  # unknown keys (nearest known one named), wrong types

        check_fields(data, CObLConfig, str(path))
        cfg = CObLConfig.from_dict(data)
        cfg.validate()
        return cfg
    raise UserError(
        f"expected one of {sorted(CONFIGS)} or a config .json file, got {name!r}", option="config"
    )
