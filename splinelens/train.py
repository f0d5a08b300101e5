"""Full-batch gradient descent / gradient flow in network coordinates, logged in spline coordinates.

The loss is L = ½·mean_n (f(x_n) − y_n)². Gradients are the closed forms of
docs/splinelens_derivations.md §3.2 in numpy float64 (checked against torch autograd in the tests): for the
tiny full-batch problems studied here they are several times faster than autograd and exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import solve_ivp
from tqdm import tqdm

from splinelens.convert import ShallowParams, canonical, params_to_spline


@dataclass
class Trajectory:
    """Logged states; row t of each (T, H) array is the state after ``steps[t]`` steps (time ``times[t]``)."""

    steps: np.ndarray
    times: np.ndarray
    loss: np.ndarray
    beta: np.ndarray
    mu: np.ndarray
    s: np.ndarray
    c: np.ndarray
    w_abs: np.ndarray
    balance: np.ndarray  # Δ_i = v² − w² − b², conserved by gradient flow
    grid: np.ndarray
    f: np.ndarray
    final: ShallowParams
    meta: dict = field(default_factory=dict)


def _flat(p: ShallowParams) -> np.ndarray:
    return np.concatenate([p.w, p.b, p.v, [p.c]])


def _unflat(theta: np.ndarray) -> ShallowParams:
    h = (theta.size - 1) // 3
    return ShallowParams(
        w=theta[:h].copy(), b=theta[h : 2 * h].copy(), v=theta[2 * h : 3 * h].copy(), c=float(theta[-1])
    )


def loss_and_grad(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """L and ∂L/∂θ for θ = (w, b, v, c) flattened."""
    h = (theta.size - 1) // 3
    w, b, v, c = theta[:h], theta[h : 2 * h], theta[2 * h : 3 * h], theta[-1]
    z = np.outer(x, w) + b
    r = np.maximum(z, 0.0)
    eps = r @ v + c - y
    e = eps / x.size
    gz = np.outer(e, v) * (z > 0)
    grad = np.concatenate([x @ gz, gz.sum(0), r.T @ e, [e.sum()]])
    return 0.5 * float(eps @ eps) / x.size, grad


def ntk_lambda_max(p: ShallowParams, x: np.ndarray) -> float:
    """Largest eigenvalue of the Gauss-Newton matrix JᵀJ/N: GD is stable for lr < 2/λ_max near a minimum."""
    z = np.outer(x, p.w) + p.b
    a = (z > 0).astype(np.float64)
    jac = np.concatenate([a * p.v * x[:, None], a * p.v, np.maximum(z, 0), np.ones((x.size, 1))], axis=1)
    return float(np.linalg.eigvalsh(jac @ jac.T / x.size)[-1])


def train(
    p0: ShallowParams,
    x: np.ndarray,
    y: np.ndarray,
    steps: int,
    lr: float,
    log_every: int = 100,
    method: str = "gd",
    grid: np.ndarray | None = None,
    progress: bool = False,
    tol_loss: float = 0.0,
) -> Trajectory:
    """Train from ``p0`` and record the spline state every ``log_every`` steps.

    ``method='gd'`` is plain full-batch GD; ``'flow'`` integrates gradient flow dθ/dt = −∇L with scipy's RK45
    up to t = steps·lr and logs at the same times, so GD with small lr can be compared with the flow it
    approximates. ``tol_loss`` stops GD early once the loss is below it.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    grid = np.linspace(x.min(), x.max(), 201) if grid is None else np.asarray(grid, dtype=np.float64)
    log_steps = sorted(set(range(0, steps + 1, max(1, log_every))) | {steps})
    if method == "gd":
        thetas, done = _run_gd(_flat(p0), x, y, steps, lr, log_steps, progress, tol_loss)
        log_steps = log_steps[: len(thetas)]
        log_steps[-1] = done
    elif method == "flow":
        times = np.asarray(log_steps, dtype=np.float64) * lr
        sol = solve_ivp(
            lambda t, th: -loss_and_grad(th, x, y)[1],
            (0.0, times[-1]),
            _flat(p0),
            t_eval=times,
            rtol=1e-8,
            atol=1e-10,
            method="RK45",
        )
        if not sol.success:
            raise RuntimeError(f"gradient-flow integration failed: {sol.message}")
        thetas = list(sol.y.T)
    else:
        raise ValueError(f"unknown method {method!r}; expected 'gd' or 'flow'")
    return _record(thetas, np.asarray(log_steps), lr, x, y, grid, {"method": method, "lr": lr})


def _run_gd(theta, x, y, steps, lr, log_steps, progress, tol_loss):
    thetas = []
    wanted = set(log_steps)
    bar = tqdm(total=steps, disable=not progress, desc="train", mininterval=0.5)
    t = 0
    for t in range(steps + 1):
        loss, grad = loss_and_grad(theta, x, y)
        if t in wanted:
            thetas.append(theta.copy())
        if t == steps or loss < tol_loss:
            break
        theta = theta - lr * grad
        if t % 1000 == 0:
            bar.update(t - bar.n)
            bar.set_postfix(loss=f"{loss:.2e}", refresh=False)
    bar.update(t - bar.n)
    bar.close()
    if t not in wanted:
        thetas.append(theta.copy())
    return thetas, t


def _record(thetas, steps, lr, x, y, grid, meta) -> Trajectory:
    ps = [_unflat(t) for t in thetas]
    sps = [params_to_spline(p) for p in ps]
    return Trajectory(
        steps=steps,
        times=steps * lr,
        loss=np.array([loss_and_grad(t, x, y)[0] for t in thetas]),
        beta=np.stack([s.beta for s in sps]),
        mu=np.stack([s.mu for s in sps]),
        s=np.stack([s.s for s in sps]),
        c=np.array([s.c for s in sps]),
        w_abs=np.stack([s.w_abs for s in sps]),
        balance=np.stack([p.v**2 - p.w**2 - p.b**2 for p in ps]),
        grid=grid,
        f=np.stack([canonical(s)(grid) for s in sps]),
        final=ps[-1],
        meta=meta,
    )
