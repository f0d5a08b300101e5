"""``cobl synth run|verify|publish|rerender``: dataset jobs over shards (heavy imports in handlers)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.retired import retire
from app.synth_options import add_generation_options, generation_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="render N scenes with Ray into DIR/shards/{split}-{index:06d}.tar (resumable)"
    )
    p.add_argument(
        "--out", required=True, type=Path, help="dataset directory: new or empty (created), or this "
        "command's own earlier output (resumed)"
    )
    p.add_argument("--scenes", required=True, type=int, help="number of scenes N")
    add_generation_options(p)
    p.add_argument("--split", default="train=0.9,val=0.05,test=0.05", help="NAME=FRACTION,... summing to 1")
    p.add_argument("--shard-size", type=int, default=1000, help="scenes per shard (default 1000)")
    p.add_argument("--workers", type=int, default=1, help="Blender worker actors (default 1)")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (e.g. auto, or ray://host:10001); default: start a local Ray",
    )
    p.add_argument(
        "--worker-resource",
        default=None,
        help="custom Ray resource each worker needs (e.g. render, on the ray_cluster.yaml cluster)",
    )
    p.add_argument("--retries", type=int, default=3, help="retries per scene after a worker/render failure")
    p.add_argument(
        "--placement-timeout",
        type=float,
        default=None,
        help="seconds with no worker live or starting (none placed, or all lost) before the job stops "
        "(default 600)",
    )
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")
    p.set_defaults(func=_run)

    p = sub.add_parser("verify", help="re-check every shard of DIR against DIR/manifest.json")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=_verify)

    p = sub.add_parser("publish", help="write DIR/README.md (dataset card), DIR/stats.json and DIR/gallery/")
    p.add_argument("dir", type=Path)
    p.add_argument("--gallery-samples", type=int, default=12, help="scenes shown in the gallery (default 12)")
    p.add_argument("--name", default=None, help="dataset name in the card (default: the directory name)")
    p.add_argument("--license", default=None, help="license id for the card and croissant.json (cc-by-4.0)")
    p.add_argument("--creator", default=None, help="creator in card and croissant.json (cobl contributors)")
    p.add_argument("--url", default=None, help="where the dataset will be hosted (croissant.json url)")
    p.set_defaults(func=_publish)

    p = sub.add_parser("rerender", help="re-render one scene of dataset DIR alone into a scene directory")
    p.add_argument("dir", type=Path)
    p.add_argument("--index", type=int, required=True, help="dataset scene index (scene id s{index:08d})")
    p.add_argument(
        "--out", type=Path, required=True, help="scene directory to write: new or empty, or this command's "
        "own earlier output with --overwrite"
    )
    p.add_argument("--overwrite", action="store_true", help="replace this command's own earlier --out")
    p.add_argument(
        "--check",
        action="store_true",
        help="compare with the shard's copy: exit 1 unless scene.json, ids and depth are identical",
    )
    p.set_defaults(func=_rerender)

    p = sub.add_parser("seed", help="removed: --seed is the dataset seed everywhere (see `cobl synth scene`)")
    new = "`cobl synth scene --seed S --index I` (--seed is the dataset seed everywhere)"
    retire(p, "--dataset-seed", new)
    retire(p, "--index", new)
    p.set_defaults(func=_seed)


def _run(args: argparse.Namespace) -> int:
    from app.flag_checks import check_run_flags
    from synth.dataset.generate import PLACEMENT_TIMEOUT_S, GenerationError, run_generation
    from synth.dataset.plan import parse_splits

    check_run_flags(args)  # sizes bounded above, seed >= 0, intervals > 0: before anything starts
    config = generation_config(args, args.scenes, splits=parse_splits(args.split), shard_size=args.shard_size)
    _check_run_output(args, config)
    timeout = PLACEMENT_TIMEOUT_S if args.placement_timeout is None else args.placement_timeout
    if config.device == "gpu" and args.address is None:
        # A local Ray renders on this machine: without a GPU its workers would wait for one forever.
        from synth.render.blender.devices import select_device

        select_device("gpu")  # UserError (exit 2, one line) when Cycles finds none
    for line in empty_split_notices(config, args.split):  # every check passed: the job starts
        print(line, file=sys.stderr)
    try:
        summary = run_generation(
            args.out,
            config,
            workers=args.workers,
            address=args.address,
            retries=args.retries,
            progress_interval=args.progress_every,
            worker_resource=args.worker_resource,
            placement_timeout=timeout,
        )
    except GenerationError as err:
        print(f"cobl: generation failed: {err}", file=sys.stderr)
        return 1
    print(summary.line(), file=sys.stderr)
    return 0


def _check_run_output(args: argparse.Namespace, config) -> None:
    """Before any work: --out new/empty or a dataset of this command (resumed), --address answering."""
    from core.outdir import check_output_dir
    from core.ray_local import check_reachable
    from synth.dataset.manifest import MANIFEST

    check_output_dir(args.out, "synth run", resumable=True, own_record=MANIFEST)
    if args.address:
        check_reachable(args.address)


def empty_split_notices(config, split_text: str) -> list[str]:
    """A notice for each split the fractions leave without a scene (it gets no shard at all)."""
    from synth.dataset.plan import split_counts

    return [
        f"cobl synth run: notice: split {name!r} gets 0 of {config.num_scenes} scenes at --split "
        f"{split_text}: it has no shards (more --scenes, or a larger fraction)"
        for name, count in split_counts(config.num_scenes, config.splits).items()
        if count == 0
    ]


def _verify(args: argparse.Namespace) -> int:
    from synth.dataset.manifest import verify

    report = verify(args.dir)
    for name in report.missing:
        print(f"MISSING  {name}")
    for line in report.corrupt:
        print(f"CORRUPT  {line}")
    for name in report.unexpected:
        print(f"UNLISTED {name} (not in the manifest; ignored)")
    if report.incomplete:
        print("INCOMPLETE the manifest says the job has not finished (re-run the same `cobl synth run`)")
    status = "OK" if report.passed else "FAILED"
    counts = f"{len(report.ok)} shard(s) ok, {len(report.missing)} missing, {len(report.corrupt)} corrupt"
    print(f"{status}: {counts}")
    return 0 if report.passed else 1


def _publish(args: argparse.Namespace) -> int:
    from app.flag_checks import check_range
    from synth.dataset.datasheet import DEFAULT_CREATOR, DEFAULT_LICENSE

    check_range(args, "gallery_samples", 0, 10_000)
    from synth.dataset.publish import publish

    written = publish(
        args.dir,
        gallery_samples=args.gallery_samples,
        name=args.name,
        license=args.license or DEFAULT_LICENSE,
        creator=args.creator or DEFAULT_CREATOR,
        url=args.url,
    )
    for path in written:
        print(path)
    from synth.dataset.cost import cost_lines
    from synth.dataset.manifest import Manifest

    for line in cost_lines(Manifest.load(args.dir).cost()):
        print(line)
    return 0


def _rerender(args: argparse.Namespace) -> int:
    from core.outdir import check_output_dir, mark_output
    from synth.dataset.scenes import check_index, compare_with_shard, dataset_config, render_scene
    from synth.render.blender.renderer import BlenderRenderer
    from synth.render.scene_dir import write_scene_dir

    config = dataset_config(args.dir)
    check_index(config, args.index)
    check_output_dir(args.out, "synth rerender", overwrite=args.overwrite)
    with BlenderRenderer(device=config.device) as renderer:
        scene = render_scene(renderer, config, args.index)
    write_scene_dir(scene, args.out)
    mark_output(args.out, "synth rerender")
    print(args.out)
    if not args.check:
        return 0
    comparison = compare_with_shard(args.dir, config, scene)
    print(comparison.line())
    return 0 if comparison.same_scene else 1


def _seed(args: argparse.Namespace) -> int:
    from core.errors import UserError

    raise UserError(
        "`cobl synth seed` was removed: --seed is the dataset seed everywhere; "
        "`cobl synth scene --seed S --index I` renders scene I of dataset seed S (its scene.json records the "
        "scene seed)"
    )
