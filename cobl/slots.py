"""Object-slot orders: which reorderings of a layer stack leave its composite unchanged, and applying one.

Two object layers whose alphas never overlap composite to the same image in either order, so the data's
front-to-back convention only fixes their order by a depth tie-break (``synth.scene.occlusion``). A
slot-matching loss (``train.loss``) lets the model choose among these interchangeable orders instead of
guessing the tie-break; the sampler's order search (``infer.guidance``) applies its permutations with
``permute_slots``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from core.layers import ALPHA_CHANNEL
from core.policy import MAX_ORDER_SEARCH_SLOTS, MIN_OBJECT_AREA


def occupied_slots(alphas: torch.Tensor, min_area: float = MIN_OBJECT_AREA) -> torch.Tensor:
    """Which slots of ``alphas [..., K, H, W]`` hold an object: alpha mass (mean over the pixels) above
    ``min_area`` of the image. Bool ``[..., K]``. ``min_area=0`` counts any non-zero alpha (ground truth,
    whose empty slots are exactly 0)."""
    return alphas.flatten(-2).mean(-1) > min_area


def slot_orders(slots: list[int]) -> Iterator[tuple[int, ...]]:
    """The orders an exhaustive slot-order search tries: every permutation of ``slots``, the given order
    first; only the given order when there are more than ``MAX_ORDER_SEARCH_SLOTS`` (6! = 720 orders)."""
    if len(slots) > MAX_ORDER_SEARCH_SLOTS:
        yield tuple(slots)
        return
    yield from itertools.permutations(slots)


def interchangeable_orders(layers: torch.Tensor, min_overlap: float = 0.5) -> list[list[tuple[int, ...]]]:
    """Per sample of ``layers [B, K, 4, H, W]``, every order of the K object slots with the same composite.

    An order is a tuple ``perm`` (new slot i holds old slot ``perm[i]``). Occupied slots are permuted among
    their own positions, keeping every pair whose alphas overlap (sum of ``a_i * a_j`` above ``min_overlap``
    pixels) in its front-to-back order; empty slots stay where they are. The identity comes first.
    """
    return orders_from_relations(*slot_relations(layers, min_overlap))


def slot_relations(layers: torch.Tensor, min_overlap: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """What the interchangeable orders of ``layers [B, K, 4, H, W]`` depend on: which slots are occupied
    (bool ``[B, K]``) and which pairs overlap (bool ``[B, K, K]``). Small, so a training cache keeps them
    instead of the layers (``cobl.examples``)."""
    alpha = layers[:, :, ALPHA_CHANNEL].float()
    occupied = occupied_slots(alpha, min_area=0.0)
    overlap = torch.einsum("bihw,bjhw->bij", alpha, alpha) > min_overlap
    return occupied, overlap


def orders_from_relations(occupied: torch.Tensor, overlap: torch.Tensor) -> list[list[tuple[int, ...]]]:
    """``interchangeable_orders`` from ``slot_relations``."""
    b, k = occupied.shape
    occupied, overlap = occupied.cpu(), overlap.cpu()
    orders = []
    for s in range(b):
        slots = [i for i in range(k) if occupied[s, i]]
        identity = tuple(range(k))
        tied = [(i, j) for a, i in enumerate(slots) for j in slots[a + 1 :] if not overlap[s, i, j]]
        fixed = [(i, j) for a, i in enumerate(slots) for j in slots[a + 1 :] if overlap[s, i, j]]
        found = [identity]
        if tied:
            for cand in slot_orders(slots):
                if cand == tuple(slots):
                    continue
                position = {old: new for new, old in enumerate(cand)}
                if all(position[i] < position[j] for i, j in fixed):
                    perm = list(identity)
                    for place, old in zip(slots, cand, strict=True):
                        perm[place] = old
                    found.append(tuple(perm))
        orders.append(found)
    return orders


def permute_slots(latents: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Reorder the object slots of ``latents [B, S, ...]`` by ``perm [B, K]`` (K <= S; slots from K on, the
    background among them, stay put)."""
    b, s = latents.shape[:2]
    tail = torch.arange(perm.shape[1], s, dtype=perm.dtype, device=perm.device).expand(b, -1)
    full = torch.cat([perm, tail], 1)
    index = full.reshape(b, s, *([1] * (latents.dim() - 2))).expand_as(latents)
    return torch.gather(latents, 1, index.to(latents.device))
