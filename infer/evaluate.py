"""``cobl eval``: score the model, the unguided sampler and the visible-only baseline on ground-truth scenes.

Scenes come from shards through ``cobl.data`` (the trainer's reader), decoded at the model's resolution with
the model's K. Every method sees the same photo; the model and the unguided sampler also start from the same
noise (seeded by the scene key), so their difference is the guidance alone. Ground-truth visible fractions
(for the occluded / unoccluded split) are computed from the true alphas with ``cobl.layers.visible_weights``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from tqdm import tqdm

from cobl.core.errors import UserError
from cobl.model.batch import Sample
from infer.baselines import visible_only_layers
from infer.metrics import evaluate_scene, summarize
from infer.pipeline import CObLPipeline, decompose

MODEL, UNGUIDED, VISIBLE_ONLY = "model", "unguided", "visible_only"


def evaluate(
    pipe: CObLPipeline,
    data: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    unguided: bool = True,
    progress: bool = True,
    **sampling: Any,
) -> dict[str, Any]:
    """Per-scene rows and summaries for each method; ``sampling`` goes to ``infer.pipeline.decompose``
    (``num_inference_steps``, ``guidance_scale``, ``min_area``, ...)."""
    from cobl.model.data import make_dataset, sample_seed

    dataset = make_dataset(
        data, pipe.num_objects, pipe.resolution, shuffle=False, epochs=1, depth=pipe.uses_depth
    )
    scenes: list[dict[str, Any]] = []
    seconds = {MODEL: 0.0, UNGUIDED: 0.0}
    stream = itertools.islice(iter(dataset), limit) if limit is not None else iter(dataset)
    for sample in tqdm(stream, total=limit, desc="eval", unit="scene", disable=not progress):
        photo, true_layers = sample.photo, sample.layers
        scene_seed = sample_seed(sample.key, seed) % (2**63)
        entry: dict[str, Any] = {"key": sample.key, "num_objects": sample.num_objects}
        runs = [(MODEL, sampling.get("guidance_scale", 1.0))]
        if unguided:
            runs.append((UNGUIDED, 0.0))
        for name, scale in runs:
            start = time.perf_counter()
            result = decompose(
                pipe, photo, sample.depth, seed=scene_seed, **{**sampling, "guidance_scale": scale}
            )
            seconds[name] += time.perf_counter() - start
            entry[name] = evaluate_scene(result.layers, result.background, true_layers, photo)
            entry[name]["slots"] = result.slots
        vis_layers, vis_bg = visible_only_layers(
            photo, true_layers, ids=_ids_or_none(sample, len(true_layers))
        )
        entry[VISIBLE_ONLY] = evaluate_scene(vis_layers, vis_bg, true_layers, photo)
        scenes.append(entry)
    if not scenes:
        raise UserError(f"{data}: no usable scenes (skipped: {dataset.counts})", option="data")

    methods = [MODEL, *([UNGUIDED] if unguided else []), VISIBLE_ONLY]
    n = len(scenes)
    out: dict[str, Any] = {
        "data": data,
        "num_scenes": n,
        "methods": methods,
        "summary": {m: summarize([s[m] for s in scenes]) for m in methods},
        "seconds_per_scene": {m: seconds[m] / n for m in methods if m in seconds},
        "skipped": {k: v for k, v in dataset.counts.items() if k != "decoded"},
        "scenes": scenes,
    }
    if unguided and seconds[UNGUIDED] > 0:
        out["guidance_time_ratio"] = seconds[MODEL] / seconds[UNGUIDED]
    out["amodal_completion_check"] = completion_check(out["summary"])
    return out


def completion_check(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Does the model beat the visible-only baseline on occluded objects? If not, it is not completing the
    hidden parts, whatever its overall mIoU (``None`` when the data has no occluded object)."""
    model = summary[MODEL]["amodal_miou_occluded"]
    visible = summary[VISIBLE_ONLY]["amodal_miou_occluded"]
    beats = None if model is None or visible is None else bool(model > visible)
    return {
        "model_occluded_miou": model,
        "visible_only_occluded_miou": visible,
        "model_beats_visible_only": beats,
    }


def _ids_or_none(sample: Sample, num_slots: int) -> Any:
    """The shard's modal map when it refers to the decoded slots (``ids.png``: 0 bg, k+1 = layer k), else None
    (the baseline then derives it from the true alphas)."""
    ids = sample.ids
    if ids is None or int(ids.max()) > sample.num_objects or sample.num_objects > num_slots:
        return None
    return ids.numpy()
