"""Render quality per second: photo noise against a high-sample reference, and time per scene (all ground
truth), for a grid of samples per pixel with and without Cycles' OpenImageDenoise.

    python bench/bench_quality.py [--resolution 128] [--scenes 2] [--samples 8,16,32,64] [--reference 256]

Noise: PSNR of the 8-bit photo against the same scene rendered at ``--reference`` spp without the denoiser
(that reference is itself noisy, so PSNRs near its own noise level saturate). Time: ``renderer.render``
(photo, layers, clean background, ids, depth, files). Recomposition: the scene's recorded PSNR.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from core.images import psnr
from synth.scene.sampler import SamplerConfig, sample_scene


def photo_only(renderer, spec) -> np.ndarray:
    """The 8-bit photo alone (the reference needs nothing else)."""
    from synth.render.blender.renderer import _camera_visible
    from synth.render.blender.scene_build import build_scene, clear_scene
    from synth.render.groundtruth import srgb_encode

    meshes = [renderer.mesh_provider(o.asset) for o in spec.objects]
    clear_scene(renderer.scene)
    renderer._configure(spec.render)
    built = build_scene(spec, meshes, renderer.scene)
    _camera_visible(built, table=True, objects=set(range(len(built.objects))))
    return srgb_encode(renderer._render(None, transparent=False)["rgba"][..., :3])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--samples", default="8,16,32,64")
    parser.add_argument("--reference", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    from core import schema
    from synth.render.blender.renderer import BlenderRenderer

    config = SamplerConfig(
        width=args.resolution,
        height=args.resolution,
        min_objects=args.objects,
        max_objects=args.objects,
        check_res=min(64, args.resolution),
    )
    grid = [(int(s), d) for s in args.samples.split(",") for d in (False, True)]
    rows: dict[tuple[int, bool], list[tuple[float, float, float]]] = {g: [] for g in grid}
    with BlenderRenderer(threads=args.threads) as renderer:
        renderer.render(sample_scene(999, config).with_render(samples=4))  # warm-up
        for seed in range(args.scenes):
            spec = sample_scene(seed, config)
            t = time.perf_counter()
            reference = photo_only(renderer, spec.with_render(samples=args.reference, denoise=False))
            ref_s = time.perf_counter() - t
            print(f"scene {seed}: reference {args.reference} spp photo {ref_s:.1f} s", flush=True)
            for samples, denoise in grid:
                scene = renderer.render(spec.with_render(samples=samples, denoise=denoise))
                seconds = renderer.last_timings["total"]
                noise = psnr(scene.image(schema.RGB) / 255.0, reference / 255.0)
                rows[(samples, denoise)].append((noise, seconds, scene.ground_truth.recomposition_psnr))
                print(
                    f"  {samples:3d} spp denoise={denoise!s:5}: photo PSNR {noise:.2f} dB, {seconds:.2f} s, "
                    f"recomposition {scene.ground_truth.recomposition_psnr:.1f} dB",
                    flush=True,
                )
    print(f"\n| spp | denoiser | photo PSNR vs {args.reference} spp (dB) | s / scene | recomposition (dB) |")
    print("|---|---|---|---|---|")
    for (samples, denoise), values in rows.items():
        noise, seconds, recomp = (statistics.mean(v[j] for v in values) for j in range(3))
        print(f"| {samples} | {'OIDN' if denoise else '-'} | {noise:.2f} | {seconds:.2f} | {recomp:.1f} |")


if __name__ == "__main__":
    main()
