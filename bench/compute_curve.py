"""The compute curve of the demo model (issue 24): val metrics against samples seen, from the
``val_curve.jsonl`` of runs trained with `cobl demo`'s training options to different step counts.

    python bench/compute_curve.py --run 4000=DEMO/run --run 16000=RUN16K [--batch-size 8] [--out curve.png]

Prints one markdown row per point (the guided sampler on the val scenes each run was given, as `cobl eval`
scores them) and, with ``--out``, plots occluded mIoU, count accuracy and hidden precision per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ("amodal_miou", "amodal_miou_occluded", "amodal_miou_occluded_min_area_0", "amodal_miou_strict",
        "hidden_recall", "hidden_precision", "fg_ari", "count_accuracy", "order_accuracy")
PLOTTED = (("amodal_miou_occluded", "occluded mIoU"), ("count_accuracy", "count"),
           ("hidden_precision", "hidden precision"))


def read_curve(run: Path) -> list[dict]:
    """The run's curve points by step (a resumed run may repeat a step: the last one stands)."""
    by_step = {}
    for line in (run / "val_curve.jsonl").read_text().splitlines():
        if line.strip():
            point = json.loads(line)
            by_step[point["step"]] = point
    return [by_step[s] for s in sorted(by_step)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="LABEL=RUN_FOLDER (holds val_curve.jsonl)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=None, help="PNG of the curves")
    args = p.parse_args()
    runs = {label: read_curve(Path(folder)) for label, folder in (r.split("=", 1) for r in args.run)}
    print("| run | step | samples seen | val scenes | " + " | ".join(KEYS) + " |")
    for label, points in runs.items():
        for pt in points:
            values = " | ".join("–" if pt.get(k) is None else f"{pt[k]:.2f}" for k in KEYS)
            print(f"| {label} | {pt['step']} | {pt['step'] * args.batch_size} | {pt['scenes']} | {values} |")
    if args.out is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.2), sharex=True)
    for ax, (key, title) in zip(axes, PLOTTED, strict=True):
        for label, points in runs.items():
            xs = [pt["step"] * args.batch_size for pt in points if pt.get(key) is not None]
            ax.plot(xs, [pt[key] for pt in points if pt.get(key) is not None], "o-", label=f"{label} steps")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
        ax.set_title(f"val {title}", fontsize=10)
        ax.set_xlabel("samples seen")
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
