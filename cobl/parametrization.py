"""The three denoiser parametrizations (diffusers' ``prediction_type``) and the maps between them.

The trainer's slot-matching loss and the sampler's guidance both need the clean-latent prediction ``x0`` a
denoiser output implies, and the output that implies a given ``x0``; both live here.
"""

from __future__ import annotations

import torch

from cobl.configs import PREDICTION_TYPES


def per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value [B]`` shaped to broadcast against ``like [B, ...]`` (same device and dtype)."""
    return value.to(like.device, like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def predict_x0(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The clean-latent prediction implied by a denoiser output of the scheduler's ``prediction_type``."""
    a, s = per_sample(alpha_bar.sqrt(), sample), per_sample((1 - alpha_bar).sqrt(), sample)
    if prediction_type == "sample":
        return model_output
    if prediction_type == "epsilon":
        return (sample - s * model_output) / a
    if prediction_type == "v_prediction":
        return a * sample - s * model_output
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def output_from_x0(
    x0: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The denoiser output (of ``prediction_type``) that implies clean prediction ``x0`` at ``sample``.

    Inverse of ``predict_x0`` for fixed ``sample``, so a scheduler step driven by it moves toward ``x0``.
    """
    a, s = per_sample(alpha_bar.sqrt(), sample), per_sample((1 - alpha_bar).sqrt(), sample)
    if prediction_type == "sample":
        return x0
    eps = (sample - a * x0) / s
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return a * eps - s * x0
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
