"""Validation during training, through the ``CObLPipeline`` around the model being trained (as the diffusers
training scripts do): images of a short unguided DDIM run, shown as photo | layers | background |
recomposition, and the points of the val learning curve (the guided sampler scored as ``cobl eval`` scores).

The images use no composite guidance: they show how training is going, not the best the sampler can do.
Both run with the EMA weights when the trainer keeps an EMA.
"""

from __future__ import annotations

from typing import Any

import torch

from core.layers import ALPHA_CHANNEL, EMPTY_RGB, composite
from infer.pipeline import CObLPipeline


def sample_layers(
    pipe: CObLPipeline,
    photo: torch.Tensor,
    depth: torch.Tensor | None = None,
    steps: int = 10,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unguided sampling with the pipeline: photo [B,3,H,W] (+ depth [B,1,H,W]) -> (layers [B,K,4,H,W],
    background [B,3,H,W])."""
    out = pipe(
        photo,
        depth,
        num_inference_steps=steps,
        guidance_scale=0.0,
        generator=torch.Generator().manual_seed(seed),
    )
    return out.layers, out.background


def layer_grid(photo: torch.Tensor, layers: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """One row per scene: photo | each layer over neutral grey | background | recomposition. [3, H', W']."""
    grey = torch.tensor(EMPTY_RGB, device=photo.device).view(3, 1, 1)
    rows = []
    for i in range(photo.shape[0]):
        shown = [
            layers[i, k, ALPHA_CHANNEL : ALPHA_CHANNEL + 1] * layers[i, k, :3]
            + (1 - layers[i, k, ALPHA_CHANNEL : ALPHA_CHANNEL + 1]) * grey
            for k in range(layers.shape[1])
        ]
        recomposed = composite(layers[i], background[i])
        rows.append(torch.cat([photo[i], *shown, background[i], recomposed], dim=-1))
    return torch.cat(rows, dim=-2).clamp(0, 1)


# The learning curve's metrics (``infer.metrics`` summary keys of the guided model).
CURVE_METRICS = ("amodal_miou", "amodal_miou_occluded", "amodal_miou_occluded_min_area_0",
                 "amodal_miou_strict", "count_accuracy", "order_accuracy", "hidden_recall",
                 "hidden_precision", "fg_ari")


def validation_samples(urls: list[str], pipe: CObLPipeline, count: int):
    """The first ``count`` photos (and depths, for a depth-conditioned model) of the training shards, as a
    ``Batch`` read as the model's config says; None when ``count`` is 0 or the shards yield nothing."""
    import itertools

    from cobl.data import collate, make_dataset

    if not count:
        return None
    config = pipe.cobl_config
    ds = make_dataset(
        urls, config.num_objects, config.resolution, shuffle=False, epochs=1, depth=config.depth_condition,
        depth_source=config.depth_source,
    )
    samples = list(itertools.islice(iter(ds), count))
    return collate(samples) if samples else None


def log_validation(pipe: CObLPipeline, samples, writer, step: int, steps: int, seed: int, ema=None) -> None:
    """Sample ``samples``' photos unguided in ``steps`` steps and log the grid to TensorBoard ``writer``."""
    from train.common import ema_weights

    if samples is None:
        return
    model = pipe.unet
    model.eval()
    device = next(model.parameters()).device
    with ema_weights(model, ema):
        layers, background = sample_layers(
            pipe,
            samples.photo.to(device),
            depth=None if samples.depth is None else samples.depth.to(device),
            steps=steps,
            seed=seed,
        )
    grid = layer_grid(samples.photo.to(device), layers.float(), background.float())
    writer.add_image("validation/photo|layers|background|recomposition", grid.cpu(), step)
    model.train()


def val_curve_point(pipe: CObLPipeline, opts: Any, ema=None) -> dict[str, Any]:
    """The guided model on the first ``opts.val_scenes`` scenes of ``opts.val_data``, scored as ``cobl eval``
    scores (``opts``: a ``train.options.TrainOptions``)."""
    from infer.evaluate import MODEL, evaluate
    from train.common import ema_weights

    model = pipe.unet
    model.eval()
    with ema_weights(model, ema):
        metrics = evaluate(
            pipe, opts.val_data, limit=opts.val_scenes, seed=opts.seed, unguided=False, progress=False,
            num_inference_steps=opts.val_sampling_steps, min_area=opts.val_min_area,
        )
    model.train()
    summary = metrics["methods"][MODEL]
    return {"scenes": metrics["num_scenes"], **{k: summary.get(k) for k in CURVE_METRICS}}
