"""The dataset job's Ray driver: render the planned scenes (synth.dataset.plan) on a supervised pool of Ray
actors (synth.dataset.pool) and write shards as they complete (synth.dataset.assembler).

Fault tolerance: a shard is the unit of work, recorded in the manifest with its sha256 only once written;
a restarted job keeps the recorded shards whose bytes still hash right and redoes everything else. Lost
workers are replaced by the pool, their scenes requeued; the job stops only when no worker is live or
starting for ``placement_timeout`` seconds, and every finished shard is kept for the rerun. The manifest
also records what each run cost (synth.dataset.cost).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from synth.dataset.assembler import ShardAssembler
from synth.dataset.cost import RunCost
from synth.dataset.manifest import SHARDS_DIR, Manifest, check_shard, load_if_present
from synth.dataset.plan import GenerationConfig, ShardPlan
from synth.dataset.pool import GenerationError, PoolStats, RenderPool
from synth.dataset.progress import Progress, fmt_seconds

__all__ = [
    "GenerationError",
    "PLACEMENT_TIMEOUT_S",
    "Summary",
    "ensure_ray",
    "prepare_output",
    "run_generation",
]

# ----------------------------------------------------------------------------------------------------
# resume


def prepare_output(
    out: Path, config: GenerationConfig, log: Callable[[str], None]
) -> tuple[Manifest, list[ShardPlan]]:
    """Load or create the manifest; keep verified shards, delete everything else; return the shards to do."""
    shard_dir = out / SHARDS_DIR
    manifest = load_if_present(out)
    if manifest is None:
        if shard_dir.is_dir() and any(shard_dir.iterdir()):
            raise UserError(f"{out}: has {SHARDS_DIR}/ but no manifest.json; not a resumable cobl dataset")
        manifest = Manifest(config=config.to_dict())
    elif (recorded := GenerationConfig.from_dict(manifest.config).to_dict()) != config.to_dict():
        diff = sorted(
            k for k in set(recorded) | set(config.to_dict()) if recorded.get(k) != config.to_dict().get(k)
        )
        raise UserError(
            f"{out}/manifest.json: generation config differs in {diff}; "
            "resume with the same options or use a new --out"
        )
    shard_dir.mkdir(parents=True, exist_ok=True)
    plans = config.plan()
    planned = {p.name for p in plans}
    todo: list[ShardPlan] = []
    for plan in plans:
        rec = manifest.shards.get(plan.name)
        if rec is not None:
            why = check_shard(shard_dir / plan.name, rec)
            if why is None:
                continue
            log(f"[synth] redoing {plan.name}: {why}")
            del manifest.shards[plan.name]
        todo.append(plan)
    for name in set(manifest.shards) - planned:  # cannot happen with an equal config; be strict anyway
        del manifest.shards[name]
    todo_names = {p.name for p in todo}
    for path in shard_dir.iterdir():
        # temp files of killed writes, and finished-but-unrecorded shards (killed between rename and record)
        if path.name.endswith(".tmp") or path.name in todo_names:
            path.unlink()
    manifest.complete = not todo
    manifest.save(out)
    return manifest, todo


# ----------------------------------------------------------------------------------------------------
# the Ray driver


@dataclass
class Summary:
    scenes_total: int
    scenes_rendered: int
    shards_total: int
    shards_written: int
    shards_kept: int
    failures: int = 0
    worker_restarts: int = 0
    seconds: float = 0.0
    worker_start_failures: int = 0
    failure_causes: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        rate = self.scenes_rendered / self.seconds if self.seconds > 0 else 0.0
        return (
            f"[synth] done: {self.scenes_total} scenes in {self.shards_total} shards "
            f"({self.shards_written} written, {self.shards_kept} kept from before); rendered "
            f"{self.scenes_rendered} scenes in {fmt_seconds(self.seconds)} ({rate:.2f} scenes/s); "
            f"failures {self.failures}, worker restarts {self.worker_restarts}"
        )

    def add_pool(self, stats: PoolStats) -> None:
        self.failures = sum(stats.failed_attempts.values())
        self.failure_causes = dict(stats.failed_attempts)
        self.worker_restarts = stats.worker_restarts
        self.worker_start_failures = stats.worker_start_failures


# Seconds the job waits with no worker live or starting before it stops (--placement-timeout). Ten minutes
# is longer than an autoscaler needs to boot and set up a replacement node (3-6 min for the nodes of
# ray_cluster.yaml) and short enough that a job asking for a resource no node offers fails the same day.
PLACEMENT_TIMEOUT_S = 600.0


def ensure_ray(workers: int, address: str | None) -> bool:
    """Join ``address``, reuse an already initialised Ray, or start a private local instance.

    Token authentication is on unless the caller chose otherwise (``RAY_AUTH_MODE`` already set): a local
    instance generates its own token (``~/.ray/auth_token``, or ``RAY_AUTH_TOKEN_PATH``) on first use, and
    joining a cluster needs that cluster's token (docs/cluster.md).

    Returns True when this call connected, so the caller disconnects again (a job run in-process, e.g. by
    ``cobl demo``, must not leave its private Ray instance behind for whatever runs next)."""
    from core.ray_local import connect  # auth set before Ray reads it, --address bounded, orphans ended

    return connect(workers, address)


def run_generation(
    out: str | os.PathLike,
    config: GenerationConfig,
    *,
    workers: int = 1,
    address: str | None = None,
    retries: int = 3,
    log: Callable[[str], None] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    progress_interval: float = 5.0,
    worker_resource: str | None = None,
    threads_per_worker: int | None = None,
    placement_timeout: float = PLACEMENT_TIMEOUT_S,
) -> Summary:
    """Render every scene of ``config`` not yet in a verified shard under ``out``; return a summary.

    ``threads_per_worker``: Cycles threads of each actor; by default 1 when there are several workers (one
    per core) and all cores for a single worker. ``worker_resource`` names a custom Ray resource the actors
    each take one unit of (``render`` on the cluster of ray_cluster.yaml), which keeps Blender off the GPU
    training nodes. ``placement_timeout``: seconds with no worker live or starting after which the job stops
    with a GenerationError naming the resource; finished shards stay.

    ``on_result`` sees each scene's result (index, key, pid, node, seconds, core_seconds, rss_mb) as it
    arrives, on the driver: the job is held while it runs (no result, death or placement is processed), so
    a test can act at a known point of the job.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    _check_options(workers, retries, placement_timeout)
    out, t0 = Path(out), time.monotonic()
    manifest, todo = prepare_output(out, config, log)
    plans = config.plan()
    summary = Summary(config.num_scenes, 0, len(plans), 0, len(plans) - len(todo))
    scenes = [i for plan in todo for i in plan.scenes]  # shard order, so few shards are open at once
    if not todo:
        log(f"[synth] {out}: all {len(plans)} shards present and verified; nothing to do")
    else:
        log(f"[synth] {out}: {len(todo)} of {len(plans)} shards to render ({len(scenes)} scenes) "
            f"on {workers} worker(s)")  # fmt: skip
        connected_here = ensure_ray(workers, address)
        progress = Progress(config.num_scenes, config.num_scenes - len(scenes), len(plans),
                            summary.shards_kept, log, progress_interval, workers)  # fmt: skip
        progress.start()
        try:
            pool = _render_pool(config, workers, worker_resource, threads_per_worker, retries,
                                placement_timeout, progress, log)  # fmt: skip
            _render(out, manifest, ShardAssembler(out, manifest, todo), pool, scenes, summary, on_result)
        finally:
            if connected_here:
                import ray

                ray.shutdown()
    summary.seconds = time.monotonic() - t0
    return summary


def _render(
    out: Path,
    manifest: Manifest,
    assembler: ShardAssembler,
    pool: RenderPool,
    scenes: list[int],
    summary: Summary,
    on_result: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Render ``scenes`` on ``pool`` into ``assembler``'s shards; the run's cost goes into the manifest
    (saved with every shard, and at the end whatever happened)."""
    progress = pool.progress
    run = RunCost(workers=pool.workers)
    manifest.runs.append(run)
    try:
        for result in pool.render(scenes):
            if on_result is not None:
                on_result({k: v for k, v in result.items() if k != "members"})
            summary.scenes_rendered += 1
            progress.done += 1
            _record(run, pool.stats, summary.scenes_rendered, time.monotonic() - progress.t0)
            finished = assembler.add(result)
            if finished is not None:
                summary.shards_written += 1
                progress.done_shards += 1
            progress.tick(force=finished is not None)
    except GenerationError as err:
        kept = f"{len(manifest.shards)} finished shards are kept, rerun the same command to finish"
        raise GenerationError(f"{err}; {kept}") from err
    finally:
        pool.close()
        summary.add_pool(pool.stats)
        _record(run, pool.stats, summary.scenes_rendered, time.monotonic() - progress.t0)
        manifest.complete = len(manifest.shards) == summary.shards_total
        manifest.save(out)


def _check_options(workers: int, retries: int, placement_timeout: float) -> None:
    if workers < 1:
        raise UserError(f"{workers} should be >= 1", option="workers")
    if retries < 0:
        raise UserError(f"{retries} should be >= 0", option="retries")
    if placement_timeout <= 0:
        raise UserError(f"{placement_timeout} should be > 0", option="placement_timeout")


def _render_pool(
    config, workers, worker_resource, threads_per_worker, retries, placement_timeout, progress, log
):
    """The pool of RenderWorker actors the job asks Ray for: one CPU (and one GPU when rendering on GPUs,
    a Blender takes all of one) and one unit of ``worker_resource`` each."""
    import ray

    from synth.dataset.worker import RenderWorker

    needs = "1 CPU" + (" and 1 GPU" if config.device == "gpu" else "")
    needs += f" and 1 {worker_resource!r}" if worker_resource else ""
    # max_restarts=0: a dead actor is replaced by the pool, not by Ray (see synth.dataset.pool)
    options = dict(
        num_cpus=1,
        num_gpus=1 if config.device == "gpu" else 0,
        resources={worker_resource: 1} if worker_resource else None,
        max_restarts=0,
        max_task_retries=0,
        max_concurrency=1,
    )
    threads = threads_per_worker if threads_per_worker is not None else (1 if workers > 1 else 0)
    return RenderPool(
        ray.remote(RenderWorker),
        options,
        (config.to_dict(), threads),
        workers,
        retries=retries,
        placement_timeout=placement_timeout,
        needs=needs,
        progress=progress,
        log=log,
    )


def _record(run: RunCost, stats: PoolStats, scenes: int, seconds: float) -> None:
    """The run's cost so far, into its manifest record (saved with the next shard)."""
    run.scenes_rendered, run.seconds = scenes, round(seconds, 3)
    run.worker_restarts, run.worker_start_failures = stats.worker_restarts, stats.worker_start_failures
    run.failed_attempts = dict(sorted(stats.failed_attempts.items()))
