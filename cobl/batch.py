"""The typed records the shard reader yields: one decoded scene (``Sample``) and a collated batch (``Batch``).

Tensors follow the ``core.layers`` layout, floats in [0, 1]; K is the model's ``num_objects`` (empty
slots padded with alpha 0). ``ids`` and ``depth`` are None when the reader skipped them (``ids=False``,
``depth=False``), or, in a batch, when any of its samples lacks them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Sample:
    """One decoded scene (``cobl.data.decode_sample``)."""

    photo: torch.Tensor  # [3, H, W]
    layers: torch.Tensor  # [K, 4, H, W], slot 0 frontmost
    background: torch.Tensor  # [3, H, W]
    ids: torch.Tensor | None  # [H, W] long: 0 background, k + 1 = layer k (ids.png)
    depth: torch.Tensor | None  # [1, H, W] relative disparity (cobl.depth)
    num_objects: int  # non-empty layers of the scene (<= K)
    key: str  # the shard sample key
    scene: dict[str, Any]  # scene.json
    # Where the stream produced it (``LayerDataset``; None for a sample decoded on its own): the global
    # DataLoader worker, its index in that worker's raw stream, and the skip counts so far.
    worker: int | None = None
    position: int | None = None
    skipped: dict[str, int] | None = None


@dataclass
class Batch:
    """Samples stacked along a leading batch dimension B (``cobl.data.collate``)."""

    photo: torch.Tensor  # [B, 3, H, W]
    layers: torch.Tensor  # [B, K, 4, H, W]
    background: torch.Tensor  # [B, 3, H, W]
    keys: list[str]  # the samples' keys (the loss seeds each sample's noise with its key)
    num_objects: torch.Tensor | None = None  # [B] long
    ids: torch.Tensor | None = None  # [B, H, W]
    depth: torch.Tensor | None = None  # [B, 1, H, W]
    scenes: list[dict[str, Any]] = field(default_factory=list)
    workers: list[int | None] = field(default_factory=list)
    positions: list[int | None] = field(default_factory=list)
    skipped: list[dict[str, int] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor on ``device`` (the lists are shared)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)
