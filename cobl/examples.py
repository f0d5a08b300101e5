"""What the diffusion loss reads of a scene (``Examples``), and the one function that computes it from
decoded layers (``prepare_examples``).

The loss needs the codec's slot latents, the condition (photo, depth) and three small things derived from
the layers' alphas: how much of each latent pixel is covered by an object (``--object-weight``) or by the
hidden part of one (``--hidden-weight``), and which slots are occupied and overlap (``--slot-matching``,
``cobl.slots``). Everything else in the layers is read only by the encoder. So the trainer either prepares
each batch as it comes (the streaming image path) or prepares every scene once and keeps the result
(``cobl.cache``): the loss is the same function of the same numbers either way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cobl.batch import Batch
from cobl.slots import slot_relations
from core.layers import ALPHA_CHANNEL, visible_weights


@dataclass
class Examples:
    """B scenes as the loss reads them (``prepare_examples``)."""

    latents: torch.Tensor  # [B, S, C, h, w] float32: the codec's slot latents, background slot last
    photo: torch.Tensor  # [B, 3, H, W] in [0, 1]
    depth: torch.Tensor | None  # [B, 1, H, W] relative disparity (cobl.depth), None without depth
    object_area: torch.Tensor  # [B, 1, h, w]: the union of the object alphas, averaged per latent pixel
    hidden_area: torch.Tensor  # [B, 1, h, w]: the hidden part of any object (amodal minus visible), likewise
    occupied: torch.Tensor  # [B, K] bool (cobl.slots.slot_relations)
    overlap: torch.Tensor  # [B, K, K] bool
    num_objects: torch.Tensor  # [B] long
    keys: list[str]  # sample keys: the loss seeds each scene's noise with its key

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str) -> Examples:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


def codec_dtype(codec: Any) -> torch.dtype:
    return next(iter(codec.parameters()), torch.empty(0)).dtype


def prepare_examples(codec: Any, batch: Batch) -> Examples:
    """Encode ``batch``'s layers and background with the (frozen) codec and derive the loss's alpha maps.
    On the batch's device; no gradient."""
    dtype = codec_dtype(codec)
    with torch.no_grad():
        latents = codec.encode_layers(batch.layers.to(dtype), batch.background.to(dtype)).float()
        alphas = batch.layers[:, :, ALPHA_CHANNEL].float()
        grid = latents.shape[-2:]
        object_area = F.adaptive_avg_pool2d(alphas.amax(dim=1, keepdim=True), grid)
        hidden = (alphas - visible_weights(alphas)).amax(dim=1, keepdim=True)
        hidden_area = F.adaptive_avg_pool2d(hidden, grid)
        occupied, overlap = slot_relations(batch.layers)
    num_objects = batch.num_objects
    if num_objects is None:
        num_objects = occupied.sum(dim=1)
    return Examples(
        latents=latents,
        photo=batch.photo,
        depth=batch.depth,
        object_area=object_area,
        hidden_area=hidden_area,
        occupied=occupied,
        overlap=overlap,
        num_objects=num_objects.to(latents.device),
        keys=list(batch.keys),
    )
