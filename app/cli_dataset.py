"""``cobl synth run|verify|publish|rerender|seed``: dataset jobs over shards (heavy imports in handlers)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.policy import DEFAULT_OBJECTS, DEFAULT_RESOLUTION, RENDER_ENGINES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="render N scenes with Ray into DIR/shards/{split}-{index:06d}.tar (resumable)"
    )
    p.add_argument(
        "--out", required=True, type=Path, help="dataset directory: new or empty (created), or this "
        "command's own earlier output (resumed)"
    )
    p.add_argument("--scenes", required=True, type=int, help="number of scenes N")
    p.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION, help="square image size in pixels")
    p.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel (default 16)")
    p.add_argument("--engine", default="CYCLES", help=f"one of {', '.join(RENDER_ENGINES)} (default CYCLES)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu or gpu: render on Cycles' GPU (OptiX, else CUDA); each worker then requests one GPU of "
        "Ray. Part of the generation config (GPU pixels differ slightly from CPU ones)",
    )
    p.add_argument("--seed", type=int, default=0, help="dataset seed; scene i uses scene_seed(SEED, i)")
    p.add_argument("--split", default="train=0.9,val=0.05,test=0.05", help="NAME=FRACTION,... summing to 1")
    p.add_argument("--shard-size", type=int, default=1000, help="scenes per shard (default 1000)")
    p.add_argument(
        "--min-objects",
        type=int,
        default=None,
        help=f"fewest objects per scene (default {DEFAULT_OBJECTS[0]})",
    )
    p.add_argument(
        "--max-objects",
        type=int,
        default=None,
        help=f"most objects per scene = layer slots per sample (default {DEFAULT_OBJECTS[1]}, the tiny "
        "model's K)",
    )
    p.add_argument(
        "--completion-fraction",
        type=float,
        default=None,
        help="fraction of scenes that must hold an object 25-75%% hidden (asks for amodal completion; "
        "sampler default 0)",
    )
    p.add_argument(
        "--sampler-config",
        type=Path,
        default=None,
        help="JSON object of SamplerConfig fields (options above override it)",
    )
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
        help="seconds with no live worker (none placed yet, or all lost) before the job stops (default 600)",
    )
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines (> 0)")
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

    p = sub.add_parser("seed", help="print the scene id and scene seed of dataset scene INDEX")
    p.add_argument("--dataset-seed", type=int, required=True)
    p.add_argument("--index", type=int, required=True)
    p.set_defaults(func=_seed)


def _sampler_overrides(args: argparse.Namespace) -> dict:
    from core.errors import UserError

    overrides: dict = {}
    if args.sampler_config is not None:
        try:
            overrides = json.loads(args.sampler_config.read_text())
        except (OSError, ValueError) as err:
            raise UserError(
                f"{args.sampler_config}: expected a JSON object of SamplerConfig fields ({err})"
            ) from None
        from core.config_check import check_fields
        from synth.scene.sampler import SamplerConfig

        check_fields(overrides, SamplerConfig, str(args.sampler_config))  # unknown keys, wrong types
    from app.flag_checks import default_object_range

    if args.min_objects is not None or "min_objects" not in overrides:
        overrides["min_objects"] = default_object_range(args.min_objects, args.max_objects)[0]
    if args.max_objects is not None or "max_objects" not in overrides:
        low = overrides["min_objects"] if args.min_objects is None else args.min_objects
        overrides["max_objects"] = default_object_range(low, args.max_objects)[1]
    if args.completion_fraction is not None:
        if not 0 <= args.completion_fraction <= 1:
            raise UserError(
                f"--completion-fraction: expected a fraction in [0, 1], got {args.completion_fraction}"
            )
        overrides["completion_fraction"] = args.completion_fraction
    return overrides


def _run(args: argparse.Namespace) -> int:
    from app.flag_checks import check_run_flags
    from core.errors import UserError
    from synth.dataset.generate import PLACEMENT_TIMEOUT_S, GenerationError, run_generation
    from synth.dataset.plan import make_config, parse_splits

    check_run_flags(args)  # sizes bounded above, seed >= 0, intervals > 0: before anything starts

    try:
        config = make_config(
            args.scenes,
            seed=args.seed,
            resolution=args.resolution,
            samples=args.samples,
            engine=args.engine,
            device=args.device,
            splits=parse_splits(args.split),
            shard_size=args.shard_size,
            sampler_overrides=_sampler_overrides(args),
        )
    except UserError as err:
        if err.option == "num_scenes":  # the config's name for the value of --scenes
            raise UserError(err.detail, option="scenes") from None
        raise
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
    return 0


def _rerender(args: argparse.Namespace) -> int:
    from core import schema
    from core.errors import UserError
    from core.groundtruth import GroundTruth
    from core.outdir import check_output_dir, mark_output
    from synth.dataset.manifest import SHARDS_DIR, Manifest
    from synth.dataset.plan import GenerationConfig, scene_id
    from synth.dataset.shards import iter_shard
    from synth.dataset.worker import render_sample
    from synth.render.blender.renderer import BlenderRenderer
    from synth.render.scene_dir import RenderedScene, write_scene_dir

    config = GenerationConfig.from_dict(Manifest.load(args.dir).config)
    check_output_dir(args.out, "synth rerender", overwrite=args.overwrite)
    if not 0 <= args.index < config.num_scenes:
        raise UserError(f"--index: {args.index} should be in [0, {config.num_scenes})")
    members = render_sample(BlenderRenderer(), config, args.index)
    n = len(GroundTruth.from_scene(json.loads(members[schema.SCENE])).objects)
    files = {k: v for k, v in members.items() if schema.layer_index(k) is None or schema.layer_index(k) < n}
    write_scene_dir(RenderedScene(scene_id(args.index), files), args.out)
    mark_output(args.out, "synth rerender")
    print(args.out)
    if not args.check:
        return 0
    plan = next(p for p in config.plan() if args.index in p.scenes)
    stored = dict(iter_shard(args.dir / SHARDS_DIR / plan.name))[scene_id(args.index)]
    differ = [m for m in members if members[m] != stored.get(m)]
    print(f"{scene_id(args.index)} vs {plan.name}: " + (f"differs in {differ}" if differ else "identical"))
    return 1 if set(differ) & {schema.SCENE, schema.IDS, schema.DEPTH} else 0


def _seed(args: argparse.Namespace) -> int:
    from app.flag_checks import check_range
    from synth.dataset.plan import scene_id, scene_seed

    check_range(args, "dataset_seed", 0, 2**63 - 1)
    check_range(args, "index", 0, 10**8 - 1)

    print(f"{scene_id(args.index)} {scene_seed(args.dataset_seed, args.index)}")
    return 0
