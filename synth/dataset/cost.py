"""What rendering a dataset cost, as the manifest records it and the card and ``cobl synth publish`` show it.

Each ``cobl synth run`` invocation appends a :class:`RunCost` (a resumed dataset has several); each finished
shard keeps the CPU core-seconds of its scenes (``ShardRecord.core_seconds``), so the per-scene figures
describe exactly the scenes in the dataset, whichever run rendered them. Core-seconds are the render
actor's process CPU time for the scene (every Cycles thread counted), measured in the actor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RunCost:
    """One ``cobl synth run`` invocation: its workers, wall time and what went wrong."""

    workers: int
    scenes_rendered: int = 0  # scenes whose render came back (a killed run's unfinished shards included)
    seconds: float = 0.0  # wall time from the start of the worker pool to the end of the run
    worker_restarts: int = 0  # render actors replaced after their process or node was lost
    worker_start_failures: int = 0  # render actors that failed to start (e.g. no usable GPU on the node)
    failed_attempts: dict[str, int] = field(default_factory=dict)  # cause -> scene attempts that failed

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunCost:
        return cls(**data)


def summarize(runs: Iterable[RunCost], core_seconds: Iterable[float]) -> dict[str, Any]:
    """The dataset's cost: throughput over all runs, core-seconds per scene, restarts and failures."""
    runs = list(runs)
    cores = np.asarray(list(core_seconds), dtype=np.float64)
    scenes = sum(r.scenes_rendered for r in runs)
    seconds = sum(r.seconds for r in runs)
    causes: Counter[str] = Counter()
    for run in runs:
        causes.update(run.failed_attempts)
    return {
        "runs": len(runs),
        "scenes_rendered": scenes,
        "render_seconds": round(seconds, 3),
        "scenes_per_second": round(scenes / seconds, 4) if seconds > 0 else None,
        "core_seconds_per_scene": {
            "scenes": int(cores.size),
            "median": round(float(np.median(cores)), 4) if cores.size else None,
            "p95": round(float(np.percentile(cores, 95)), 4) if cores.size else None,
            "total": round(float(cores.sum()), 3),
        },
        "worker_restarts": sum(r.worker_restarts for r in runs),
        "worker_start_failures": sum(r.worker_start_failures for r in runs),
        "failed_attempts": sum(causes.values()),
        "failure_causes": dict(sorted(causes.items())),
    }


def cost_lines(cost: dict[str, Any]) -> list[str]:
    """The cost in a few sentences (the dataset card and ``cobl synth publish`` print these)."""
    if not cost.get("runs"):
        return ["Rendering cost: not recorded (the manifest predates cost records)."]
    per_scene = cost["core_seconds_per_scene"]
    rate = cost["scenes_per_second"]
    lines = [
        f"Rendering cost: {cost['scenes_rendered']} scenes rendered in {cost['render_seconds']:.1f} s of "
        f"wall time over {cost['runs']} run(s) ({rate:.3f} scenes/s)."
        if rate is not None
        else f"Rendering cost: {cost['scenes_rendered']} scenes rendered over {cost['runs']} run(s).",
    ]
    if per_scene["scenes"]:
        lines.append(
            f"CPU core-seconds per scene: median {per_scene['median']:.2f}, p95 {per_scene['p95']:.2f} "
            f"({per_scene['total'] / 3600:.3f} core-hours for the {per_scene['scenes']} scenes)."
        )
    causes = ", ".join(f"{cause} {n}" for cause, n in cost["failure_causes"].items())
    lines.append(
        f"Blender worker restarts: {cost['worker_restarts']}; worker start failures: "
        f"{cost['worker_start_failures']}; failed scene attempts: {cost['failed_attempts']}"
        + (f" ({causes})." if causes else ".")
    )
    return lines
