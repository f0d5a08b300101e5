"""The one table of ``bench/gpu_check.sh``, from the JSON lines its benches printed into WORK.

    python bench/gpu_check_table.py WORK MODE SECONDS
"""

from __future__ import annotations

import datetime
import json
import statistics
import sys
from pathlib import Path


def _last_json(path: Path) -> dict:
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def rows(work: Path) -> list[tuple[str, str]]:
    out = []
    ckpt = _last_json(work / "bench_train_ckpt.txt")
    nockpt = _last_json(work / "bench_train_nockpt.txt")["results"]["cobl"]
    s = ckpt["settings"]
    shape = f"{s['resolution']}², K = {s['num_objects']}, batch {s['batch_size']}"
    for name, r in ckpt["results"].items():
        what = "CObL" if name == "cobl" else "frozen UNet over the same K+1 slots"
        check = "with checkpointing" if s["gradient_checkpointing"] else "no checkpointing"
        out.append((f"model step ({shape}): {what}, {check}", f"{r['step_s']} s, peak {r['peak_mib']} MiB"))
    out.append((f"model step ({shape}): CObL, no checkpointing",
                f"{nockpt['step_s']} s, peak {nockpt['peak_mib']} MiB"))
    loop = _last_json(work / "bench_loop.txt")
    med = {k: statistics.median(v) for k, v in loop["step_s"].items()}
    lines = (work / "bench_loop.txt").read_text().splitlines()
    cache_line = next((x for x in lines if x.startswith("cache")), "")
    out.append(("the loop's model step (bench_loop.py, same process)", f"{med['model']:.3f} s"))
    for key, what in (("cache", f"the loop, steady state, cache {loop['settings']['cache']} ({cache_line})"),
                      ("off", "the loop, steady state, no cache (decode + encode every batch)")):
        if key in med:
            out.append((what, f"{med[key]:.3f} s = {med[key] / med['model']:.2f}x the model step"))
    for r in _json_lines(work / "bench_infer.txt"):
        value = (f"{r['wall_s']} s wall (with loading), peak {r['peak_gib']} GiB ({r['peak']})"
                 if "wall_s" in r else f"failed: {r.get('error')}")
        out.append((f"`cobl infer {r['flags']}`", value))
    curve = work / "demo_long" / "val_curve.jsonl"
    if curve.is_file():
        for p in _json_lines(curve):
            out.append((f"demo model, val point at step {p['step']}",
                        f"occluded {p.get('amodal_miou_occluded')}, count {p.get('count_accuracy')}"))
    return out


def main() -> None:
    work, mode, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    label = "" if mode == "gpu" else " (CPU mode, small size: not measured on a GPU yet)"
    print(f"\n## bench/gpu_check.sh{label}: {datetime.date.today()}, {device}, {seconds} s in all\n")
    print("| what | measured |")
    print("|---|---|")
    for what, value in rows(work):
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
