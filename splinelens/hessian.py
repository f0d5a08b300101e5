"""Loss-surface tools: Hessian of the MSE loss in network parameters, its Gauss-Newton part and spectrum.

L(θ) = ½·mean_n (f(x_n; θ) − y_n)². Hessian = GN + residual term, GN = JᵀJ/N with J = ∂f(x_n)/∂θ. At an
interpolating minimum the residual term vanishes, so at most rank(J) ≤ N eigenvalues are non-zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from splinelens.convert import Spline, neuron_roles, shallow_params, to_spline


def _flat_functional(
    model: nn.Module,
) -> tuple[torch.Tensor, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """θ as one float64 vector (torch parameter order) and f(θ, x); for a shallow net θ = (w, b, v, c)."""
    model = model.to(torch.float64)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def forward(th: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(th, sizes)
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return functional_call(model, params, (x.reshape(-1, 1),)).reshape(-1)

    return theta, forward


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64), torch.as_tensor(
        np.asarray(y), dtype=torch.float64
    )


def loss_fn(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, Callable]:
    """(θ₀, L(θ)) so callers can differentiate the loss however they like (used by the FD tests)."""
    theta, forward = _flat_functional(model)
    xt, yt = _tensors(x, y)
    return theta, lambda th: 0.5 * torch.mean((forward(th, xt) - yt) ** 2)


def loss_hessian(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Full Hessian ∇²L(θ) via torch.func (exact away from kinks at data points)."""
    theta, loss = loss_fn(model, x, y)
    return hessian(loss)(theta).numpy()


def jacobian(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """J[n, k] = ∂f(x_n)/∂θ_k."""
    theta, forward = _flat_functional(model)
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    return jacrev(lambda th: forward(th, xt))(theta).numpy()


def gauss_newton(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Gauss-Newton part JᵀJ/N of the Hessian: PSD, and equal to the Hessian at zero loss."""
    jac = jacobian(model, x)
    return jac.T @ jac / jac.shape[0]


def ntk_from_spline(sp: Spline, x: np.ndarray) -> np.ndarray:
    """Tangent kernel J Jᵀ in spline coordinates (derivations §3.6): which ramps/steps carry curvature."""
    x = np.asarray(x, dtype=np.float64)
    live = sp.s != 0
    s = sp.s[live].astype(np.float64)
    beta, w2 = sp.beta[live], sp.w_abs[live] ** 2
    v = sp.mu[live] / sp.w_abs[live]
    z = s * (x[:, None] - beta)
    r, a = np.maximum(z, 0.0), (z > 0).astype(np.float64)
    k = np.ones((x.size, x.size))
    k += (r * (v**2 + w2)) @ r.T
    k += (a * v**2 * (1 + beta**2)) @ a.T
    cross = (r * s * beta * v**2) @ a.T
    return k + cross + cross.T


@dataclass(frozen=True)
class SpectrumCounts:
    """Eigenvalue counts with |λ| ≤ tol·max|λ| called zero."""

    n_params: int
    n_zero: int
    n_negative: int
    n_positive: int
    tol: float


def count_spectrum(eigs: np.ndarray, rel_tol: float = 1e-7) -> SpectrumCounts:
    """Split a spectrum into zero / negative / positive parts relative to its largest magnitude."""
    eigs = np.asarray(eigs)
    tol = rel_tol * max(float(np.max(np.abs(eigs))), 1e-300)
    return SpectrumCounts(
        n_params=int(eigs.size),
        n_zero=int(np.sum(np.abs(eigs) <= tol)),
        n_negative=int(np.sum(eigs < -tol)),
        n_positive=int(np.sum(eigs > tol)),
        tol=tol,
    )


def rank_bound(sp: Spline, x: np.ndarray) -> int:
    """min(N, 2K + 2), K = number of data intervals holding a breakpoint (derivations §3.4)."""
    xs = np.sort(np.asarray(x, dtype=np.float64))
    beta = sp.beta[(sp.s != 0) & (sp.mu != 0)]
    idx = np.searchsorted(xs, beta, side="right")
    inner = (idx > 0) & (idx < xs.size)
    return int(min(xs.size, 2 * np.unique(idx[inner]).size + 2))


def hessian_report(model: nn.Module, x: np.ndarray, y: np.ndarray, rel_tol: float = 1e-7) -> dict:
    """Hessian and GN spectra of a shallow net, with the spline-lens predictions for them.

    Predicted at a critical point: one zero per non-dead neuron from the scale orbit (w, b, −v), three
    per dead neuron; at zero loss at most min(N, 2K+2) non-zero eigenvalues. ``breakpoint_on_datum``
    flags kinks on data points, where the loss is not twice differentiable and any Hessian is one-sided.
    """
    x = np.asarray(x, dtype=np.float64)
    h_full = loss_hessian(model, x, y)
    h_gn = gauss_newton(model, x)
    eig_full = np.linalg.eigvalsh(0.5 * (h_full + h_full.T))
    eig_gn = np.linalg.eigvalsh(h_gn)
    sp = to_spline(shallow_params(model))
    roles = neuron_roles(sp, float(x.min()), float(x.max()))
    live_beta = sp.beta[sp.s != 0]
    gap = np.min(np.abs(live_beta[:, None] - x[None, :])) if live_beta.size else np.inf
    n_dead = int(roles["dead"].sum())
    full, gn = count_spectrum(eig_full, rel_tol), count_spectrum(eig_gn, rel_tol)
    return {
        "eig_full": eig_full,
        "eig_gn": eig_gn,
        "full": full.__dict__,
        "gn": gn.__dict__,
        "n_data": int(x.size),
        "rank_bound": rank_bound(sp, x),
        "n_dead": n_dead,
        "predicted_min_zeros": int(sp.width - n_dead - int(roles["constant"].sum()) + 3 * n_dead),
        "breakpoint_on_datum": bool(gap < 1e-9),
        "hessian_minus_gn": float(np.max(np.abs(h_full - h_gn))),
    }
