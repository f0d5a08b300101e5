"""Checks of command-line values that belong to no library call: bounds on sizes and counts, checked
before any work, each a one-line ``UserError`` naming the flag (exit code 2)."""

from __future__ import annotations

import argparse
import math

from core.errors import UserError
from core.policy import MAX_RESOLUTION, MAX_SAMPLES, MAX_SCENES, MAX_SHARDS


def check_range(args: argparse.Namespace, name: str, low: float, high: float = math.inf) -> None:
    """``args.<name>`` (unless None) must lie in ``[low, high]``; NaN never does."""
    value = getattr(args, name, None)
    if value is None:
        return
    if not low <= value <= high:
        raise UserError(f"expected a value {span(low, high)}, got {value}", option=name)


def span(low: float, high: float) -> str:
    """``>= 1`` or ``in [0, 99999999]``: a range as a reader checks it (integers in full, not 1e+08)."""

    def shown(x: float) -> str:
        return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"

    return f">= {shown(low)}" if high == math.inf else f"in [{shown(low)}, {shown(high)}]"


def check_positive(args: argparse.Namespace, name: str) -> None:
    """``args.<name>`` must be a number > 0 (an interval, a timeout: 0 would spin or never wait)."""
    value = getattr(args, name, None)
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise UserError(f"expected a number of seconds > 0, got {value}", option=name)


def check_render_sizes(args: argparse.Namespace) -> None:
    """The sizes every render command takes: bounded above as well as below."""
    check_range(args, "resolution", 8, MAX_RESOLUTION)
    check_range(args, "samples", 1, MAX_SAMPLES)
    check_range(args, "scenes", 1, MAX_SCENES)
    check_range(args, "seed", 0, 2**63 - 1)


def check_run_flags(args: argparse.Namespace) -> None:
    """``cobl synth run``: sizes, counts, seed, intervals and the shard count, before Ray or Blender start."""
    check_render_sizes(args)
    check_range(args, "shard_size", 1, MAX_SCENES)
    check_range(args, "workers", 1, 4096)
    check_range(args, "retries", 0, 1000)
    check_positive(args, "progress_every")
    check_positive(args, "placement_timeout")
    if math.ceil(args.scenes / args.shard_size) > MAX_SHARDS:
        raise UserError(
            f"{args.scenes} scenes at {args.shard_size} per shard make more than {MAX_SHARDS} shards",
            option="shard_size",
        )


def default_object_range(given_min: int | None, given_max: int | None) -> tuple[int, int]:
    """The object range of a render command: the given ends, the others from ``DEFAULT_OBJECTS`` (the tiny
    model's K as the most), kept consistent with a given end (a given minimum above the default most
    raises the most with it)."""
    from core.policy import DEFAULT_OBJECTS

    low = given_min if given_min is not None else min(DEFAULT_OBJECTS[0], given_max or DEFAULT_OBJECTS[0])
    high = given_max if given_max is not None else max(DEFAULT_OBJECTS[1], low)
    return low, high
