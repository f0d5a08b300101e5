"""Where standard initializations put breakpoints and delta-slopes, and how flat the initial function is.

Schemes (1→H→1 net; first-layer fan_in = 1): ``default`` is PyTorch's ``nn.Linear`` init (w, b ~ U(±1),
v, c ~ U(±1/√H)); ``kaiming`` is He normal (w ~ N(0, 2), b ~ N(0, 1), v ~ N(0, 2/H), c = 0); ``glorot`` is
Glorot normal with every variance 2/(1+H). ``scale`` α multiplies every parameter. The analytic predictions
follow docs/splinelens_derivations.md ("derivations") §4 (β is a ratio b/w; E μ² = σ_v² σ_w²).
"""

from __future__ import annotations

import numpy as np
from scipy import integrate, special, stats

from splinelens.convert import ShallowParams, canonical, params_to_spline
from splinelens.errors import InputError

SCHEMES = ("default", "kaiming", "glorot")


def init_params(
    width: int,
    scheme: str,
    scale: float = 1.0,
    rng: np.random.Generator | None = None,
    zero_output: bool = False,
) -> ShallowParams:
    """Draw a shallow net. ``zero_output`` pairs each neuron with a copy whose v is negated, so f₀ ≡ 0 while
    the weights keep their scale: this isolates the init *scale* from the init *function* (even width only).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    if scheme not in SCHEMES:
        raise InputError(f"--init: unknown init {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if width < 1 or (zero_output and width % 2):
        raise InputError(f"--width: expected a positive{' even' if zero_output else ''} integer, got {width}")
    h = width // 2 if zero_output else width
    if scheme == "default":
        w, b = rng.uniform(-1, 1, h), rng.uniform(-1, 1, h)
        bound = 1.0 / np.sqrt(width)
        v, c = rng.uniform(-bound, bound, h), float(rng.uniform(-bound, bound))
    elif scheme == "kaiming":
        w, b = rng.normal(0, np.sqrt(2.0), h), rng.normal(0, 1.0, h)
        v, c = rng.normal(0, np.sqrt(2.0 / width), h), 0.0
    else:
        sd = np.sqrt(2.0 / (1 + width))
        w, b, v, c = (
            rng.normal(0, sd, h),
            rng.normal(0, sd, h),
            rng.normal(0, sd, h),
            float(rng.normal(0, sd)),
        )
    if zero_output:
        w, b, v, c = np.tile(w, 2), np.tile(b, 2), np.concatenate([v, -v]), 0.0
    return ShallowParams(w=scale * w, b=scale * b, v=scale * v, c=scale * c)


def _variances(scheme: str, width: int) -> tuple[str, float, float, float, float]:
    """(family, Var w, Var b, Var v, Var c) at scale 1."""
    if scheme == "default":
        return "uniform", 1 / 3, 1 / 3, 1 / (3 * width), 1 / (3 * width)
    if scheme == "kaiming":
        return "gauss", 2.0, 1.0, 2.0 / width, 0.0
    s2 = 2.0 / (1 + width)
    return "gauss", s2, s2, s2, s2


def predicted(scheme: str, width: int, scale: float = 1.0, window: float = 1.0) -> dict[str, float]:
    """Analytic expectations on the data window [-window, window] (derivations §4.2-4.3)."""
    family, vw, vb, vv, vc = _variances(scheme, width)
    a = window
    if family == "uniform":  # w, b ~ U(-1, 1)
        p_in = a / 2 if a <= 1 else 1 - 1 / (2 * a)
        # E[w² 1(|b| <= a|w|)] = ∫ w² min(a|w|, 1) dw/2 over [-1, 1]
        e_w2_in = integrate.quad(lambda w: w**2 * min(a * w, 1.0), 0, 1)[0]
    else:
        sw, sb = np.sqrt(vw), np.sqrt(vb)
        p_in = 2 / np.pi * np.arctan(a * sw / sb)
        e_w2_in = (
            2
            * integrate.quad(
                lambda w: w**2 * stats.norm.pdf(w, scale=sw) * special.erf(a * w / (np.sqrt(2) * sb)),
                0,
                np.inf,
            )[0]
        )
    sum_mu2_in = width * vv * e_w2_in * scale**4
    # E f0(x)² = Var c α² + H Var v E[relu(wx+b)²] α⁴, with E relu(z)² = Var(z)/2 for symmetric z; mean over x
    mean_f2 = vc * scale**2 + width * vv * 0.5 * (vw * a**2 / 3 + vb) * scale**4
    return {
        "p_beta_in": float(p_in),
        "sum_mu2_in": float(sum_mu2_in),
        "rms_f0": float(np.sqrt(mean_f2)),
        "rms_mu": float(np.sqrt(vv * vw) * scale**2),
        "cauchy_gamma": float(np.sqrt(vb / vw)) if family == "gauss" else float("nan"),
    }


def measure(p: ShallowParams, window: float = 1.0, n_grid: int = 401) -> dict[str, float]:
    """Flatness of one initial function on [-window, window]."""
    sp = params_to_spline(p)
    live = sp.s != 0
    inside = live & (np.abs(np.where(live, sp.beta, np.inf)) <= window)
    mu_in = sp.mu[inside]
    x = np.linspace(-window, window, n_grid)
    f = canonical(sp)(x)
    return {
        "p_beta_in": float(inside.mean()),
        "sum_mu2_in": float(np.sum(mu_in**2)),
        "slope_tv_in": float(np.sum(np.abs(mu_in))),
        "max_abs_mu_in": float(np.max(np.abs(mu_in))) if mu_in.size else 0.0,
        "rms_f0": float(np.sqrt(np.mean(f**2))),
        "rms_mu": float(np.sqrt(np.mean(sp.mu**2))),
    }


def width_sweep(
    scheme: str, widths: list[int], draws: int, scale: float = 1.0, seed: int = 0, window: float = 1.0
) -> list[dict[str, float]]:
    """Monte Carlo means of ``measure`` next to ``predicted`` for each width."""
    rng = np.random.default_rng(seed)
    rows = []
    for h in widths:
        ms = [measure(init_params(h, scheme, scale, rng), window) for _ in range(draws)]
        mean = {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
        # RMS over draws as sqrt(E f²): averaging per-draw RMS would be biased low (Jensen)
        mean["rms_f0"] = float(np.sqrt(np.mean([m["rms_f0"] ** 2 for m in ms])))
        mean["rms_mu"] = float(np.sqrt(np.mean([m["rms_mu"] ** 2 for m in ms])))
        rows.append({"width": h, "measured": mean, "predicted": predicted(scheme, h, scale, window)})
    return rows


def breakpoint_ks(scheme: str, width: int, seed: int = 0) -> float:
    """KS p-value of the init's breakpoints against the predicted law (Cauchy, or the ratio of uniforms)."""
    p = init_params(width, scheme, 1.0, np.random.default_rng(seed))
    beta = params_to_spline(p).beta
    family, vw, vb, _, _ = _variances(scheme, width)
    if family == "gauss":
        return float(stats.kstest(beta, stats.cauchy(scale=np.sqrt(vb / vw)).cdf).pvalue)
    return float(stats.kstest(beta, ratio_of_uniforms_cdf).pvalue)


def ratio_of_uniforms_cdf(x: np.ndarray) -> np.ndarray:
    """CDF of -b/w for w, b ~ U(-1, 1): density 1/4 on [-1, 1] and 1/(4x²) outside."""
    x = np.asarray(x, dtype=np.float64)
    inner = 0.5 + x / 4
    safe = np.where(x == 0, 1.0, x)
    return np.where(x < -1, -1 / (4 * safe), np.where(x > 1, 1 + (-1 / (4 * safe)), inner))
