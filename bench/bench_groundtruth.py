"""Cost of the ground truth relative to the photo alone, and memory of a long-lived renderer.

    python bench/bench_groundtruth.py [--res 256] [--samples 16] [--objects 6] [--scenes 3] [--rss-scenes 30]

Prints, per scene and on average, T(all ground truth: photo + background + layers + ids/depth + files) over
T(photo alone: build + one full-frame render), and the process RSS after every few scenes at 64^2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from synth.sampler import SamplerConfig, sample_scene


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--rss-scenes", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    from synth.blender.renderer import BlenderRenderer

    renderer = BlenderRenderer(threads=args.threads)
    config = SamplerConfig(
        width=args.res,
        height=args.res,
        samples=args.samples,
        min_objects=args.objects,
        max_objects=args.objects,
    )
    renderer.render(sample_scene(999, config))  # warm-up: kernels, caches
    ratios, psnrs = [], []
    for seed in range(args.scenes):
        spec = sample_scene(seed, config)
        t0 = time.perf_counter()
        scene = renderer.render(spec)
        total = time.perf_counter() - t0
        t = renderer.last_timings
        photo_alone = t["build"] + t["photo"]
        ratios.append(total / photo_alone)
        psnrs.append(scene.ground_truth["recomposition_psnr"])
        print(
            f"scene {seed}: {len(spec.objects)} objects, photo alone {photo_alone:.2f} s, all ground truth "
            f"{total:.2f} s (bg {t['background']:.2f}, layers {t['layers']:.2f} in "
            f"{scene.ground_truth['render']['layer_renders']} renders, assemble {t['assemble']:.2f}), "
            f"ratio {ratios[-1]:.2f}, recomposition {psnrs[-1]:.1f} dB"
        )
    print(
        f"T(all ground truth)/T(composite alone) at {args.res}^2, {args.objects} objects, {args.samples}spp: "
        f"mean {statistics.mean(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); "
        f"recomposition PSNR mean {statistics.mean(psnrs):.1f} dB"
    )

    if args.rss_scenes:
        small = SamplerConfig(width=64, height=64, samples=4, check_res=64)
        start = rss_mb()
        readings = []
        for seed in range(args.rss_scenes):
            renderer.render(sample_scene(1000 + seed, small))
            if (seed + 1) % 10 == 0:
                readings.append(rss_mb())
                print(f"RSS after {seed + 1} scenes at 64^2: {readings[-1]:.0f} MiB")
        print(
            f"RSS: {start:.0f} MiB before, {readings[-1]:.0f} MiB after {args.rss_scenes} scenes "
            f"(growth {readings[-1] - start:+.0f} MiB)"
        )
    renderer.close()


if __name__ == "__main__":
    main()
