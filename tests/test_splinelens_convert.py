import numpy as np
import pytest
import torch
from torch import nn

from splinelens.convert import (
    ShallowParams,
    build_model,
    canonical,
    eval_params,
    eval_spline,
    neuron_roles,
    shallow_params,
    spline_to_params,
    to_network,
    to_spline,
)


def _forward(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        dtype = next(model.parameters()).dtype
        return model(torch.as_tensor(x, dtype=dtype).reshape(-1, 1)).reshape(-1).double().numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_torch_nets_equal_their_spline(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(1, 64), nn.ReLU(), nn.Linear(64, 1)).double()
    with torch.no_grad():
        model[0].weight.mul_(torch.randn(64, 1) * 3)  # mixed signs and magnitudes
    x = np.linspace(-6, 6, 20001)
    sp = to_spline(model)
    f_net = _forward(model, x)
    assert _rel(eval_spline(sp, x), f_net) < 1e-12
    assert _rel(canonical(sp)(x), f_net) < 1e-12
    assert np.any(sp.s < 0) and np.any(sp.s > 0)


def test_float32_model_within_1e6():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(1, 500), nn.ReLU(), nn.Linear(500, 1))
    x = np.linspace(-3, 3, 5001)
    f_spline = canonical(to_spline(model))(x)
    # the spline is exact for the stored float32 weights; the float32 forward pass itself rounds at ~1e-6
    assert _rel(f_spline, _forward(model.double(), x)) < 1e-6
    assert _rel(f_spline, _forward(model.float(), x)) < 1e-5


def test_dead_zero_weight_and_negative_neurons():
    p = ShallowParams(
        w=np.array([0.0, 0.0, -2.0, 1.5, 3.0]),
        b=np.array([0.7, -0.4, 1.0, -6.0, 0.3]),
        v=np.array([2.0, 5.0, -1.0, 4.0, 0.5]),
        c=0.25,
    )
    sp = to_spline(p)
    assert np.isnan(sp.beta[0]) and np.isnan(sp.beta[1]) and sp.mu[0] == 0 and sp.s[1] == 0
    assert sp.c == pytest.approx(0.25 + 2.0 * 0.7)  # relu(0.7)·2 folded in; relu(-0.4)·5 = 0
    assert sp.beta[2] == pytest.approx(0.5) and sp.mu[2] == pytest.approx(-2.0) and sp.s[2] == -1
    x = np.linspace(-5, 5, 10001)
    assert _rel(eval_spline(sp, x), eval_params(p, x)) < 1e-14
    roles = neuron_roles(sp, -1.0, 1.0)
    assert roles["dead"].tolist() == [False, False, False, True, False]  # β = 4, faces right
    assert roles["constant"].tolist() == [True, True, False, False, False]
    assert roles["in_range"].tolist() == [False, False, True, False, True]


def test_slope_jump_equals_mu_for_both_orientations():
    rng = np.random.default_rng(0)
    p = ShallowParams(w=rng.normal(size=12), b=rng.normal(size=12), v=rng.normal(size=12), c=0.1)
    sp = to_spline(p)
    h = 1e-6
    for beta, mu in zip(sp.beta, sp.mu, strict=True):
        f = eval_params(p, np.array([beta - 2 * h, beta - h, beta + h, beta + 2 * h]))
        jump = (f[3] - f[2]) / h - (f[1] - f[0]) / h
        others = np.abs(sp.beta - beta) < 4 * h
        assert others.sum() == 1
        assert jump == pytest.approx(mu, abs=1e-6)


@pytest.mark.parametrize("gauge", ["unit", "balanced", "keep"])
def test_reverse_map_rebuilds_equivalent_net(gauge):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 1)).double()
    with torch.no_grad():
        model[0].weight[:3] = 0.0  # constant neurons survive the round trip as constants
    sp = to_spline(model)
    rebuilt = to_network(sp, gauge=gauge)
    x = np.linspace(-4, 4, 8001)
    assert _rel(_forward(rebuilt, x), _forward(model, x)) < 1e-12
    sp2 = to_spline(rebuilt)
    live = sp.s != 0
    assert np.allclose(sp2.beta[live], sp.beta[live]) and np.allclose(sp2.mu, sp.mu)
    assert np.array_equal(sp2.s[live], sp.s[live])
    q = shallow_params(rebuilt)
    if gauge == "unit":
        assert np.allclose(np.abs(q.w[live]), 1.0)
    if gauge == "balanced":
        assert np.allclose((q.v**2 - q.w**2 - q.b**2)[live], 0.0, atol=1e-12)
    if gauge == "keep":
        assert np.allclose(q.w, shallow_params(model).w)


def test_scale_symmetry_is_quotiented_out():
    rng = np.random.default_rng(5)
    p = ShallowParams(w=rng.normal(size=30), b=rng.normal(size=30), v=rng.normal(size=30), c=0.0)
    a = rng.uniform(0.1, 10, 30)
    q = ShallowParams(w=a * p.w, b=a * p.b, v=p.v / a, c=0.0)
    sp, sq = to_spline(p), to_spline(q)
    assert np.allclose(sp.beta, sq.beta) and np.allclose(sp.mu, sq.mu) and np.array_equal(sp.s, sq.s)
    assert not np.allclose(sp.w_abs, sq.w_abs)
    assert np.allclose(spline_to_params(sp).w, spline_to_params(sq).w)  # same canonical representative


def test_canonical_affine_part_and_merging():
    w, b, v = np.array([1.0, -1.0, 2.0]), np.array([-0.5, 0.5, -1.0]), np.array([1.0, 2.0, 3.0])
    p = ShallowParams(w=w, b=b, v=v, c=0.0)
    cs = canonical(to_spline(p), merge_tol=1e-12)
    assert cs.knots.tolist() == [0.5] and cs.jumps[0] == pytest.approx(1 + 2 + 6)
    assert cs.slope_left == pytest.approx(-2.0) and cs.slope_right == pytest.approx(7.0)


def test_build_model_rejects_other_architectures():
    with pytest.raises(ValueError):
        shallow_params(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)))
    assert isinstance(build_model(ShallowParams(np.ones(2), np.zeros(2), np.ones(2), 0.0)), nn.Sequential)
