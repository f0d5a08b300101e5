"""Guided vs unguided sampling time at the tiny config (target: guided <= 1.5x unguided).

Run: ``.venv/bin/python bench/bench_guidance.py [--steps 20] [--repeats 3] [--threads 1]``. Prints the
best-of-N time per photo for each setting and its ratio to unguided sampling, all measured in this run, on a
freshly initialised tiny model (timing does not depend on the weights). The settings are interleaved and the
ratio uses process CPU time, so load from other processes on a shared machine does not skew it; wall time is
printed beside it.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import DDIMScheduler

from cobl.configs import tiny_config
from cobl.factory import build
from infer.pipeline import CObLPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-objects", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = tiny_config(num_objects=args.num_objects, resolution=args.resolution)
    model, codec, scheduler = build(config)
    pipe = CObLPipeline.from_parts(model.eval(), DDIMScheduler.from_config(scheduler.config), codec)
    pipe.set_progress_bar_config(disable=True)
    photo = torch.rand(1, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0))

    settings = {
        "unguided": dict(guidance_scale=0.0),
        "guided (default: both)": dict(guidance_scale=1.0),
        "guided + reorder/5": dict(guidance_scale=1.0, reorder_every=5),
        "guided (x0)": dict(guidance_scale=1.0, guidance_mode="x0"),
        "guided (latents)": dict(guidance_scale=1.0, guidance_mode="latents"),
        "guided (both, throughout)": dict(
            guidance_scale=1.0, guidance_mode="both", denoiser_gradient_until=1.0
        ),
    }
    pipe(photo, num_inference_steps=2, guidance_scale=1.0)  # warm-up
    cpu = dict.fromkeys(settings, float("inf"))
    wall = dict.fromkeys(settings, float("inf"))
    for _ in range(args.repeats):
        for name, kwargs in settings.items():
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            pipe(photo, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0), **kwargs)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
            wall[name] = min(wall[name], time.perf_counter() - start_wall)

    print(
        f"config tiny: K={args.num_objects}, {args.resolution}px, {args.steps} DDIM steps, "
        f"{args.threads} thread(s), best of {args.repeats}"
    )
    base = cpu["unguided"]
    for name in settings:
        print(
            f"  {name:<26} CPU {cpu[name]:7.3f} s/photo  wall {wall[name]:7.3f} s/photo  "
            f"ratio {cpu[name] / base:5.2f}x"
        )
    ratio = cpu["guided (default: both)"] / base
    verdict = "meets" if ratio <= 1.5 else "misses"
    print(f"guided/unguided ratio (default guidance): {ratio:.2f}x ({verdict} the <= 1.5x target)")


if __name__ == "__main__":
    main()
