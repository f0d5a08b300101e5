import numpy as np
import pytest
import torch
from torch import nn

from splinelens.convert import to_spline
from splinelens.deep import deep_breakpoints, sampled_kinks


def _net(seed: int, widths: list[int]) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    dims = [1, *widths, 1]
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("seed,widths", [(0, [8, 8, 6]), (1, [16, 12]), (2, [5, 5, 5, 5])])
def test_deep_breakpoints_match_dense_sampling(seed, widths):
    model = _net(seed, widths)
    exact = deep_breakpoints(model)
    lo, hi, n = -4.0, 4.0, 400_001
    dx = (hi - lo) / (n - 1)
    seen = sampled_kinks(model, lo, hi, n)
    inside = exact.knots[(exact.knots > lo + 3 * dx) & (exact.knots < hi - 3 * dx)]
    assert inside.size >= 3
    # every sampled kink is an exact knot and vice versa (up to the grid spacing)
    assert np.all(np.min(np.abs(seen[:, None] - exact.knots[None, :]), axis=1) < 2 * dx)
    assert np.all(np.min(np.abs(inside[:, None] - seen[None, :]), axis=1) < 2 * dx)
    x = np.linspace(-10, 10, 5001)
    with torch.no_grad():
        y = model(torch.as_tensor(x).reshape(-1, 1)).reshape(-1).numpy()
    assert np.max(np.abs(exact(x) - y)) < 1e-10 * max(1.0, np.abs(y).max())


def test_shallow_net_knots_are_its_breakpoints():
    model = _net(5, [30])
    knots = deep_breakpoints(model).knots
    sp = to_spline(model)
    assert np.allclose(np.sort(knots), np.sort(sp.beta[(sp.s != 0) & (sp.mu != 0)]))


def test_rejects_non_relu_layers():
    with pytest.raises(ValueError):
        deep_breakpoints(nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1)))
