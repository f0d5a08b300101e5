import numpy as np

from splinelens.data import synthetic
from splinelens.regimes import regime_sweep


def test_small_init_learns_linear_interpolant_large_init_cubic():
    x, y = synthetic("sine", 5)
    small, large = regime_sweep(x, y, widths=[100], scales=[0.03, 10.0], max_steps=30_000)
    assert small["loss"] < 1e-8 and large["loss"] < 1e-6
    assert small["closer_to"] == "linear" and small["sup_to_linear"] < 0.1 * small["sup_cubic_to_linear"]
    assert large["closer_to"] == "cubic" and large["sup_to_cubic"] < 0.75 * large["sup_to_linear"]
    # rich regime moves breakpoints onto the data, lazy regime freezes them
    assert small["mu_weighted_frac_knots_at_data"] > 0.9
    assert large["median_abs_dbeta"] < 0.01 < small["median_abs_dbeta"]


def test_small_init_is_sparsest_interpolant_but_not_always_the_linear_one():
    x, y = synthetic("sine", 7)
    small, large = regime_sweep(x, y, widths=[50], scales=[0.03, 3.0], max_steps=30_000)
    # ∫|f''| at the minimum over interpolants (that of the linear interpolant) ...
    assert abs(small["slope_tv"] / small["slope_tv_linear_interp"] - 1) < 0.01
    assert large["slope_tv"] > 1.2 * large["slope_tv_linear_interp"]
    # ... reached by a different (non-unique) minimiser: knots not at the data
    assert small["sup_to_linear"] > 0.5 * small["sup_cubic_to_linear"]
    assert np.isfinite(small["sup_to_cubic"])
