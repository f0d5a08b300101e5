"""``cobl infer`` (photo or folder of photos -> layer files) and ``cobl eval`` (shards -> metrics.json).

Inputs are checked before the model runs (every photo opens, the model folder loads), so a bad input stops
the command with one line and exit code 2 and nothing is written. Each photo's results appear atomically in
``OUT/<photo stem>/``; a rerun skips photos whose folder exists (``--overwrite`` redoes them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.policy import DEPTH_SOURCES, MAX_ORDER_SEARCH_SLOTS, MIN_OBJECT_AREA
from infer.settings import (
    DEFAULT_SAMPLING_STEPS,
    MIN_VISIBLE,
    MODES,
    PRESETS,
    SAMPLERS,
    SCHEDULES,
    STEP_KINDS,
    GuidanceConfig,
    guidance_options,
)

# The sampling options a preset sets itself (argparse dests).
PRESET_SETS = ("sampling_steps", "sampler", "guidance_scale", "guidance_schedule", "guidance_mode",
               "guidance_start", "denoiser_gradient_until", "reorder_every", "prune_every", "prior_weight",
               "guidance_step", "condition_scale")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    defaults = GuidanceConfig()  # every default below is the pipeline's own (infer.settings)
    p.add_argument(
        "--model",
        required=True,
        help="a saved CObL pipeline (model_index.json, what `cobl train` writes to RUN/final), or a run "
        "folder RUN (meaning RUN/final)",
    )
    p.add_argument(
        "--sampling-steps",
        type=int,
        default=DEFAULT_SAMPLING_STEPS,
        help=f"sampler steps (default {DEFAULT_SAMPLING_STEPS})",
    )
    p.add_argument("--sampler", choices=SAMPLERS, default=SAMPLERS[0], help="DDIM or DPM-Solver++")
    p.add_argument(
        "--guidance-scale", type=float, default=defaults.scale, help="composite guidance strength, 0 = off"
    )
    p.add_argument(
        "--guidance-schedule",
        choices=SCHEDULES,
        default=defaults.schedule,
        help=f"guidance weight over the sampling progress (linear: {defaults.start_weight} -> 1)",
    )
    p.add_argument(
        "--guidance-mode",
        choices=MODES,
        default=defaults.mode,
        help="x0: gradient through the decoder only (cheap); latents: through the denoiser too (~2.5x the "
        f"sampling time); both (default {defaults.mode}): the two, the denoiser one early only "
        "(--denoiser-gradient-until)",
    )
    p.add_argument(
        "--denoiser-gradient-until",
        type=float,
        default=defaults.denoiser_until,
        help="mode both: differentiate through the denoiser up to this fraction of the sampling (cost)",
    )
    p.add_argument(
        "--guidance-start",
        type=float,
        default=defaults.start,
        help="no guidance before this fraction of the sampling (saves its cost)",
    )
    p.add_argument(
        "--reorder-every",
        type=int,
        default=defaults.reorder_every,
        help=f"search the best object slot order every N steps (0 = never; up to {MAX_ORDER_SEARCH_SLOTS} "
        "occupied slots)",
    )
    p.add_argument(
        "--prune-every",
        type=int,
        default=defaults.prune_every,
        help="after the order search, reset empty or fully hidden object slots to the empty layer every N "
        "steps (0 = never)",
    )
    p.add_argument(
        "--prior-weight",
        type=float,
        default=defaults.prior_weight,
        help="pull each clean prediction this fraction toward the plain frozen UNet's (the prior of whole "
        f"objects; 0 = off, default {defaults.prior_weight})",
    )
    p.add_argument(
        "--guidance-step",
        choices=STEP_KINDS,
        default=defaults.step,
        help="length of a guidance step: residual (scale x the recomposition residual's RMS), noise (scale x "
        "the noise level), unit_norm (scale / the gradient's L2 norm, as the authors' code)",
    )
    p.add_argument(
        "--condition-scale",
        type=float,
        default=defaults.condition_scale,
        help="classifier-free guidance over the photo and depth (1 = off; only for models trained with "
        "condition dropout, e.g. the sd recipe)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="a named sampler: 'authors' = 20 DDIM steps, classifier-free guidance 1.75, one unit-norm "
        "guidance step per step through the denoiser, order search then empty/hidden-slot removal every 5 "
        "steps, a weak prior pull; the parts a model cannot use are turned off with a note (it sets the "
        "sampling options above itself, so they must stay at their defaults beside it; docs/architecture.md)",
    )
    p.add_argument(
        "--min-area",
        type=float,
        default=MIN_OBJECT_AREA,
        help=f"a slot is an object when its alpha mass exceeds this fraction of the pixels "
        f"(default {MIN_OBJECT_AREA})",
    )
    p.add_argument(
        "--min-visible",
        type=float,
        default=MIN_VISIBLE,
        help=f"... and more than this fraction of it is visible ({MIN_VISIBLE})",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    # what --preset sets itself, with the parser's own defaults (a changed one beside --preset is refused)
    p.set_defaults(preset_sets={name: p.get_default(name) for name in PRESET_SETS})


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("infer", help="decompose photos into object layers with a trained CObL model")
    _add_sampling_options(p)
    p.add_argument("--image", required=True, help="a photo, or a folder of photos")
    p.add_argument(
        "--depth",
        default=None,
        help="depth map(s) for a depth-conditioned model: a file for one photo, or a folder holding "
        "<photo stem>.npy|.png per photo (.npy: metres, 0 = unknown; image: relative inverse depth, "
        "brighter = nearer, e.g. from Depth Anything)",
    )
    p.add_argument(
        "--depth-model",
        default=None,
        metavar="DIR",
        help="estimate each photo's depth with a transformers depth-estimation model saved in DIR (DPT, "
        "Depth Anything, ...; save_pretrained with its image processor) instead of --depth",
    )
    p.add_argument(
        "--out", default="cobl_layers", help="output folder (one subfolder per photo): new or empty, or this "
        "command's own; a result made from the same model, photo, depth and settings is kept, any other "
        "is recomputed"
    )
    p.add_argument("--overwrite", action="store_true", help="recompute every photo, kept results too")
    p.add_argument(
        "--export",
        default=None,
        metavar="FORMATS",
        help="also write a layered file per photo for image editors: psd, ora or psd,ora (background at "
        "the bottom, objects above in occlusion order; made from the PNGs, also for photos already done)",
    )
    p.set_defaults(func=run_infer)

    e = subparsers.add_parser(
        "eval", help="score a model against ground-truth layers (scene shards or TABLETOP .h5 scenes)"
    )
    _add_sampling_options(e)
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="shard pattern, e.g. 'DIR/shards/test-*.tar'")
    source.add_argument(
        "--tabletop",
        default=None,
        metavar="DIR",
        help="instead of --data: a folder of the CObL authors' real TABLETOP scenes (.h5 files with scene, "
        "background, layers, masks; docs/inference.md)",
    )
    e.add_argument("--limit", type=int, default=None, help="evaluate at most N scenes")
    e.add_argument(
        "--out", default="metrics.json", help="metrics JSON to write (an earlier `cobl eval` result there is "
        "replaced only with --overwrite)"
    )
    e.add_argument("--overwrite", action="store_true", help="replace an earlier `cobl eval` --out")
    e.add_argument("--no-unguided", action="store_true", help="skip the unguided-sampler baseline")
    e.add_argument(
        "--depth-source",
        choices=("model", *DEPTH_SOURCES),
        default="model",
        help="depth given to a depth-conditioned model: the kind it was trained on (model, the default), "
        "the renderer's exact depth (rendered: an oracle input) or its simulated monocular estimate",
    )
    e.add_argument(
        "--depth-model",
        default=None,
        metavar="DIR",
        help="run this transformers depth-estimation model on each photo instead of the shard's depth",
    )
    e.add_argument(
        "--selection-split",
        default=None,
        help="the split the model and its settings were chosen on, recorded in the metrics (e.g. val)",
    )
    e.set_defaults(func=run_eval)


def _check_options(args: argparse.Namespace) -> None:
    if not 1 <= args.sampling_steps <= 10_000:
        raise UserError(f"--sampling-steps: expected an integer in [1, 10000], got {args.sampling_steps}")
    for name in ("guidance_scale", "condition_scale"):
        if not getattr(args, name) >= 0:
            raise UserError(f"--{name.replace('_', '-')}: expected a number >= 0, got {getattr(args, name)}")
    for name in ("reorder_every", "prune_every"):
        value = getattr(args, name)
        if value < 0:
            raise UserError(f"--{name.replace('_', '-')}: expected an integer >= 0, got {value}")
    for name in ("min_area", "min_visible", "guidance_start", "denoiser_gradient_until", "prior_weight"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise UserError(f"--{name.replace('_', '-')}: expected a fraction in [0, 1], got {value}")
    if getattr(args, "limit", None) is not None and args.limit < 1:
        raise UserError(f"--limit: expected a positive integer, got {args.limit}")
    replaced = _replaced_by_preset(args)
    if replaced:
        raise UserError(
            f"--preset {args.preset} sets the sampler itself, so {', '.join(replaced)} would be ignored: "
            "drop them, or drop --preset and give every sampling option"
        )


def _replaced_by_preset(args: argparse.Namespace) -> list[str]:
    """Sampling options given a non-default value beside ``--preset``, which sets them itself."""
    if args.preset is None:
        return []
    return [f"--{k.replace('_', '-')}" for k, v in args.preset_sets.items() if getattr(args, k) != v]


def _load(args: argparse.Namespace) -> Any:
    import torch
    from diffusers.utils import logging as diffusers_logging

    from infer.pipeline import load_pipeline

    diffusers_logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(args.model, device=device)
    pipe.use_sampler(args.sampler)
    sampling = _sampling(args)  # settings the model cannot honour: one line before any work
    _, _, notes = pipe.guidance_settings(args.preset, args.min_area, **guidance_options(**sampling))
    for note in notes:
        print(f"note: {note}")
    return pipe


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "num_inference_steps": args.sampling_steps,
        "guidance_scale": args.guidance_scale,
        "guidance_schedule": args.guidance_schedule,
        "guidance_mode": args.guidance_mode,
        "guidance_start": args.guidance_start,
        "denoiser_gradient_until": args.denoiser_gradient_until,
        "reorder_every": args.reorder_every,
        "prune_every": args.prune_every,
        "prior_weight": args.prior_weight,
        "guidance_step": args.guidance_step,
        "condition_scale": args.condition_scale,
        "preset": args.preset,
        "min_area": args.min_area,
        "min_visible": args.min_visible,
    }


def run_infer(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from cobl.depth import load_depth_file
    from core import schema
    from core.images import psnr
    from core.layers import composite
    from core.outdir import check_output_dir, mark_output
    from infer import io
    from infer.layered import export_folders, parse_formats
    from infer.pipeline import decompose
    from infer.result_key import result_key

    _check_options(args)
    export_formats = parse_formats(args.export)
    photos = io.list_photos(args.image)
    for path in photos:  # every input must open before anything runs
        io.check_photo(path)
    out_root = Path(args.out)
    check_output_dir(out_root, "infer", resumable=True)  # new/empty or its own; writable: before any work
    if args.depth is not None and args.depth_model is not None:
        raise UserError("--depth-model: give either --depth or --depth-model, not both")
    pipe = _load(args)
    _check_depth_use(args, pipe)
    depths = _depth_files(args.depth, photos, pipe.resolution)
    estimator = _estimator(args) if pipe.uses_depth else None
    sampling = _sampling(args)
    settings = {**sampling, "sampler": args.sampler, "seed": args.seed}
    todo, kept = _results_to_compute(args, pipe, photos, depths, estimator, settings)
    if todo:
        out_root.mkdir(parents=True, exist_ok=True)
        mark_output(out_root, "infer")
    bar = tqdm(todo, desc="infer", unit="photo", disable=len(todo) < 2)
    for path, name, inputs in bar:
        photo = io.load_photo(path)
        depth = None
        if depths is not None:
            depth = io.resize_to(load_depth_file(depths[path])[None], *photo.shape[-2:])
        elif estimator is not None:
            depth = estimator(photo)[None]
        start = time.perf_counter()
        result = decompose(pipe, photo, depth, seed=args.seed, **sampling)
        seconds = time.perf_counter() - start
        info = {
            "photo": str(path),
            "depth": None if depths is None else str(depths[path]),
            "depth_model": None if estimator is None else estimator.name,
            "size": [int(photo.shape[-2]), int(photo.shape[-1])],
            "model": str(args.model),
            "model_resolution": pipe.resolution,
            "settings": settings,
            "num_objects": len(result.slots),
            "layers": [
                {"file": schema.layer_name(i), "slot": s, "area": a, "visible_fraction": v}
                for i, (s, a, v) in enumerate(
                    zip(result.slots, result.areas, result.visible_fractions, strict=True)
                )
            ],
            "background": schema.BACKGROUND,
            "recomposition": io.RECOMPOSITION,
            "contact_sheet": io.CONTACT_SHEET,
            "recomposition_psnr": psnr(composite(result.layers, result.background), photo),
            "seconds": round(seconds, 3),
            "result_key": result_key(inputs),  # a rerun keeps this folder only for the same inputs
            "result_inputs": inputs,
        }
        io.write_result(out_root / name, photo, result.layers, result.background, info)
        bar.write(f"cobl infer: wrote {out_root / name}/ ({len(result.slots)} objects, {seconds:.1f} s)")
    note = f", {kept} kept (same model, photo, depth and settings)" if kept else ""
    print(f"cobl infer: {len(todo)} result folder(s) written under {out_root}/{note}")
    if export_formats:
        layered = export_folders([out_root / n for n in io.output_names(photos)], export_formats)
        print(f"cobl infer: wrote {len(layered)} layered file(s) ({', '.join(export_formats)})")
    return 0


def _check_depth_use(args: argparse.Namespace, pipe: Any) -> None:
    """A depth input the model would ignore is an error, and a depth model needs one."""
    if not pipe.uses_depth:
        for name in ("depth", "depth_model"):
            if getattr(args, name) is not None:
                raise UserError(f"the model {args.model} takes no depth input; leave it out", option=name)
    elif args.depth is None and args.depth_model is None:
        raise UserError(
            f"the model {args.model} is depth-conditioned; give a depth map per photo or --depth-model DIR",
            option="depth",
        )


def _results_to_compute(
    args: argparse.Namespace, pipe: Any, photos: list[Path], depths: dict[Path, Path] | None, estimator: Any,
    settings: dict[str, Any],
) -> tuple[list[tuple[Path, str, dict[str, Any]]], int]:
    """The photos whose result folder is missing or was made from other inputs (``infer.result_key``), with
    their inputs; and how many are kept."""
    from infer import io
    from infer.pipeline import model_folder
    from infer.result_key import folder_identity, result_inputs, result_key, stored_key

    model_id = folder_identity(model_folder(args.model))
    depth_model_id = folder_identity(args.depth_model) if estimator is not None else None
    todo, kept = [], 0
    for path, name in zip(photos, io.output_names(photos), strict=True):
        depth = None if depths is None else depths[path]
        inputs = result_inputs(model_id, path, depth, depth_model_id, settings)
        if not args.overwrite and stored_key(Path(args.out) / name, io.ORDER) == result_key(inputs):
            kept += 1
        else:
            todo.append((path, name, inputs))
    return todo, kept


def _estimator(args: argparse.Namespace) -> Any:
    """The ``--depth-model`` estimator, on the model's device; None without the flag."""
    if getattr(args, "depth_model", None) is None:
        return None
    import torch

    from infer.depth_estimation import DepthEstimator

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return DepthEstimator(args.depth_model, device=device)


def _depth_files(depth: str | None, photos: list[Path], resolution: int) -> dict[Path, Path] | None:
    """Photo -> its depth file, every one checked (size, finiteness, loads); None without ``--depth``."""
    from cobl.depth import load_depth_file
    from core.policy import IMAGE_SUFFIXES

    if depth is None:
        return None
    root = Path(depth)
    if root.is_dir():
        found = {}
        for photo in photos:
            candidates = [root / f"{photo.stem}{suffix}" for suffix in (".npy", *IMAGE_SUFFIXES)]
            match = next((c for c in candidates if c.is_file()), None)
            if match is None:
                raise UserError(
                    f"--depth {root}: no depth map for {photo.name} (expected {photo.stem}.npy or .png)"
                )
            found[photo] = match
    elif root.is_file():
        if len(photos) != 1:
            raise UserError(f"--depth {root}: one file given for {len(photos)} photos; give a folder")
        found = {photos[0]: root}
    else:
        raise UserError(f"--depth {root}: no such file or folder")
    from infer import io

    for photo, path in found.items():  # a one-line error before anything is written
        io.check_depth_file(path, io.image_size(photo), resolution)
        load_depth_file(path)
    return found


def _is_eval_result(path: Path) -> bool:
    """A metrics JSON that ``cobl eval`` wrote (it records its methods and scenes)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"method_order", "methods", "num_scenes"} <= set(doc)


def run_eval(args: argparse.Namespace) -> int:
    from cobl.data import expand_urls
    from core.atomic import write_text_atomic
    from core.outdir import check_output_file
    from infer.evaluate import MODEL, evaluate
    from infer.tabletop import check_folder, evaluate_tabletop

    _check_options(args)
    data = args.data if args.tabletop is None else args.tabletop
    if args.tabletop is None:
        expand_urls(data)  # a one-line error before the model loads
    else:
        check_folder(data)  # every file's keys, dtypes and sizes, before the model loads
    check_output_file(args.out, "eval", _is_eval_result, overwrite=args.overwrite)  # writable, not foreign
    pipe = _load(args)
    result = (evaluate if args.tabletop is None else evaluate_tabletop)(
        pipe,
        data,
        limit=args.limit,
        seed=args.seed,
        unguided=not args.no_unguided and args.guidance_scale > 0,
        depth_source=None if args.depth_source == "model" else args.depth_source,
        depth_estimator=_estimator(args) if pipe.uses_depth else None,
        **_sampling(args),
    )
    result = {
        "model": str(args.model),
        **result,
        "settings": {
            **_sampling(args),
            "sampler": args.sampler,
            "seed": args.seed,
            **result["settings"],
            "selection_split": args.selection_split,
            "split": _split_name(args.data) if args.tabletop is None else "tabletop",
        },
    }
    write_text_atomic(args.out, json.dumps(result, indent=2, sort_keys=True) + "\n")
    for method in result["method_order"]:
        s = result["methods"][method]
        print(
            f"{method:>12}: mIoU {_fmt(s['amodal_miou'])} (occluded {_fmt(s['amodal_miou_occluded'])}, "
            f"with no area rule {_fmt(s['amodal_miou_occluded_min_area_0'])}, "
            f"strict {_fmt(s['amodal_miou_strict'])}), hidden recall {_fmt(s['hidden_recall'])}, "
            f"fg-ARI {_fmt(s['fg_ari'])}, order {_fmt(s['order_accuracy'])}, "
            f"count {_fmt(s['count_accuracy'])}, recomp PSNR {_fmt(s['recomposition_psnr'])}"
        )
    check = result["amodal_completion_check"]
    if check["model_beats_visible_only"] is False:
        print("note: the model does not beat the visible-only baseline on occluded objects: not completing")
    skipped = {k: v for k, v in result.get("skipped", {}).items() if v}
    shown = f"; skipped {', '.join(f'{v} {k}' for k, v in skipped.items())}" if skipped else ""
    print(
        f"cobl eval: {result['num_scenes']} scenes -> {args.out} "
        f"({MODEL} guidance scale {args.guidance_scale}{shown})"
    )
    return 0


def _split_name(data: str) -> str | None:
    """The split a shard pattern names (``DIR/shards/test-*.tar`` -> ``test``), when it names one."""
    name = Path(data.split("::")[0]).name
    head = name.split("-")[0]
    return head if head and head != name and not any(c in head for c in "*?[{") else None


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"
