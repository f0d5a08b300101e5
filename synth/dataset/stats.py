"""Dataset statistics from the ``scene.json`` ground truth of every sample (pure Python, no images decoded).

Occlusion level of an object = 1 - its visible fraction (modal pixels / amodal pixels); the levels are
bucketed as below so that the card can say how hard the dataset is.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from typing import Any

from core.groundtruth import GroundTruth

OCCLUSION_LEVELS = (  # (name, lower bound inclusive, upper bound exclusive) on 1 - visible_fraction
    ("none (<1%)", 0.0, 0.01),
    ("light (1-25%)", 0.01, 0.25),
    ("moderate (25-50%)", 0.25, 0.50),
    ("heavy (50-90%)", 0.50, 0.90),
    ("extreme (90-100%)", 0.90, 1.01),
)
VISIBLE_BINS = 10  # histogram of visible fractions in [0, 1]
COMPLETION_HIDDEN = (0.25, 0.75)  # the sampler's default band (SamplerConfig.completion_hidden)


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def occlusion_level(visible_fraction: float) -> str:
    occluded = 1.0 - visible_fraction
    for name, lo, hi in OCCLUSION_LEVELS:
        if lo <= occluded < hi:
            return name
    return OCCLUSION_LEVELS[-1][0]


class StatsAccumulator:
    """Feed it ``(split, scene.json dict)`` pairs; ``result()`` is the JSON-ready statistics."""

    def __init__(self, completion_hidden: tuple[float, float] = COMPLETION_HIDDEN) -> None:
        self.completion_hidden = (float(completion_hidden[0]), float(completion_hidden[1]))
        self.scenes_asking_completion = 0  # scenes with an object hidden by a completion_hidden fraction
        self.scenes_per_split: Counter[str] = Counter()
        self.objects_per_scene: Counter[int] = Counter()
        self.visible: list[float] = []
        self.levels: Counter[str] = Counter()
        self.edges_per_scene: list[float] = []
        self.occluded_objects_per_scene: list[float] = []
        self.acyclic_scenes = 0
        self.psnr: list[float] = []
        self.families: Counter[str] = Counter()
        self.materials: Counter[str] = Counter()
        self.scenes = 0

    def add(self, split: str, doc: dict[str, Any], where: str = "scene.json") -> None:
        gt, spec = GroundTruth.from_scene(doc, where), doc["spec"]
        self.scenes += 1
        self.scenes_per_split[split] += 1
        self.objects_per_scene[len(gt.objects)] += 1
        lo, hi = self.completion_hidden
        asks = False
        for obj in gt.objects:
            v = float(obj.visible_fraction)
            self.visible.append(v)
            self.levels[occlusion_level(v)] += 1
            asks |= lo <= 1.0 - v <= hi
        self.scenes_asking_completion += asks
        self.edges_per_scene.append(float(len(gt.occlusion_edges)))
        self.occluded_objects_per_scene.append(float(len({e.back for e in gt.occlusion_edges})))
        self.acyclic_scenes += gt.acyclic
        self.psnr.append(float(gt.recomposition_psnr))
        for obj in spec.get("objects", []):
            self.families[obj["asset"]["family"]] += 1
            self.materials[obj["material"]["kind"]] += 1

    def update(self, items: Iterable[tuple[str, dict[str, Any]]]) -> StatsAccumulator:
        for split, doc in items:
            self.add(split, doc)
        return self

    def result(self) -> dict[str, Any]:
        hist = [0] * VISIBLE_BINS
        for v in self.visible:
            hist[min(int(v * VISIBLE_BINS), VISIBLE_BINS - 1)] += 1
        n_obj = len(self.visible)
        return {
            "scenes": self.scenes,
            "scenes_per_split": dict(sorted(self.scenes_per_split.items())),
            "objects_per_scene": {
                "histogram": {str(k): v for k, v in sorted(self.objects_per_scene.items())},
                **_summary([float(k) for k, c in self.objects_per_scene.items() for _ in range(c)]),
            },
            "objects": n_obj,
            "visible_fraction": {
                **_summary(self.visible),
                "histogram_bins": [[i / VISIBLE_BINS, (i + 1) / VISIBLE_BINS] for i in range(VISIBLE_BINS)],
                "histogram": hist,
            },
            "occlusion_levels": {
                name: {"objects": self.levels[name], "fraction": self.levels[name] / n_obj if n_obj else 0.0}
                for name, _, _ in OCCLUSION_LEVELS
            },
            "scenes_with_completion_object": {
                "hidden_band": list(self.completion_hidden),
                "scenes": self.scenes_asking_completion,
                "fraction": self.scenes_asking_completion / self.scenes if self.scenes else 0.0,
            },
            "objects_over_90_visible": sum(v > 0.9 for v in self.visible),
            "occlusion_edges_per_scene": _summary(self.edges_per_scene),
            "occluded_objects_per_scene": _summary(self.occluded_objects_per_scene),
            "scenes_with_acyclic_occlusion": self.acyclic_scenes,
            "recomposition_psnr_db": _summary(self.psnr),
            "asset_families": dict(self.families.most_common()),
            "material_kinds": dict(self.materials.most_common()),
        }
