"""Exact maps between a shallow univariate ReLU net and its spline (BDSO) coordinates.

The net ``f(x) = sum_i v_i relu(w_i x + b_i) + c`` equals ``c + sum_i mu_i relu(s_i (x - beta_i))`` with
``beta = -b/w``, ``mu = v|w|``, ``s = sign(w)``. Everything here is vectorised numpy in float64 so that a
10^6-neuron net converts in milliseconds and the identity holds to rounding error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ShallowParams:
    """Network coordinates (w, b, v, c) of ``Sequential(Linear(1,H), ReLU, Linear(H,1))`` in float64."""

    w: np.ndarray
    b: np.ndarray
    v: np.ndarray
    c: float

    @property
    def width(self) -> int:
        return int(self.w.shape[0])


@dataclass(frozen=True)
class Spline:
    """Per-neuron spline coordinates; neuron identity (order) is kept so trajectories need no re-matching.

    ``s == 0`` marks a ``w == 0`` neuron: it is a constant (already folded into ``c``), has no breakpoint
    (``beta`` is NaN) and ``mu == 0``. ``w_abs`` is the gauge |w| the quotient discards; it does not change f
    but it does change gradient dynamics, so it is kept for analysis.
    """

    beta: np.ndarray
    mu: np.ndarray
    s: np.ndarray
    c: float
    w_abs: np.ndarray

    @property
    def width(self) -> int:
        return int(self.mu.shape[0])

    @property
    def has_breakpoint(self) -> np.ndarray:
        return self.s != 0


@dataclass(frozen=True)
class CanonicalSpline:
    """``f(x) = a + slope_left * x + sum_k jumps_k (x - knots_k)_+`` with sorted, merged knots."""

    a: float
    slope_left: float
    knots: np.ndarray
    jumps: np.ndarray

    @property
    def slope_right(self) -> float:
        return float(self.slope_left + self.jumps.sum())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Evaluate in O((K + G) log K) via prefix sums, so huge splines stay cheap on dense grids."""
        x = np.asarray(x, dtype=np.float64)
        cum_mu = np.concatenate([[0.0], np.cumsum(self.jumps)])
        cum_mu_beta = np.concatenate([[0.0], np.cumsum(self.jumps * self.knots)])
        k = np.searchsorted(self.knots, x, side="right")
        return self.a + self.slope_left * x + x * cum_mu[k] - cum_mu_beta[k]


def shallow_params(model: nn.Module) -> ShallowParams:
    """Read (w, b, v, c) from a ``Sequential(Linear(1,H), ReLU, Linear(H,1))``; raise if it is not one."""
    layers = list(model.children()) if isinstance(model, nn.Sequential) else []
    ok = (
        len(layers) == 3
        and isinstance(layers[0], nn.Linear)
        and isinstance(layers[1], nn.ReLU)
        and isinstance(layers[2], nn.Linear)
        and layers[0].in_features == 1
        and layers[2].out_features == 1
        and layers[0].out_features == layers[2].in_features
    )
    if not ok:
        raise ValueError("expected Sequential(Linear(1,H), ReLU, Linear(H,1))")
    first, last = layers[0], layers[2]

    def arr(t: torch.Tensor | None, n: int) -> np.ndarray:
        if t is None:
            return np.zeros(n)
        return t.detach().cpu().to(torch.float64).numpy().reshape(-1)

    h = first.out_features
    return ShallowParams(
        w=arr(first.weight, h),
        b=arr(first.bias, h),
        v=arr(last.weight, h),
        c=float(arr(last.bias, 1)[0]),
    )


def build_model(params: ShallowParams, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Make a torch net holding exactly these parameters."""
    h = params.width
    model = nn.Sequential(nn.Linear(1, h), nn.ReLU(), nn.Linear(h, 1)).to(dtype)
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(params.w, dtype=dtype).reshape(h, 1))
        model[0].bias.copy_(torch.as_tensor(params.b, dtype=dtype))
        model[2].weight.copy_(torch.as_tensor(params.v, dtype=dtype).reshape(1, h))
        model[2].bias.fill_(params.c)
    return model


def params_to_spline(p: ShallowParams) -> Spline:
    """Vectorised forward map; w == 0 neurons contribute the constant v·relu(b) and no breakpoint."""
    w, b, v = p.w, p.b, p.v
    s = np.sign(w).astype(np.int8)
    live = s != 0
    beta = np.full_like(w, np.nan)
    np.divide(-b, w, out=beta, where=live)
    w_abs = np.abs(w)
    mu = v * w_abs
    c = p.c + float(np.sum(v[~live] * np.maximum(b[~live], 0.0)))
    return Spline(beta=beta, mu=mu, s=s, c=c, w_abs=w_abs)


def to_spline(model: nn.Module | ShallowParams) -> Spline:
    """Spline coordinates of a shallow univariate ReLU net (module or raw parameters)."""
    p = model if isinstance(model, ShallowParams) else shallow_params(model)
    return params_to_spline(p)


def spline_to_params(spline: Spline, gauge: str = "unit") -> ShallowParams:
    """Inverse map: pick a point on each neuron's scale orbit.

    ``gauge='unit'`` is the canonical representative |w_i| = 1; ``'balanced'`` picks v² = w² + b² (the
    gradient-flow invariant Δ_i = 0); ``'keep'`` restores the stored |w_i|. Constant neurons come back as
    w = b = v = 0 because their value already sits in c.
    """
    live = spline.s != 0
    if gauge == "unit":
        w_abs = np.ones_like(spline.mu)
    elif gauge == "balanced":
        beta = np.where(live, spline.beta, 0.0)
        w_abs = np.sqrt(np.abs(spline.mu) / np.sqrt(1.0 + beta**2))
        w_abs = np.where(w_abs > 0, w_abs, 1.0)  # mu = 0: any orbit point works, take |w| = 1
    elif gauge == "keep":
        w_abs = spline.w_abs.copy()
    else:
        raise ValueError(f"unknown gauge {gauge!r}; expected 'unit', 'balanced' or 'keep'")
    w_abs = np.where(live, w_abs, 0.0)
    w = spline.s.astype(np.float64) * w_abs
    b = np.where(live, -w * np.where(live, spline.beta, 0.0), 0.0)
    v = np.zeros_like(w)
    np.divide(spline.mu, w_abs, out=v, where=live)
    return ShallowParams(w=w, b=b, v=v, c=float(spline.c))


def to_network(spline: Spline, gauge: str = "unit", dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Rebuild an equivalent torch network from spline coordinates (see ``spline_to_params``)."""
    return build_model(spline_to_params(spline, gauge), dtype)


def eval_params(p: ShallowParams, x: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """Network forward pass in float64 numpy, chunked over neurons to bound memory."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    out = np.full(x.shape, p.c)
    step = max(1, chunk // max(1, x.size))
    for i in range(0, p.width, step):
        sl = slice(i, i + step)
        out += np.maximum(np.outer(x, p.w[sl]) + p.b[sl], 0.0) @ p.v[sl]
    return out


def eval_spline(spline: Spline, x: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """Spline-form forward pass ``c + Σ μ relu(s (x − β))`` (neuron-wise; use ``canonical`` for huge H)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    live = spline.s != 0
    beta, mu, s = spline.beta[live], spline.mu[live], spline.s[live].astype(np.float64)
    out = np.full(x.shape, spline.c)
    step = max(1, chunk // max(1, x.size))
    for i in range(0, beta.size, step):
        sl = slice(i, i + step)
        out += np.maximum(s[sl] * (x[:, None] - beta[sl]), 0.0) @ mu[sl]
    return out


def canonical(spline: Spline, merge_tol: float = 0.0) -> CanonicalSpline:
    """Global affine part plus sorted knots; knots closer than ``merge_tol`` merge with summed jumps.

    A left-facing neuron μ relu(−(x−β)) equals μ(β − x) + μ(x − β)_+, so orientation moves only the
    affine part.
    """
    live = spline.s != 0
    beta, mu, s = spline.beta[live], spline.mu[live], spline.s[live]
    left = s < 0
    a = spline.c + float(np.sum(mu[left] * beta[left]))
    slope_left = -float(np.sum(mu[left]))
    order = np.argsort(beta, kind="stable")
    beta, mu = beta[order], mu[order]
    if beta.size:
        new_group = np.concatenate([[True], np.diff(beta) > merge_tol])
        group = np.cumsum(new_group) - 1
        jumps = np.bincount(group, weights=mu)
        # knot position of a merged cluster: jump-weighted would be ill-defined for cancelling jumps; use mean
        knots = np.bincount(group, weights=beta) / np.bincount(group)
    else:
        knots = jumps = np.zeros(0)
    return CanonicalSpline(a=a, slope_left=slope_left, knots=knots, jumps=jumps)


def neuron_roles(spline: Spline, x_min: float, x_max: float) -> dict[str, np.ndarray]:
    """Boolean masks: which neurons can bend f on the data window, which are frozen or merely affine there.

    Dead neurons (inactive on every datum) have zero gradient and never move under GD; always-active ones act
    as affine terms redundant with c, so only in-range breakpoints create curvature on the data.
    """
    live = spline.s != 0
    beta = np.where(live, spline.beta, 0.0)
    s = spline.s
    in_range = live & (beta >= x_min) & (beta <= x_max)
    dead = live & (((s > 0) & (beta >= x_max)) | ((s < 0) & (beta <= x_min)))
    always = live & ~in_range & ~dead
    return {"in_range": in_range, "dead": dead, "always_active": always, "constant": ~live}
