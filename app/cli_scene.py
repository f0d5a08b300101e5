"""``cobl synth scene``: sample and render one scene (or a few) into a directory, optionally a contact sheet.

Every option is validated before anything is rendered or written; bad values raise UserError (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import UserError
from core.policy import DEFAULT_OBJECTS, DEFAULT_RESOLUTION, RENDER_DEVICES, RENDER_ENGINES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scene", help="render one scene's photo, background, layers, ids, depth and scene.json"
    )
    p.add_argument("--seed", type=int, default=0, help="scene seed (with --scenes N: seeds SEED..SEED+N-1)")
    p.add_argument(
        "--resolution", type=int, default=DEFAULT_RESOLUTION, help="square image size in pixels"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output directory: new or empty, or this command's own "
        "earlier output with --overwrite"
    )
    p.add_argument("--overwrite", action="store_true", help="replace this command's own earlier --out")
    p.add_argument("--engine", default="CYCLES", help=f"one of {', '.join(RENDER_ENGINES)} (default CYCLES)")
    p.add_argument("--samples", type=int, default=16, help="samples per pixel (default 16)")
    p.add_argument(
        "--denoise", action="store_true", help="run the denoiser (layers then recomposite less exactly)"
    )
    p.add_argument(
        "--objects", default=None, help="object count range MIN-MAX (default: "
        f"{DEFAULT_OBJECTS[0]}-{DEFAULT_OBJECTS[1]}, the tiny model's K as the most)"
    )
    p.add_argument(
        "--min-visible", type=float, default=None, help="each object's visible fraction at least F"
    )
    p.add_argument(
        "--assets-dir", type=Path, default=None, help="mesh files to mix in (corrupt ones are skipped)"
    )
    p.add_argument("--hdri-dir", type=Path, default=None, help="HDRI environment maps to sample worlds from")
    p.add_argument("--texture-dir", type=Path, default=None, help="image textures to sample materials from")
    p.add_argument("--threads", type=int, default=0, help="Cycles threads (0 = all cores)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu or gpu (Cycles on OptiX, else CUDA; no GPU: exit 2, nothing written; default cpu)",
    )
    p.add_argument(
        "--scenes", type=int, default=1, help="render N scenes into OUT/<scene_id>/ (default 1: OUT)"
    )
    p.add_argument("--contact-sheet", type=Path, default=None, help="also write a contact-sheet PNG here")
    p.set_defaults(func=_scene)


def parse_objects(text: str) -> tuple[int, int]:
    """``"MIN-MAX"`` (or a single count) -> (min, max) with 1 <= min <= max <= 99."""
    parts = text.split("-")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (None, None)
    except ValueError:
        lo = hi = None
    if lo is None or not 1 <= lo <= hi <= 99:
        raise UserError(f"--objects: {text!r} should be MIN-MAX with 1 <= MIN <= MAX <= 99")
    return lo, hi


def _dir_option(name: str, path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.is_dir():
        raise UserError(f"{name}: {path} is not a directory")
    return str(path)


def sampler_config(args: argparse.Namespace):
    """The SamplerConfig the options ask for (validated)."""
    from app.flag_checks import check_render_sizes
    from synth.scene.sampler import SamplerConfig

    check_render_sizes(args)  # upper bounds too: --resolution 100000 fails at once
    if args.resolution < 8:
        raise UserError(f"--resolution: {args.resolution} should be >= 8")
    if args.samples < 1:
        raise UserError(f"--samples: {args.samples} should be >= 1")
    if args.engine not in RENDER_ENGINES:
        raise UserError(f"--engine: {args.engine!r} should be one of {', '.join(RENDER_ENGINES)}")
    if args.scenes < 1:
        raise UserError(f"--scenes: {args.scenes} should be >= 1")
    if args.seed < 0:
        raise UserError(f"--seed: {args.seed} should be >= 0")
    if args.threads < 0:
        raise UserError(f"--threads: {args.threads} should be >= 0")
    if args.device not in RENDER_DEVICES:
        raise UserError(f"--device: {args.device!r} should be one of {', '.join(RENDER_DEVICES)}")
    kwargs = dict(
        width=args.resolution,
        height=args.resolution,
        engine=args.engine,
        samples=args.samples,
        denoise=bool(args.denoise),
        check_res=min(64, args.resolution),
        assets_dir=_dir_option("--assets-dir", args.assets_dir),
        hdri_dir=_dir_option("--hdri-dir", args.hdri_dir),
        texture_dir=_dir_option("--texture-dir", args.texture_dir),
    )
    kwargs["min_objects"], kwargs["max_objects"] = (
        parse_objects(args.objects) if args.objects is not None else DEFAULT_OBJECTS
    )
    if args.min_visible is not None:
        if not 0.0 <= args.min_visible <= 1.0:
            raise UserError(f"--min-visible: {args.min_visible} should be a fraction in [0, 1]")
        kwargs["min_visible"] = args.min_visible
    try:
        return SamplerConfig(**kwargs)
    except ValueError as err:
        raise UserError(f"sampler options: {err}") from None


def _report_skipped_assets(assets_dir: str | None) -> None:
    """One line per unreadable mesh file and a count (the sampler then uses only the readable ones)."""
    if not assets_dir:
        return
    from assets.meshes import scan_assets_dir

    refs, errors = scan_assets_dir(assets_dir)
    for line in errors:
        print(f"cobl: {line}", file=sys.stderr)
    print(f"assets: {len(refs)} mesh(es) usable, {len(errors)} skipped in {assets_dir}", file=sys.stderr)


def _scene(args: argparse.Namespace) -> int:
    from core.outdir import check_output_dir, check_output_file, mark_output

    config = sampler_config(args)
    check_output_dir(args.out, "synth scene", overwrite=args.overwrite)  # before anything is rendered
    if args.contact_sheet is not None:
        check_output_file(
            args.contact_sheet, "synth scene", lambda p: p.suffix.lower() == ".png", overwrite=args.overwrite,
            option="contact_sheet",
        )
    _report_skipped_assets(config.assets_dir)

    from synth.render.blender.renderer import BlenderRenderer
    from synth.render.scene_dir import write_scene_dir
    from synth.scene.sampler import SamplingError, sample_scene

    rendered = []
    # The renderer first: it selects the device, and a missing GPU stops here, before anything is written.
    with BlenderRenderer(threads=args.threads, device=args.device) as renderer:
        seeds = [args.seed + i for i in range(args.scenes)]
        try:
            specs = [sample_scene(seed, config) for seed in seeds]
        except SamplingError as err:
            raise UserError(f"scene sampling (seed {args.seed}): {err}") from None
        specs = [spec.with_render(threads=args.threads) for spec in specs]
        for spec in specs:
            scene = renderer.render(spec)
            rendered.append(scene)
            gt = scene.ground_truth
            print(
                f"{spec.scene_id}: {len(spec.objects)} objects, order {' > '.join(gt.order)}, "
                f"recomposition {gt.recomposition_psnr:.1f} dB, {renderer.last_timings['total']:.2f} s"
            )
    if len(rendered) == 1:
        write_scene_dir(rendered[0], args.out)
    else:
        from core.atomic import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            for scene in rendered:
                write_scene_dir(scene, tmp / scene.scene_id)
    mark_output(args.out, "synth scene")  # so a rerun may replace it (--overwrite), and only it
    print(f"wrote {args.out}")
    if args.contact_sheet is not None:
        from synth.render.contact_sheet import write_contact_sheet

        write_contact_sheet(rendered, args.contact_sheet)
        print(f"wrote {args.contact_sheet}")
    return 0
