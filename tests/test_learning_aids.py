"""The two opt-in learning aids of the tiny config: the per-slot photo skip and the object-weighted loss."""

from __future__ import annotations

import torch

from cobl.codec import encode_condition
from cobl.configs import tiny_config
from cobl.data import collate, decode_sample
from cobl.factory import build
from tests.shardmaker import make_scene, scene_members
from train.loss import diffusion_loss

torch.set_num_threads(1)


def _batch(num_objects: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    samples = []
    for i in range(2):
        members = scene_members(make_scene(rng, 32, num_objects), 3, f"k{i}")
        samples.append(decode_sample({"__key__": f"k{i}", **members}, 3, 32))
    return collate(samples)


def _model(photo_skip: bool):
    torch.manual_seed(0)
    return build(tiny_config(num_objects=3, resolution=32).replace(photo_skip=photo_skip))


def test_photo_skip_starts_at_zero_and_learns_to_copy_the_photo():
    with_skip, codec, _ = _model(True)
    without, _, _ = _model(False)
    without.load_state_dict(with_skip.state_dict(), strict=False)
    batch = _batch(2)
    photo = encode_condition(codec, batch.photo, None)
    noisy = torch.randn(2, 4, codec.latent_channels, 8, 8)
    t = torch.tensor([500, 500])
    assert torch.equal(with_skip(noisy, t, photo), without(noisy, t, photo))  # zero-initialised
    # The skip is a per-slot linear map: regressing the background slot's RGB on the photo fits it exactly.
    target = codec.encode_layers(batch.layers, batch.background)
    opt = torch.optim.Adam([with_skip.photo_skip_weight, with_skip.photo_skip_bias], lr=0.05)
    for p in with_skip.unet.parameters():
        p.requires_grad_(False)
    first = None
    for _ in range(60):
        loss = ((with_skip(noisy, t, photo) - target)[:, -1] ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_object_weight_is_neutral_without_objects_and_weighs_objects_otherwise():
    model, codec, scheduler = _model(True)
    empty = _batch(0)
    plain = diffusion_loss(model, codec, scheduler, empty, step=0)
    weighted = diffusion_loss(model, codec, scheduler, empty, step=0, object_weight=10)
    assert torch.allclose(plain, weighted)
    full = _batch(3, seed=1)
    plain = diffusion_loss(model, codec, scheduler, full, step=0)
    weighted = diffusion_loss(model, codec, scheduler, full, step=0, object_weight=10)
    assert not torch.allclose(plain, weighted)


def test_hidden_weight_is_neutral_when_nothing_is_hidden_and_weighs_hidden_parts_otherwise():
    from core.layers import visible_weights

    model, codec, scheduler = _model(True)
    single = _batch(1)  # one object per scene: nothing is hidden
    plain = diffusion_loss(model, codec, scheduler, single, step=0)
    assert torch.allclose(plain, diffusion_loss(model, codec, scheduler, single, step=0, hidden_weight=20))
    crowded = _batch(3, seed=1)
    alphas = crowded.layers[:, :, 3]
    assert (alphas - visible_weights(alphas)).sum() > 0  # some object is behind another
    plain = diffusion_loss(model, codec, scheduler, crowded, step=0)
    weighted = diffusion_loss(model, codec, scheduler, crowded, step=0, hidden_weight=20)
    assert not torch.allclose(plain, weighted)
