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


def _train_rows(work: Path) -> list[tuple[str, str]]:
    out = []
    ckpt = _last_json(work / "bench_train_ckpt.txt")
    s = ckpt["settings"]
    shape = f"{s['resolution']}², K = {s['num_objects']}, batch {s['batch_size']}"
    where = "the SD folder's UNet" if s.get("pretrained") else "SD 2.1-base's shapes, random"
    for name, r in ckpt["results"].items():
        what = f"CObL ({where})" if name == "cobl" else "frozen UNet over the same K+1 slots"
        check = "with checkpointing" if s["gradient_checkpointing"] else "no checkpointing"
        out.append((f"model step ({shape}): {what}, {check}", f"{r['step_s']} s, peak {r['peak_mib']} MiB"))
    if (work / "bench_train_nockpt.txt").is_file():  # the GPU mode
        nockpt = _last_json(work / "bench_train_nockpt.txt")["results"]["cobl"]
        out.append((f"model step ({shape}): CObL, no checkpointing",
                    f"{nockpt['step_s']} s, peak {nockpt['peak_mib']} MiB"))
    return out


def _loop_rows(work: Path) -> list[tuple[str, str]]:
    loop = _last_json(work / "bench_loop.txt")
    med = {k: statistics.median(v) for k, v in loop["step_s"].items()}
    cpu = {k: statistics.median(v) for k, v in loop["cpu_s"].items()}
    lines = (work / "bench_loop.txt").read_text().splitlines()
    cache_line = next((x for x in lines if x.startswith("cache")), "")
    out = [("the loop's model step (bench_loop.py, same process)", f"{med['model']:.3f} s")]
    for key, what in (("cache", f"the loop, steady state, cache {loop['settings']['cache']} ({cache_line})"),
                      ("off", "the loop, steady state, no cache (decode + encode every batch)")):
        if key in med:
            out.append((what, f"{med[key]:.3f} s = {med[key] / med['model']:.2f}x the model step "
                              f"(process CPU {cpu[key] / cpu['model']:.2f}x)"))
    return out


def _infer_rows(work: Path) -> list[tuple[str, str]]:
    out = []
    for r in _json_lines(work / "bench_infer.txt"):
        value = (f"{r['wall_s']} s wall (with loading), peak {r['peak_gib']} GiB ({r['peak']})"
                 if "wall_s" in r else f"failed: {r.get('error')}")
        out.append((f"`cobl infer {r['flags']}`", value))
    return out


def _curve_rows(work: Path) -> list[tuple[str, str]]:
    return [(f"demo model, val point at step {p['step']}",
             f"occluded {p.get('amodal_miou_occluded')}, count {p.get('count_accuracy')}, "
             f"amodal {p.get('amodal_miou')}")
            for p in _json_lines(work / "demo_long" / "val_curve.jsonl")]


def rows(work: Path) -> list[tuple[str, str]]:
    """Every part that ran; a part whose output is missing or broken says so in its row."""
    out = []
    for name, part in (("model-step bench", _train_rows), ("loop bench", _loop_rows),
                       ("cobl infer", _infer_rows), ("long demo run", _curve_rows)):
        try:
            out += part(work)
        except FileNotFoundError:
            if name != "long demo run":
                out.append((name, "did not run (see the log above)"))
        except (KeyError, IndexError, ValueError) as err:
            out.append((name, f"unreadable output: {type(err).__name__}: {err}"))
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
