import numpy as np
import pytest

from splinelens.errors import InputError
from splinelens.init_analysis import breakpoint_ks, init_params, predicted, width_sweep


@pytest.mark.parametrize("scheme", ["default", "kaiming", "glorot"])
def test_breakpoints_follow_predicted_law(scheme):
    assert breakpoint_ks(scheme, 20_000, seed=1) > 0.01


def test_ks_rejects_the_wrong_law():
    # default-init breakpoints are not Cauchy(0, 0.707): the test has power
    from scipy import stats

    from splinelens.convert import to_spline

    beta = to_spline(init_params(20_000, "default", 1.0, np.random.default_rng(0))).beta
    assert stats.kstest(beta, stats.cauchy(scale=np.sqrt(0.5)).cdf).pvalue < 1e-6


def test_flatness_vs_width_matches_predictions():
    widths = [10, 100, 1000]
    default = width_sweep("default", widths, draws=300, seed=0)
    glorot = width_sweep("glorot", widths, draws=300, seed=0)
    for row in default + glorot:
        m, p = row["measured"], row["predicted"]
        assert m["p_beta_in"] == pytest.approx(p["p_beta_in"], abs=0.05)
        assert m["sum_mu2_in"] == pytest.approx(p["sum_mu2_in"], rel=0.2)
        assert m["rms_f0"] == pytest.approx(p["rms_f0"], rel=0.2)
    # PyTorch default: Σμ² over in-range kinks is ~1/12 at every width; individual kinks shrink ~H^-1/2
    assert all(r["measured"]["sum_mu2_in"] == pytest.approx(1 / 12, rel=0.15) for r in default)
    max_mu = [r["measured"]["max_abs_mu_in"] for r in default]
    assert max_mu[0] > max_mu[1] > max_mu[2]
    # Glorot: the whole initial function flattens, Σμ² ∝ 1/H and RMS f₀ ∝ H^-1/2
    slope = np.polyfit(np.log(widths), np.log([r["measured"]["sum_mu2_in"] for r in glorot]), 1)[0]
    assert -1.15 < slope < -0.85
    rms_slope = np.polyfit(np.log(widths), np.log([r["measured"]["rms_f0"] for r in glorot]), 1)[0]
    assert -0.6 < rms_slope < -0.4


def test_scale_and_zero_output():
    p = init_params(8, "kaiming", 2.0, np.random.default_rng(0), zero_output=True)
    assert np.allclose(p.v[:4], -p.v[4:]) and p.c == 0.0
    assert predicted("default", 100, scale=2.0)["sum_mu2_in"] == pytest.approx(16 / 12, rel=1e-6)
    with pytest.raises(InputError):
        init_params(8, "xavier")
