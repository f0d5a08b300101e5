"""Wall time and peak memory of `cobl infer` per sampler setting, each in a fresh process.

    python bench/bench_cli_infer.py --model RUN --image PHOTO [--depth DEPTH] \
        --setting 'authors=--preset authors' --setting 'x0=--sampling-steps 20 --guidance-mode x0'

A setting is NAME=FLAGS. Each runs `cobl infer` (``app.cli.main``, as the command does) in its own process,
so its peak is its own: CUDA max allocated on a GPU, max RSS on the CPU. The wall time includes loading the
model (as a user's single `cobl infer` does). Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child(argv: list[str]) -> None:
    import torch

    from app.cli import main

    start = time.perf_counter()
    code = main(argv)
    wall = time.perf_counter() - start
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
        kind = "cuda max allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        kind = "max RSS"
    print(json.dumps({"code": code, "wall_s": round(wall, 1), "peak_gib": round(peak, 2), "peak": kind}))


def measure(model: str, image: str, depth: str | None, flags: str, out: Path) -> dict:
    argv = ["infer", "--model", model, "--image", image, "--out", str(out), "--overwrite",
            *shlex.split(flags)]
    if depth:
        argv += ["--depth", depth]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(argv)], env=env, cwd=REPO,
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"code": proc.returncode, "error": proc.stderr.strip().splitlines()[-1:] or ["?"]}
    return json.loads(lines[-1])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.path.insert(0, str(REPO))
        _child(json.loads(sys.argv[2]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--depth", default=None)
    p.add_argument("--setting", action="append", required=True, help="NAME=FLAGS")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.setting:
            name, _, flags = setting.partition("=")
            result = measure(args.model, args.image, args.depth, flags, Path(tmp) / name)
            print(json.dumps({"setting": name, "flags": flags, **result}), flush=True)


if __name__ == "__main__":
    main()
