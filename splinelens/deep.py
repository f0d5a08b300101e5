"""Exact linear regions of deep univariate ReLU nets, by carrying the piecewise-linear pieces layer by layer.

Each hidden signal is continuous piecewise linear in x. We keep its values at the current breakpoints plus the
affine maps on the two unbounded end pieces; a Linear layer acts on those linearly and a ReLU adds the zero
crossings of each unit inside each piece. Nothing is sampled, so the breakpoints are exact up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class DeepSpline:
    """Output of ``deep_breakpoints``.

    ``regions`` are all points where some ReLU switches (the boundaries of the net's linear regions);
    ``knots`` is the subset where the output's slope really changes; ``values`` and ``slopes`` describe the
    output: its value at each region boundary, and its slope on each of the len(regions)+1 pieces.
    """

    regions: np.ndarray
    knots: np.ndarray
    values: np.ndarray
    slopes: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.regions.size == 0:
            return self.values[0] + self.slopes[0] * x  # values holds f(0) in this case
        k = np.searchsorted(self.regions, x, side="right")
        anchor = np.clip(k - 1, 0, self.regions.size - 1)
        return self.values[anchor] + self.slopes[k] * (x - self.regions[anchor])


def _layers(model: nn.Module) -> list[nn.Module]:
    layers = list(model.children()) if isinstance(model, nn.Sequential) else [model]
    for layer in layers:
        if not isinstance(layer, (nn.Linear, nn.ReLU)):
            raise ValueError(f"only Linear and ReLU layers are supported, got {type(layer).__name__}")
    first = next((m for m in layers if isinstance(m, nn.Linear)), None)
    last = next((m for m in reversed(layers) if isinstance(m, nn.Linear)), None)
    if first is None or first.in_features != 1 or last.out_features != 1:
        raise ValueError("expected a Sequential with 1-D input and 1-D output")
    return layers


def deep_breakpoints(model: nn.Module, rel_tol: float = 1e-9) -> DeepSpline:
    """Exact breakpoints of a ``Sequential`` of Linear/ReLU layers (scalar in/out), on all of ℝ."""
    points = np.zeros(0)  # sorted breakpoints found so far
    vals = np.zeros((0, 1))  # signal values at the points, shape (P, units)
    left = (np.ones(1), np.zeros(1))  # (slope, intercept) on (-inf, points[0])
    right = (np.ones(1), np.zeros(1))  # on (points[-1], inf); equal to ``left`` while there are no points
    for layer in _layers(model):
        if isinstance(layer, nn.Linear):
            wt = layer.weight.detach().to(torch.float64).numpy().T
            bias = (
                layer.bias.detach().to(torch.float64).numpy()
                if layer.bias is not None
                else np.zeros(wt.shape[1])
            )
            vals = vals @ wt + bias
            left = (left[0] @ wt, left[1] @ wt + bias)
            right = (right[0] @ wt, right[1] @ wt + bias)
            continue
        new = [_crossings_affine(*left, hi=points[0] if points.size else np.inf)]
        if points.size:
            new.append(_crossings_affine(*right, lo=points[-1]))
            z0, z1 = vals[:-1], vals[1:]
            piece, unit = np.nonzero(z0 * z1 < 0)
            t = z0[piece, unit] / (z0[piece, unit] - z1[piece, unit])
            new.append(points[piece] + t * (points[piece + 1] - points[piece]))
        added = np.unique(np.concatenate(new))
        if added.size:
            all_points = np.union1d(points, added)
            vals = _evaluate(points, vals, left, right, all_points)
            points = all_points
        # on an unbounded end piece the unit's sign is fixed; keep the affine map only where it is positive
        left = _relu_end(*left, direction=-1.0)
        right = _relu_end(*right, direction=1.0)
        vals = np.maximum(vals, 0.0)
    return _finish(points, vals[:, 0] if points.size else np.zeros(0), left, right, rel_tol)


def _crossings_affine(
    slope: np.ndarray, icpt: np.ndarray, lo: float = -np.inf, hi: float = np.inf
) -> np.ndarray:
    nz = slope != 0
    x = -icpt[nz] / slope[nz]
    return x[(x > lo) & (x < hi)]


def _evaluate(points, vals, left, right, x) -> np.ndarray:
    """Values of the current (piecewise-linear) signal at ``x``: exact interpolation per piece."""
    out = np.empty((x.size, left[0].size))
    if points.size == 0:
        return np.outer(x, left[0]) + left[1]
    lo, hi = x < points[0], x > points[-1]
    out[lo] = np.outer(x[lo], left[0]) + left[1]
    out[hi] = np.outer(x[hi], right[0]) + right[1]
    mid = ~(lo | hi)
    xm = x[mid]
    k = np.clip(np.searchsorted(points, xm, side="right") - 1, 0, max(points.size - 2, 0))
    if points.size == 1:
        out[mid] = vals[0]
        return out
    t = ((xm - points[k]) / (points[k + 1] - points[k]))[:, None]
    out[mid] = (1 - t) * vals[k] + t * vals[k + 1]
    return out


def _relu_end(slope: np.ndarray, icpt: np.ndarray, direction: float) -> tuple[np.ndarray, np.ndarray]:
    sign_at_inf = np.where(slope != 0, np.sign(slope) * direction, np.sign(icpt))
    keep = sign_at_inf > 0
    return slope * keep, icpt * keep


def _finish(points, f, left, right, rel_tol) -> DeepSpline:
    if points.size == 0:
        return DeepSpline(points, points, np.array([left[1][0]]), np.array([left[0][0]]))
    inner = np.diff(f) / np.diff(points) if points.size > 1 else np.zeros(0)
    slopes = np.concatenate([[left[0][0]], inner, [right[0][0]]])
    jump = np.abs(np.diff(slopes))
    scale = np.max(np.abs(slopes)) if slopes.size else 1.0
    knots = points[jump > rel_tol * max(scale, 1e-300)]
    return DeepSpline(regions=points, knots=knots, values=f, slopes=slopes)


def sampled_kinks(
    model: nn.Module, lo: float, hi: float, n: int = 200_001, rel_tol: float = 1e-6
) -> np.ndarray:
    """Kink locations seen by dense sampling (second differences): an independent check."""
    x = np.linspace(lo, hi, n)
    with torch.no_grad():
        y = model(torch.as_tensor(x, dtype=torch.float64).reshape(-1, 1)).reshape(-1).numpy()
    slopes = np.diff(y) / np.diff(x)
    jump = np.abs(np.diff(slopes))
    hit = np.nonzero(jump > rel_tol * max(np.abs(slopes).max(), 1e-300))[0]
    if hit.size == 0:
        return np.zeros(0)
    # a kink strictly inside a grid cell shows up at both of the cell's ends: merge adjacent hits
    groups = np.split(hit, np.nonzero(np.diff(hit) > 1)[0] + 1)
    return np.array([x[g + 1].mean() for g in groups])
