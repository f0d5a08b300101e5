"""The options that decide a dataset's bytes, shared by ``cobl synth scene`` and ``cobl synth run``.

One meaning per flag: ``--seed`` is the dataset seed, and scene ``--index I`` of a dataset is sampled from
``scene_seed(SEED, I)``. Both commands build their GenerationConfig here, through the one builder
(``synth.dataset.plan.make_config``), so ``cobl synth scene --seed S --index I`` writes exactly the members
``cobl synth run --seed S`` stores for scene I (same options).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.retired import retire
from core.errors import UserError
from core.policy import DEFAULT_RESOLUTION, RENDER_DEVICES, RENDER_ENGINES

DEFAULT_SAMPLES = 16


def add_generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seed", type=int, default=0, help="dataset seed: scene I is sampled from scene_seed(SEED, I)"
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=DEFAULT_RESOLUTION,
        help="square image size in pixels",
    )
    p.add_argument(
        "--samples", type=int, default=DEFAULT_SAMPLES, help="Cycles samples per pixel"
    )
    p.add_argument("--engine", default="CYCLES", help=f"one of {', '.join(RENDER_ENGINES)} (default CYCLES)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu or gpu: Cycles on a GPU (OptiX, else CUDA; none: exit 2, nothing written). Part of the "
        "generation config: GPU pixels differ slightly from CPU ones (default cpu)",
    )
    p.add_argument(
        "--denoise", action="store_true", help="run the denoiser (layers recomposite less exactly)"
    )
    p.add_argument("--min-objects", type=int, default=None, help="fewest objects per scene (sampler default)")
    p.add_argument(
        "--max-objects", type=int, default=None, help="most objects per scene = layer slots per sample"
    )
    retire(p, "--objects", "--min-objects MIN --max-objects MAX")
    p.add_argument(
        "--min-visible", type=float, default=None, help="each object's visible fraction at least F"
    )
    p.add_argument(
        "--completion-fraction",
        type=float,
        default=None,
        help="fraction of scenes that must hold an object 25-75%% hidden (sampler default 0)",
    )
    p.add_argument(
        "--assets-dir", type=Path, default=None, help="mesh files to mix in (corrupt ones skipped)"
    )
    p.add_argument("--hdri-dir", type=Path, default=None, help="HDRI environment maps to sample worlds from")
    p.add_argument("--texture-dir", type=Path, default=None, help="image textures to sample materials from")
    p.add_argument(
        "--sampler-config",
        type=Path,
        default=None,
        help="JSON object of SamplerConfig fields (the options above override it)",
    )


def sampler_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The SamplerConfig fields the options set (the JSON file's, then the flags')."""
    overrides: dict[str, Any] = {}
    if args.sampler_config is not None:
        try:
            overrides = json.loads(args.sampler_config.read_text())
        except (OSError, ValueError) as err:
            raise UserError(
                f"{args.sampler_config}: expected a JSON object of SamplerConfig fields ({err})"
            ) from None
        if not isinstance(overrides, dict):
            raise UserError(f"{args.sampler_config}: expected a JSON object of SamplerConfig fields")
        from core.config_check import check_fields
        from synth.scene.sampler import SamplerConfig

        check_fields(overrides, SamplerConfig, str(args.sampler_config))  # unknown keys, wrong types
    from app.flag_checks import default_object_range

    if args.min_objects is not None or "min_objects" not in overrides:
        overrides["min_objects"] = default_object_range(args.min_objects, args.max_objects)[0]
    if args.max_objects is not None or "max_objects" not in overrides:
        low = overrides["min_objects"] if args.min_objects is None else args.min_objects
        overrides["max_objects"] = default_object_range(low, args.max_objects)[1]
    for name in ("min_visible", "completion_fraction"):
        value = getattr(args, name)
        if value is not None:
            if not 0 <= value <= 1:
                raise UserError(f"expected a fraction in [0, 1], got {value}", option=name)
            overrides[name] = value
    for name in ("assets_dir", "hdri_dir", "texture_dir"):
        path = getattr(args, name)
        if path is not None:
            if not path.is_dir():
                raise UserError(f"{path} is not a directory", option=name)
            overrides[name] = str(path)
    if args.denoise:
        overrides["denoise"] = True
    return overrides


def generation_config(args: argparse.Namespace, num_scenes: int, **plan: Any):
    """The GenerationConfig of the options (``plan``: ``splits``, ``shard_size`` of ``cobl synth run``)."""
    from app.flag_checks import check_render_sizes
    from synth.dataset.plan import make_config

    check_render_sizes(args)  # upper bounds too: --resolution 100000 fails at once
    if args.seed < 0:
        raise UserError(f"{args.seed} should be >= 0", option="seed")
    if args.device not in RENDER_DEVICES:
        raise UserError(f"{args.device!r} should be one of {', '.join(RENDER_DEVICES)}", option="device")
    try:
        return make_config(
            num_scenes,
            seed=args.seed,
            resolution=args.resolution,
            samples=args.samples,
            engine=args.engine,
            device=args.device,
            sampler_overrides=sampler_overrides(args),
            **plan,
        )
    except UserError as err:
        if err.option == "num_scenes":  # the config's name for the value of --scenes
            raise UserError(err.detail, option="scenes") from None
        raise
