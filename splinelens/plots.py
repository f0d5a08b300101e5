"""Figures and the training video. Matplotlib with the Agg backend; every file is written atomically."""

from __future__ import annotations

import os
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import animation  # noqa: E402

from splinelens.outputs import atomic_path  # noqa: E402
from splinelens.train import Trajectory  # noqa: E402


def _save(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=os.path.splitext(path)[1][1:])
    plt.close(fig)


def _in_view(traj: Trajectory, t: int) -> np.ndarray:
    lo, hi = traj.grid[0], traj.grid[-1]
    pad = 0.1 * (hi - lo)
    b = traj.beta[t]
    return (traj.s[t] != 0) & (b > lo - pad) & (b < hi + pad)


def _draw_state(axes, traj: Trajectory, x: np.ndarray, y: np.ndarray, t: int) -> None:
    ax_f, ax_mu, ax_loss, ax_bal = axes
    ax_f.plot(traj.grid, traj.f[0], color="0.7", lw=1, label="init")
    ax_f.plot(traj.grid, traj.f[t], color="C0", lw=2, label=f"step {traj.steps[t]}")
    ax_f.scatter(x, y, color="k", zorder=3, s=18, label="data")
    sel = _in_view(traj, t)
    ax_f.plot(traj.beta[t][sel], np.interp(traj.beta[t][sel], traj.grid, traj.f[t]), "|", color="C3", ms=8)
    ax_f.set_title("function and breakpoints")
    ax_f.legend(loc="best", fontsize=7)
    colors = np.where(traj.s[t][sel] > 0, "C2", "C1")
    ax_mu.vlines(traj.beta[t][sel], 0, traj.mu[t][sel], colors=colors, lw=1)
    ax_mu.axhline(0, color="0.5", lw=0.5)
    ax_mu.set_xlim(traj.grid[0] - 0.1 * np.ptp(traj.grid), traj.grid[-1] + 0.1 * np.ptp(traj.grid))
    ax_mu.set_title("delta-slopes μ at breakpoints β (green s=+1, orange s=−1)")
    ax_loss.semilogy(traj.steps[: t + 1], traj.loss[: t + 1], color="C0")
    ax_loss.set_xlim(0, max(traj.steps[-1], 1))
    ax_loss.set_title("loss")
    ax_bal.hist(traj.balance[t] - traj.balance[0], bins=30, color="C4")
    ax_bal.set_title("drift of Δ = v² − w² − b² (0 under gradient flow)")


def plot_training(traj: Trajectory, x: np.ndarray, y: np.ndarray, path: str) -> None:
    """Final state panels plus breakpoint paths over training."""
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    flat = axes.ravel()
    _draw_state([flat[0], flat[1], flat[2], flat[3]], traj, x, y, len(traj.steps) - 1)
    sel = _in_view(traj, 0) | _in_view(traj, len(traj.steps) - 1)
    flat[4].plot(traj.steps, traj.beta[:, sel], lw=0.6)
    flat[4].set_ylim(traj.grid[0] - 0.2, traj.grid[-1] + 0.2)
    for xi in x:
        flat[4].axhline(xi, color="k", lw=0.3, ls=":")
    flat[4].set_title("breakpoint paths (dotted: data x)")
    flat[5].plot(traj.steps, traj.mu[:, sel], lw=0.6)
    flat[5].set_title("delta-slope paths")
    fig.tight_layout()
    _save(fig, path)


def animate(traj: Trajectory, x: np.ndarray, y: np.ndarray, stem: str, max_frames: int = 40) -> str:
    """Video of the function, breakpoints and delta-slopes; mp4 if ffmpeg is on PATH, else GIF via Pillow."""
    frames = np.unique(np.linspace(0, len(traj.steps) - 1, min(max_frames, len(traj.steps))).astype(int))
    fig, axes = plt.subplots(2, 2, figsize=(8, 5.6))

    def draw(i: int) -> None:
        for ax in axes.ravel():
            ax.clear()
        _draw_state(axes.ravel(), traj, x, y, int(frames[i]))
        fig.tight_layout()

    anim = animation.FuncAnimation(fig, draw, frames=len(frames))
    if shutil.which("ffmpeg"):
        path, writer = stem + ".mp4", animation.FFMpegWriter(fps=10)
    else:
        path, writer = stem + ".gif", animation.PillowWriter(fps=10)
    with atomic_path(path) as tmp:
        anim.save(tmp, writer=writer, dpi=72)
    plt.close(fig)
    return path


def plot_init(rows_by_scheme: dict[str, list[dict]], path: str) -> None:
    """Measured (markers) vs predicted (lines) flatness against width, one panel per measure."""
    keys = [
        ("sum_mu2_in", "Σ μ² over β∈[−1,1]"),
        ("rms_f0", "RMS f₀ on [−1,1]"),
        ("p_beta_in", "P(|β| ≤ 1)"),
        ("max_abs_mu_in", "max |μ| in range (measured only)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for k, (scheme, rows) in enumerate(rows_by_scheme.items()):
        h = [r["width"] for r in rows]
        for ax, (key, title) in zip(axes, keys, strict=True):
            ax.plot(h, [r["measured"][key] for r in rows], "o", color=f"C{k}", label=f"{scheme} measured")
            if key in rows[0]["predicted"]:
                ax.plot(
                    h, [r["predicted"][key] for r in rows], "-", color=f"C{k}", label=f"{scheme} predicted"
                )
            ax.set_xscale("log")
            ax.set_title(title)
            if key != "p_beta_in":
                ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_hessian(reports: list[dict], path: str) -> None:
    """|eigenvalues| of the Hessian (sorted) for each width, with the zero tolerance marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, rep in enumerate(reports):
        e = np.sort(np.abs(rep["eig_full"]))[::-1]
        ax.semilogy(
            np.arange(1, e.size + 1),
            np.maximum(e, 1e-18),
            ".-",
            color=f"C{k}",
            ms=3,
            label=f"H={rep['width']}: {rep['full']['n_positive']} pos, {rep['full']['n_negative']} neg",
        )
        ax.axhline(rep["full"]["tol"], color=f"C{k}", ls=":", lw=0.8)
    ax.axvline(reports[0]["n_data"], color="k", ls="--", lw=0.8, label="N data points")
    ax.set_xscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("|eigenvalue| of ∇²L")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_regimes(rows: list[dict], path: str) -> None:
    """Distances of the learned function to the linear and cubic interpolants against init scale."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, h in enumerate(sorted({r["width"] for r in rows})):
        sub = [r for r in rows if r["width"] == h]
        a = [r["scale"] for r in sub]
        axes[0].plot(a, [r["sup_to_linear"] for r in sub], "o-", color=f"C{k}", label=f"H={h} to linear")
        axes[0].plot(a, [r["sup_to_cubic"] for r in sub], "s--", color=f"C{k}", label=f"H={h} to cubic")
        axes[1].plot(
            a, [r["slope_tv"] / r["slope_tv_linear_interp"] for r in sub], "o-", color=f"C{k}", label=f"H={h}"
        )
    axes[0].set_title("sup distance of learned f on data range")
    axes[1].set_title("∫|f''| / ∫|f''_linear interp| (1 = sparsest)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("init scale α")
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    fig.tight_layout()
    _save(fig, path)
