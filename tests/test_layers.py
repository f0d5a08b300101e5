"""The compositing contract: numpy and torch agree, and the equation does what the layout says."""

import numpy as np
import pytest
import torch

from core.layers import composite, modal_ids, to_channels_first, to_channels_last, visible_weights


def _stack(rng, k=3, h=5, w=6, binary=False):
    layers = rng.random((k, 4, h, w))
    if binary:
        layers[:, 3] = (layers[:, 3] > 0.5).astype(float)
    return layers, rng.random((3, h, w))


def test_composite_front_layer_wins_where_opaque():
    layers = np.zeros((2, 4, 1, 2))
    layers[0, :3] = 1.0  # white front layer, opaque on pixel 0 only
    layers[0, 3, 0, 0] = 1.0
    layers[1, :3] = 0.25  # grey back layer, opaque everywhere
    layers[1, 3] = 1.0
    out = composite(layers, np.zeros((3, 1, 2)))
    assert np.allclose(out[:, 0, 0], 1.0) and np.allclose(out[:, 0, 1], 0.25)


def test_composite_numpy_torch_agree_and_batch():
    rng = np.random.default_rng(0)
    layers, bg = _stack(rng)
    ref = composite(layers, bg)
    batch_layers = torch.from_numpy(layers)[None].repeat(2, 1, 1, 1, 1)
    got = composite(batch_layers, torch.from_numpy(bg)[None].repeat(2, 1, 1, 1))
    assert got.shape == (2, 3, 5, 6)
    assert np.allclose(got[1].numpy(), ref)


def test_transparent_layers_leave_background():
    rng = np.random.default_rng(1)
    layers, bg = _stack(rng)
    layers[:, 3] = 0
    assert np.allclose(composite(layers, bg), bg)


def test_visible_weights_sum_to_coverage():
    rng = np.random.default_rng(2)
    layers, _ = _stack(rng)
    alphas = layers[:, 3]
    weights = visible_weights(alphas)
    coverage = 1 - np.prod(1 - alphas, axis=0)
    assert np.allclose(weights.sum(0), coverage)
    assert np.allclose(visible_weights(torch.from_numpy(alphas)).numpy(), weights)


def test_modal_ids_frontmost_covering_slot():
    alphas = np.zeros((3, 1, 4))
    alphas[2, 0, :] = 1  # back covers all
    alphas[1, 0, 1:] = 1
    alphas[0, 0, 2] = 1
    assert modal_ids(alphas).tolist() == [[3, 2, 1, 2]]
    assert modal_ids(torch.from_numpy(alphas)).tolist() == [[3, 2, 1, 2]]


@pytest.mark.parametrize("make", [np.zeros, torch.zeros])
def test_channel_moves_round_trip(make):
    x = make((2, 7, 5, 4))
    assert tuple(to_channels_first(x).shape) == (2, 4, 7, 5)
    assert tuple(to_channels_last(to_channels_first(x)).shape) == (2, 7, 5, 4)


@pytest.mark.parametrize("make", [np.zeros, torch.zeros])
def test_empty_stack(make):
    alphas = make((0, 3, 4))
    assert tuple(modal_ids(alphas).shape) == (3, 4) and not modal_ids(alphas).any()
    assert tuple(visible_weights(alphas).shape) == (0, 3, 4)
