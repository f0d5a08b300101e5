"""``cobl eval``: score the model, the unguided sampler and the visible-only baseline on ground-truth scenes.

Scenes come from shards through ``cobl.data`` (the trainer's reader), decoded at the model's resolution with
the model's K. Every method sees the same photo; the model and the unguided sampler also start from the same
noise (seeded by the scene key), and the unguided row turns off the composite guidance together with what
looks at the photo through the decoded layers (order search, pruning) and the prior pull
(``GuidanceConfig.unguided``), so their difference is the guidance alone. Ground-truth visible fractions (for
the occluded / unoccluded split) are computed from the true alphas with ``core.layers.visible_weights``.

Scoring (``infer.metrics``): one small-object rule on both sides (``settings.small_object_rule = "ignore"``).
The model's layers are kept at any area by the sampler here and the rule is applied by the metric, so the same
sample also gives the occluded mIoU without any rule (``amodal_miou_occluded_min_area_0``); the visible-only
oracle's exact visible masks are not filtered by their visible area.

Depth: a depth-conditioned model gets the depth it was trained on (its config's ``depth_source``: the
renderer's exact depth, an oracle input, or the simulated monocular estimate, ``cobl.depth``) unless
``depth_source`` overrides it, or a real estimator (``infer.depth_estimation.DepthEstimator``) is run on each
photo; ``settings.depth_source`` in the result says which.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from cobl.batch import Sample
from core.errors import UserError
from core.policy import MIN_OBJECT_AREA
from infer.baselines import visible_only_layers
from infer.metrics import evaluate_scene, summarize
from infer.pipeline import CObLPipeline, decompose, kept_stack
from infer.settings import MIN_VISIBLE

MODEL, UNGUIDED, VISIBLE_ONLY = "model", "unguided", "visible_only"
SMALL_OBJECT_RULE = "ignore"  # true objects under the rule are ignored, not missed (infer.metrics)


def model_depth_source(pipe: CObLPipeline) -> str:
    """The depth a depth-conditioned model was trained on (``"rendered"`` for models saved before the
    option existed); ``"none"`` for a photo-only model."""
    if not pipe.uses_depth:
        return "none"
    config = pipe.cobl_config
    return "rendered" if config is None else config.depth_source


def evaluate(
    pipe: CObLPipeline,
    data: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    unguided: bool = True,
    progress: bool = True,
    depth_source: str | None = None,
    depth_estimator: Callable[[Any], Any] | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """Per-scene rows and summaries for each method; ``sampling`` goes to ``infer.pipeline.decompose``
    (``num_inference_steps``, ``guidance_scale``, ``min_area``, ...). ``depth_source`` overrides the model's
    own (``model_depth_source``); ``depth_estimator`` (photo -> [H, W] relative depth) replaces the shard's
    depth altogether. ``settings`` in the result records the depth source and the small-object rule."""
    from cobl.data import make_dataset, sample_seed

    source = model_depth_source(pipe) if depth_source is None else depth_source
    if not pipe.uses_depth:
        source = "none"
    if depth_estimator is not None and pipe.uses_depth:
        source = f"estimator:{getattr(depth_estimator, 'name', 'callable')}"
    from_shard = pipe.uses_depth and depth_estimator is None
    dataset = make_dataset(
        data, pipe.num_objects, pipe.resolution, shuffle=False, epochs=1, depth=from_shard,
        depth_source=source if from_shard else "rendered",
    )
    min_area = sampling.get("min_area", MIN_OBJECT_AREA)  # the one small-object rule, for every method
    min_visible = sampling.get("min_visible", MIN_VISIBLE)
    scenes: list[dict[str, Any]] = []
    seconds = {MODEL: 0.0, UNGUIDED: 0.0}
    stream = itertools.islice(iter(dataset), limit) if limit is not None else iter(dataset)
    for sample in tqdm(stream, total=limit, desc="eval", unit="scene", disable=not progress):
        photo, true_layers = sample.photo, sample.layers
        scene_seed = sample_seed(sample.key, seed) % (2**63)
        entry: dict[str, Any] = {"key": sample.key, "num_objects": sample.num_objects}
        depth = sample.depth
        if depth_estimator is not None and pipe.uses_depth:
            depth = depth_estimator(photo)[None]
        ids = _ids_or_none(sample, len(true_layers))
        runs = [(MODEL, sampling.get("guidance_scale", 1.0))]
        if unguided:
            runs.append((UNGUIDED, 0.0))
        for name, scale in runs:
            start = time.perf_counter()
            result = decompose(
                pipe, photo, depth, seed=scene_seed, **{**sampling, "guidance_scale": scale}
            )
            seconds[name] += time.perf_counter() - start
            # every object the sampler kept at any area: the metric applies the small-object rule
            reported = kept_stack(result.slot_layers, result.background, 0.0, min_visible)
            entry[name] = evaluate_scene(
                reported.layers, result.background, true_layers, photo, true_ids=ids, min_area=min_area
            )
            entry[name]["slots"] = result.slots
        vis_layers, vis_bg = visible_only_layers(photo, true_layers, ids=ids)
        entry[VISIBLE_ONLY] = evaluate_scene(
            vis_layers, vis_bg, true_layers, photo, true_ids=ids, min_area=min_area, filter_predictions=False
        )
        scenes.append(entry)
    if not scenes:
        raise UserError(f"{data}: no usable scenes (skipped: {dataset.counts})", option="data")

    methods = [MODEL, *([UNGUIDED] if unguided else []), VISIBLE_ONLY]
    n = len(scenes)
    out: dict[str, Any] = {
        "data": data,
        "num_scenes": n,
        "method_order": methods,
        "methods": {m: summarize([s[m] for s in scenes], seed=seed) for m in methods},
        "settings": {
            "depth_source": source,
            # what the model is given that a user with a photo would not have: such a row is an oracle row
            "oracle_inputs": ["rendered depth"] if source == "rendered" else [],
            "min_area": min_area,
            "small_object_rule": SMALL_OBJECT_RULE,
            "sampler_notes": list(getattr(pipe, "notes", [])),
        },
        "seconds_per_scene": {m: seconds[m] / n for m in methods if m in seconds},
        "skipped": dict(dataset.counts),
        "scenes": scenes,
    }
    if unguided and seconds[UNGUIDED] > 0:
        out["guidance_time_ratio"] = seconds[MODEL] / seconds[UNGUIDED]
    out["amodal_completion_check"] = completion_check(out["methods"])
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
