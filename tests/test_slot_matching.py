"""Slot matching: which object-slot orders composite alike, and the loss that scores the closest of them."""

from __future__ import annotations

import itertools

import torch
from diffusers import DDPMScheduler

from cobl.batch import Batch
from cobl.codec import SpaceToDepthCodec
from cobl.parametrization import output_from_x0
from cobl.slots import interchangeable_orders, permute_slots
from core.layers import EMPTY_RGB, composite
from train.loss import diffusion_loss, matched_latents


def _stack() -> tuple[torch.Tensor, torch.Tensor]:
    """K = 4 slots on 16x16: objects 0 and 1 overlap (0 in front), object 2 stands apart, slot 3 is empty."""
    layers = torch.zeros(1, 4, 4, 16, 16)
    layers[:, :, :3] = torch.tensor(EMPTY_RGB).view(3, 1, 1)
    boxes = [(2, 8, 2, 8), (5, 11, 5, 11), (12, 16, 0, 4)]
    colours = [(1.0, 0.1, 0.1), (0.1, 1.0, 0.1), (0.1, 0.1, 1.0)]
    for k, ((y0, y1, x0, x1), rgb) in enumerate(zip(boxes, colours, strict=True)):
        layers[0, k, :3, y0:y1, x0:x1] = torch.tensor(rgb).view(3, 1, 1)
        layers[0, k, 3, y0:y1, x0:x1] = 1
    background = torch.full((1, 3, 16, 16), 0.3)
    return layers, background


def test_interchangeable_orders_are_exactly_the_orders_with_the_same_composite():
    layers, background = _stack()
    (orders,) = interchangeable_orders(layers)
    assert orders[0] == (0, 1, 2, 3)  # the data's own order first
    photo = composite(layers[0], background[0])
    same = set()
    for perm in itertools.permutations(range(3)):
        order = (*perm, 3)
        if torch.allclose(composite(layers[0, list(order)], background[0]), photo):
            same.add(order)
    assert set(orders) == same == {(0, 1, 2, 3), (0, 2, 1, 3), (2, 0, 1, 3)}


def test_overlapping_objects_and_empty_slots_never_move():
    layers, _ = _stack()
    layers[0, 2, 3] = 0  # object 2 removed: 0 and 1 overlap, nothing is free
    layers[0, 2, :3] = torch.tensor(EMPTY_RGB).view(3, 1, 1)
    assert interchangeable_orders(layers) == [[(0, 1, 2, 3)]]


def test_matched_latents_pick_the_closest_order_and_keep_ties_in_data_order():
    latents = torch.randn(2, 4, 3, 2, 2)  # [B, S = K + 1, C, h, w], K = 3
    orders = [[(0, 1, 2), (1, 0, 2)], [(0, 1, 2), (1, 0, 2)]]
    swapped = permute_slots(latents, torch.tensor([[1, 0, 2], [1, 0, 2]]))
    prediction = torch.stack([swapped[0], latents[1]])
    out = matched_latents(prediction, latents, orders, torch.ones(1, 1, 1, 1, 1))
    assert torch.equal(out[0], swapped[0]) and torch.equal(out[1], latents[1])
    tie = latents.clone()
    tie[:, 1] = tie[:, 0]  # slots 0 and 1 equal: both orders fit equally, the data's order is kept
    assert torch.equal(matched_latents(tie, tie, orders, torch.ones(1, 1, 1, 1, 1)), tie)


class _Oracle(torch.nn.Module):
    """A denoiser that outputs exactly what implies the given clean latents at every noisy input."""

    def __init__(self, x0: torch.Tensor, scheduler: DDPMScheduler):
        super().__init__()
        self.x0, self.scheduler = x0, scheduler

    def forward(self, noisy, timesteps, photo_latents):
        alpha_bar = self.scheduler.alphas_cumprod[timesteps]
        return output_from_x0(self.x0, noisy, alpha_bar, self.scheduler.config.prediction_type)


def test_slot_matching_loss_accepts_an_interchangeable_order_for_every_parametrization():
    layers, background = _stack()
    codec = SpaceToDepthCodec(4)
    batch = Batch(layers=layers, background=background, photo=composite(layers, background), keys=["scene0"])
    latents = codec.encode_layers(layers, background)
    other_order = permute_slots(latents, torch.tensor([[2, 0, 1, 3]]))  # object 2 moved to the front
    for prediction_type in ("sample", "epsilon", "v_prediction"):
        scheduler = DDPMScheduler(prediction_type=prediction_type, beta_schedule="squaredcos_cap_v2")
        model = _Oracle(other_order, scheduler)
        for step in range(3):  # three timesteps
            plain = diffusion_loss(model, codec, scheduler, batch, step=step)
            matched = diffusion_loss(model, codec, scheduler, batch, step=step, slot_matching=True)
            assert matched.item() < 1e-6 < plain.item(), prediction_type
    # An order that changes the composite (1 in front of 0) is not accepted.
    wrong = permute_slots(latents, torch.tensor([[1, 0, 2, 3]]))
    scheduler = DDPMScheduler(prediction_type="sample")
    loss = diffusion_loss(_Oracle(wrong, scheduler), codec, scheduler, batch, step=0, slot_matching=True)
    assert loss.item() > 1e-3
