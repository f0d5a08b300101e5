"""Measure spline conversion speed: a 10^6-neuron net vectorised vs a naive per-neuron Python loop."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from splinelens.convert import canonical, eval_params, shallow_params, to_network, to_spline


def naive_to_spline(model: nn.Sequential) -> tuple[list[float], list[float], list[int]]:
    """The obvious loop over neurons, as a baseline."""
    beta, mu, s = [], [], []
    w, b, v = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()
    for i in range(w.shape[0]):
        wi, bi, vi = float(w[i, 0]), float(b[i]), float(v[0, i])
        if wi == 0.0:
            beta.append(float("nan"))
            mu.append(0.0)
            s.append(0)
        else:
            beta.append(-bi / wi)
            mu.append(vi * abs(wi))
            s.append(1 if wi > 0 else -1)
    return beta, mu, s


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(1, 1_000_000), nn.ReLU(), nn.Linear(1_000_000, 1))
    small = nn.Sequential(nn.Linear(1, 10_000), nn.ReLU(), nn.Linear(10_000, 1))
    t_big = best_of(lambda: to_spline(big))
    t_canon = best_of(lambda: canonical(to_spline(big)))
    sp = to_spline(big)
    t_back = best_of(lambda: to_network(sp))
    t_small = best_of(lambda: to_spline(small))
    t_naive = best_of(lambda: naive_to_spline(small), repeats=1)
    x = np.linspace(-3, 3, 201)  # the dense net forward is 8·H·G bytes: keep the check grid small
    f_net = eval_params(shallow_params(big), x)
    rel = np.max(np.abs(canonical(sp)(x) - f_net)) / np.max(np.abs(f_net))
    print(f"to_spline, 1e6 neurons:               {t_big * 1e3:8.1f} ms")
    print(f"to_spline + canonical (sorted knots): {t_canon * 1e3:8.1f} ms")
    print(f"to_network (unit gauge), 1e6 neurons: {t_back * 1e3:8.1f} ms")
    print(f"to_spline, 1e4 neurons:               {t_small * 1e3:8.3f} ms")
    print(f"naive Python loop, 1e4 neurons:       {t_naive * 1e3:8.1f} ms")
    print(f"speed-up per neuron (naive 1e4 / vectorised 1e4): {t_naive / t_small:8.0f}x")
    print(
        f"per-neuron: naive {t_naive / 1e4 * 1e9:.0f} ns vs vectorised 1e6 {t_big / 1e6 * 1e9:.1f} ns "
        f"(ratio {t_naive / 1e4 / (t_big / 1e6):.0f}x)"
    )
    print(f"max rel. error spline vs float64 net on 201-point grid: {rel:.2e}")


if __name__ == "__main__":
    main()
