"""Depth a user would have: a monocular depth estimator (a transformers depth-estimation model in a local
folder, e.g. DPT / MiDaS or Depth Anything saved with ``save_pretrained`` together with its image processor).

The model is loaded through transformers' own ``pipeline("depth-estimation", model=DIR)`` (never from the hub:
the folder must exist), so any architecture transformers maps to depth estimation works. Relative models (DPT,
Depth Anything's default) output relative inverse depth, larger = nearer; metric ones
(``config.depth_estimation_type == "metric"``, ZoeDepth) output metres. Either way the result is the
condition's convention (``cobl.depth``): relative inverse depth in [0, 1], 1 = nearest, at the photo's
size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cobl.depth import relative_disparity
from core.errors import UserError

METRIC_MODEL_TYPES = ("zoedepth",)


class DepthEstimator:
    """``estimator(photo [3, H, W] in [0, 1]) -> [H, W]`` relative inverse depth in [0, 1]."""

    def __init__(self, folder: str | Path, device: str | torch.device | None = None) -> None:
        folder = Path(folder)
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise UserError(
                f"{folder}: not a saved depth-estimation model (expected a folder with config.json)",
                option="depth_model",
            )
        try:
            from transformers import pipeline
        except ImportError:
            raise UserError(
                "needs the transformers package (pip install transformers)", option="depth_model"
            ) from None
        try:
            self.pipe = pipeline("depth-estimation", model=str(folder), device=device)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(
                f"{folder}: cannot load a depth estimator ({first[:200]})", option="depth_model"
            ) from None
        config = self.pipe.model.config
        self.metric = (
            getattr(config, "depth_estimation_type", None) == "metric"
            or getattr(config, "model_type", "") in METRIC_MODEL_TYPES
        )
        self.name = str(folder)

    def __call__(self, photo: Any) -> torch.Tensor:
        from PIL import Image

        rgb = torch.as_tensor(photo).detach().float().clamp(0, 1).cpu()
        image = Image.fromarray(np.round(rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
        with torch.no_grad():
            predicted = self.pipe(image)["predicted_depth"]
        predicted = torch.as_tensor(predicted).double().reshape(rgb.shape[-2:])
        if self.metric:
            return relative_disparity(predicted)
        # Min-max in float64 without an absolute epsilon: an estimator's output range can be tiny.
        span = predicted.max() - predicted.min()
        if not span > 0:
            return torch.zeros(predicted.shape)
        return ((predicted - predicted.min()) / span).float()
