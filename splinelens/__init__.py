"""splinelens: shallow univariate ReLU networks seen as the continuous piecewise-linear splines they are.

Modules: ``convert`` (net ⇄ spline), ``deep`` (exact breakpoints of deep 1-D nets), ``train`` (GD / gradient
flow logged in spline coordinates), ``hessian`` (loss-surface spectra), ``init_analysis`` (breakpoints and
flatness at init), ``regimes`` (implicit regularization vs init scale), ``plots`` and ``cli``.
"""

from splinelens.convert import Spline, canonical, to_network, to_spline

__all__ = ["Spline", "canonical", "to_network", "to_spline"]
