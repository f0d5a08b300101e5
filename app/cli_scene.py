"""``cobl synth scene``: render scene ``--index I`` of the dataset ``--seed S`` (or a few from there) into a
directory, optionally a contact sheet: exactly the members ``cobl synth run --seed S`` stores for scene I.

Every option is validated before anything is rendered or written; bad values raise UserError (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.synth_options import add_generation_options, generation_config
from core.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scene",
        help="render scene --index I of dataset --seed S: photo, background, layers, ids, depth, scene.json",
    )
    add_generation_options(p)
    p.add_argument("--index", type=int, default=0, help="the scene's index in the dataset")
    p.add_argument(
        "--out", type=Path, required=True, help="output directory: new or empty, or this command's own "
        "earlier output with --overwrite"
    )
    p.add_argument("--overwrite", action="store_true", help="replace this command's own earlier --out")
    p.add_argument("--threads", type=int, default=0, help="Cycles threads (0 = all cores)")
    p.add_argument(
        "--scenes",
        type=int,
        default=1,
        help="render scenes INDEX..INDEX+N-1 into OUT/<scene_id>/ (default 1: the scene into OUT)",
    )
    p.add_argument("--contact-sheet", type=Path, default=None, help="also write a contact-sheet PNG here")
    p.set_defaults(func=_scene)


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
    for name, low in (("index", 0), ("scenes", 1), ("threads", 0)):
        if (value := getattr(args, name)) < low:
            raise UserError(f"{value} should be >= {low}", option=name)
    from core.outdir import check_output_dir, check_output_file, mark_output

    config = generation_config(args, num_scenes=args.index + args.scenes)
    check_output_dir(args.out, "synth scene", overwrite=args.overwrite)  # before anything is rendered
    if args.contact_sheet is not None:
        check_output_file(
            args.contact_sheet, "synth scene", lambda p: p.suffix.lower() == ".png", overwrite=args.overwrite,
            option="contact_sheet",
        )
    _report_skipped_assets(config.sampler.get("assets_dir"))

    from synth.dataset.scenes import render_scene
    from synth.render.blender.renderer import BlenderRenderer
    from synth.render.scene_dir import write_scene_dir
    from synth.scene.sampler import SamplingError

    rendered = []
    # The renderer first: it selects the device, and a missing GPU stops here, before anything is written.
    with BlenderRenderer(threads=args.threads, device=config.device) as renderer:
        for index in range(args.index, args.index + args.scenes):
            try:
                scene = render_scene(renderer, config, index)
            except SamplingError as err:
                why = f"scene {index} of dataset seed {config.seed}: {err}"
                raise UserError(why, option="index") from None
            rendered.append(scene)
            gt = scene.ground_truth
            print(
                f"{scene.scene_id}: {len(gt.objects)} objects, order {' > '.join(gt.order)}, "
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
