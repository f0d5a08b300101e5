import numpy as np
import torch

from splinelens.convert import ShallowParams, build_model, to_spline
from splinelens.data import synthetic
from splinelens.init_analysis import init_params
from splinelens.train import _flat, loss_and_grad, ntk_lambda_max, train


def test_analytic_gradient_matches_autograd():
    x, y = synthetic("sinquad", 9, 0.3, seed=1)
    p = init_params(25, "kaiming", 1.0, np.random.default_rng(2))
    model = build_model(p)
    loss = 0.5 * torch.mean((model(torch.as_tensor(x).reshape(-1, 1)).reshape(-1) - torch.as_tensor(y)) ** 2)
    loss.backward()
    auto = torch.cat([q.grad.reshape(-1) for q in model.parameters()]).numpy()
    val, grad = loss_and_grad(_flat(p), x, y)
    assert abs(val - loss.item()) < 1e-14
    assert np.max(np.abs(grad - auto)) < 1e-13


def test_trajectory_logs_spline_state_and_gd_tracks_flow():
    x, y = synthetic("sine", 8)
    p = init_params(40, "kaiming", 1.0, np.random.default_rng(0))
    lr = 0.05 / ntk_lambda_max(p, x)
    gd = train(p, x, y, steps=2000, lr=lr, log_every=500)
    flow = train(p, x, y, steps=2000, lr=lr, log_every=500, method="flow")
    assert gd.steps.tolist() == [0, 500, 1000, 1500, 2000] and gd.beta.shape == (5, 40)
    assert gd.loss[-1] < 0.5 * gd.loss[0]
    sp = to_spline(gd.final)
    assert np.allclose(gd.beta[-1], sp.beta) and np.allclose(gd.mu[-1], sp.mu)
    # small-step GD approximates gradient flow: the logged functions agree closely
    assert np.max(np.abs(gd.f[-1] - flow.f[-1])) < 0.02 * np.max(np.abs(flow.f[-1] - flow.f[0]))
    # Δ = v² − w² − b² is conserved by the flow and drifts O(lr) under GD
    assert np.max(np.abs(flow.balance[-1] - flow.balance[0])) < 1e-6
    half = train(p, x, y, steps=4000, lr=lr / 2, log_every=4000)
    drift, drift_half = (np.max(np.abs(t.balance[-1] - t.balance[0])) for t in (gd, half))
    assert 0.35 < drift_half / drift < 0.65


def test_dead_neuron_never_moves():
    x, y = synthetic("sine", 6)
    rng = np.random.default_rng(1)
    p = init_params(10, "kaiming", 1.0, rng)
    w, b = p.w.copy(), p.b.copy()
    w[0], b[0] = 1.0, -3.0  # breakpoint at 3, facing right: inactive on all data
    traj = train(ShallowParams(w, b, p.v, p.c), x, y, steps=500, lr=1e-2, log_every=100)
    assert np.all(traj.beta[:, 0] == 3.0) and np.all(traj.mu[:, 0] == traj.mu[0, 0])
    assert np.any(traj.beta[-1, 1:] != traj.beta[0, 1:])
