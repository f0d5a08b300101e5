"""Dataset-job throughput, measured in one run; prints the ratios.

1. persistent workers vs a fresh Blender process per scene (128², same scenes): target >= 3x.
   persistent = one RenderWorker Ray actor (bpy imported once) rendering scene after scene;
   fresh      = `python -c "...render one scene..."` per scene (interpreter + bpy + asset start-up each time).
2. 2 workers vs 1 worker through the real job (run_generation, shards written): target >= 1.8x on 2 cores.
3. RSS of one long-lived renderer over many scenes (default 200 at 32²): it should stay flat.

    PYOPENGL_PLATFORM=egl .venv/bin/python bench/bench_generate.py [--scenes 6]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRESH = """
import sys
from synth.dataset.plan import GenerationConfig
from synth.dataset.worker import render_sample
from synth.render.blender.renderer import BlenderRenderer
config = GenerationConfig.from_dict(__import__("json").loads(sys.argv[1]))
render_sample(BlenderRenderer(threads=1), config, int(sys.argv[2]))
"""


def bench_persistent_vs_fresh(ray, config, scenes: int) -> tuple[float, float, float]:
    """(persistent scenes/s steady state, persistent incl. its one bpy start-up, fresh process scenes/s)."""
    import json

    from synth.dataset.worker import RenderWorker

    actor = ray.remote(RenderWorker).options(num_cpus=1).remote(config.to_dict(), 1)
    t0 = time.perf_counter()
    ray.get(actor.start.remote())  # the actor has imported bpy and built its renderer
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(scenes):
        ray.get(actor.render.remote(i))
    steady = time.perf_counter() - t0
    ray.kill(actor)

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cfg = json.dumps(config.to_dict())
    t0 = time.perf_counter()
    for i in range(scenes):
        subprocess.run(
            [sys.executable, "-c", FRESH, cfg, str(i)],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    fresh = time.perf_counter() - t0
    return scenes / steady, scenes / (startup + steady), scenes / fresh


def bench_workers(config_factory, scenes: int) -> tuple[float, float, float]:
    """Scenes/s of (1 worker, 1 Cycles thread), (2 workers, 1 thread each), (1 worker, all cores).

    The first two give Ray's scaling at a fixed per-worker cost; the third shows what one worker already
    gets from Cycles' own threads (the job's default for a single worker)."""
    from synth.dataset.generate import run_generation

    rates = []
    for workers, threads in ((1, 1), (2, 1), (1, 0)):
        with tempfile.TemporaryDirectory(prefix="cobl_bench_") as out:
            summary = run_generation(
                out, config_factory(scenes), workers=workers, log=lambda s: None, threads_per_worker=threads
            )
            rates.append(summary.scenes_rendered / summary.seconds)
    return rates[0], rates[1], rates[2]


def bench_rss(config, scenes: int) -> list[float]:
    """RSS after each scene of one RenderWorker (the actor's own code, run in this process)."""
    from synth.dataset.worker import RenderWorker

    worker = RenderWorker(config.to_dict(), threads=1)
    return [worker.render(i)["rss_mb"] for i in range(scenes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=6, help="scenes per timing (default 6)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--rss-scenes", type=int, default=200, help="0 skips the memory check")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    from synth.dataset.plan import make_config

    def config(n: int, res: int = args.resolution, samples: int = args.samples):
        return make_config(n, seed=1, resolution=res, samples=samples, splits={"train": 1.0}, shard_size=n)

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pers, pers_startup, fresh = bench_persistent_vs_fresh(ray, config(args.scenes), args.scenes)
        print(
            f"persistent worker {pers:.3f} scenes/s ({pers_startup:.3f} counting its bpy start-up) | fresh "
            f"process per scene {fresh:.3f} scenes/s | ratio {pers / fresh:.2f}x "
            f"({pers_startup / fresh:.2f}x with start-up) (target >= 3x) "
            f"[{args.resolution}², {args.scenes} scenes]",
            flush=True,
        )
        one, two, one_all_cores = bench_workers(config, 2 * args.scenes)
        print(
            f"1 worker {one:.3f} scenes/s | 2 workers {two:.3f} scenes/s (1 Cycles thread each) | ratio "
            f"{two / one:.2f}x (target >= 1.8x on {os.cpu_count()} cores)  [{2 * args.scenes} scenes, shards "
            f"written]\n1 worker on all cores {one_all_cores:.3f} scenes/s: 2 single-thread workers are "
            f"{two / one_all_cores:.2f}x that",
            flush=True,
        )
    finally:
        ray.shutdown()
    if args.rss_scenes:
        rss = bench_rss(config(args.rss_scenes, res=32, samples=2), args.rss_scenes)
        k = max(1, min(20, len(rss) // 4))
        early, late = sum(rss[k : 2 * k]) / k, sum(rss[-k:]) / k
        print(
            f"RSS over {len(rss)} scenes at 32²: after {2 * k} scenes {early:.0f} MiB, last {k} scenes "
            f"{late:.0f} MiB, growth {late - early:+.0f} MiB ({100 * (late - early) / early:+.1f}%), "
            f"max {max(rss):.0f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
