import numpy as np
import torch

from splinelens.convert import build_model, to_spline
from splinelens.data import synthetic
from splinelens.hessian import (
    count_spectrum,
    gauss_newton,
    hessian_report,
    jacobian,
    loss_fn,
    loss_hessian,
    ntk_from_spline,
)
from splinelens.init_analysis import init_params
from splinelens.regimes import fit_adaptive_lr


def test_hessian_matches_finite_differences_of_gradient():
    x, y = synthetic("sinquad", 7, 0.3, seed=2)
    p = init_params(6, "kaiming", 1.0, np.random.default_rng(3))
    model = build_model(p)
    h = loss_hessian(model, x, y)
    theta, loss = loss_fn(model, x, y)
    grad = torch.func.grad(loss)
    eps = 1e-6
    fd = np.stack([
        ((grad(theta + eps * e) - grad(theta - eps * e)) / (2 * eps)).numpy()
        for e in torch.eye(theta.numel(), dtype=torch.float64)
    ])
    # kinks sit at data points only by accident; this draw has none within eps, so FD is valid
    sp = to_spline(p)
    assert np.min(np.abs(sp.beta[:, None] - x[None, :])) > 1e-3
    assert np.max(np.abs(h - fd)) < 1e-6 * max(1.0, np.abs(h).max())
    assert np.max(np.abs(h - h.T)) < 1e-12


def test_gauss_newton_and_spline_ntk():
    x, _ = synthetic("sine", 9, 0.3, seed=4)
    p = init_params(15, "default", 1.0, np.random.default_rng(5))
    model = build_model(p)
    jac = jacobian(model, x)
    assert np.allclose(gauss_newton(model, x), jac.T @ jac / x.size)
    assert np.max(np.abs(jac @ jac.T - ntk_from_spline(to_spline(p), x))) < 1e-12


def test_zero_loss_minimum_has_at_most_rank_bound_nonzero_eigenvalues():
    x, _ = synthetic("sine", 6, 0.3, seed=1)
    p = init_params(10, "kaiming", 1.0, np.random.default_rng(1))
    model = build_model(p)
    with torch.no_grad():
        y = model(torch.as_tensor(x).reshape(-1, 1)).reshape(-1).numpy()  # teacher = the net: loss is 0
    rep = hessian_report(model, x, y)
    assert rep["hessian_minus_gn"] < 1e-12
    assert rep["full"]["n_positive"] <= rep["rank_bound"] <= x.size
    assert rep["full"]["n_negative"] == 0
    assert rep["full"]["n_zero"] >= rep["predicted_min_zeros"]
    assert rep["full"]["n_zero"] >= 3 * 10 + 1 - x.size


def test_trained_interpolating_minimum_is_gauss_newton_within_tolerance():
    x, y = synthetic("sine", 5)
    p0 = init_params(12, "default", 1.0, np.random.default_rng(0))
    p, loss, _ = fit_adaptive_lr(p0, x, y, 20_000, tol_loss=1e-16)
    assert loss < 1e-12
    rep = hessian_report(build_model(p), x, y, rel_tol=1e-6)
    counts = count_spectrum(rep["eig_full"], 1e-6)
    assert counts.n_positive <= x.size
    assert counts.n_negative == 0
    assert np.max(np.abs(rep["eig_full"] - rep["eig_gn"])) < 1e-5 * np.max(rep["eig_gn"])
