"""The dataset job's Ray driver: render the planned scenes (synth.dataset.plan) on Ray actors, write shards.

Fault tolerance: a shard is the unit of work. It is written under a temporary name, renamed when all its
scenes are in, and only then recorded (with its sha256) in the atomically rewritten manifest. A restarted job
keeps the recorded shards whose bytes still hash right and redoes everything else. Renders go through
long-lived Ray actors (bpy starts once per actor) that the driver itself supervises: an actor whose process
or node dies is not restarted by Ray (``max_restarts=0``, which would wait forever for a slot on a node that
is gone); its scenes go straight back to the queue for the live workers and a replacement actor is created
at once. The replacement is used as soon as Ray places it (same node after a crash, a new node after a loss),
so the pool grows back to ``workers``. Only when no worker at all is live for ``placement_timeout`` seconds
does the job stop, naming the resource nobody offers; every finished shard is kept for the rerun.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError
from synth.dataset import shards as shardlib
from synth.dataset.manifest import SHARDS_DIR, Manifest, ShardRecord, check_shard, load_if_present
from synth.dataset.plan import GenerationConfig, ShardPlan, scene_id

# ----------------------------------------------------------------------------------------------------
# progress


class Progress:
    """One log line every ``interval`` seconds: done/total, live workers/requested, rate, ETA, failures.

    The rate is the live one: scenes per worker-second (measured over the time workers were actually live)
    times the workers live now, so a lost worker lowers the ETA's rate at once and a pool with no live worker
    shows no ETA instead of a stale one. Hand-written rather than a tqdm bar because the job mostly runs with
    its output in a log file (a Ray job, a cluster head), where carriage-return bars are unreadable.
    """

    def __init__(
        self,
        total: int,
        done: int,
        total_shards: int,
        done_shards: int,
        log: Callable[[str], None],
        interval: float = 5.0,
        requested: int = 1,
    ):
        self.total, self.done, self.start_done = total, done, done
        self.total_shards, self.done_shards = total_shards, done_shards
        self.failures = 0
        self.log, self.interval = log, interval
        self.requested, self.live = requested, 0
        self.worker_seconds = 0.0  # integral of live workers over time
        self.t0 = self._since = time.monotonic()
        self.last = -math.inf

    def start(self) -> None:
        """Start the clock (the rate counts rendering time, not Ray's start-up)."""
        self.t0 = self._since = time.monotonic()
        self.worker_seconds = 0.0

    def set_live(self, live: int) -> None:
        now = time.monotonic()
        self.worker_seconds += self.live * (now - self._since)
        self._since, self.live = now, live

    @property
    def rate(self) -> float:
        """Scenes per second at the current number of live workers."""
        worker_seconds = self.worker_seconds + self.live * (time.monotonic() - self._since)
        per_worker = (self.done - self.start_done) / worker_seconds if worker_seconds > 0 else 0.0
        return per_worker * self.live

    def line(self) -> str:
        rate = self.rate
        remaining = self.total - self.done
        eta = _fmt_seconds(remaining / rate) if rate > 0 else "?"
        return (
            f"[synth] {self.done}/{self.total} scenes ({100.0 * self.done / max(self.total, 1):.1f}%), "
            f"workers {self.live}/{self.requested}, {rate:.2f} scenes/s, ETA {eta}, "
            f"failures {self.failures}, shards {self.done_shards}/{self.total_shards}"
        )

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.last = now
            self.log(self.line())


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


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
    failures: int
    worker_restarts: int
    seconds: float

    def line(self) -> str:
        rate = self.scenes_rendered / self.seconds if self.seconds > 0 else 0.0
        return (
            f"[synth] done: {self.scenes_total} scenes in {self.shards_total} shards "
            f"({self.shards_written} written, {self.shards_kept} kept from before); rendered "
            f"{self.scenes_rendered} scenes in {_fmt_seconds(self.seconds)} ({rate:.2f} scenes/s); "
            f"failures {self.failures}, worker restarts {self.worker_restarts}"
        )


class GenerationError(RuntimeError):
    pass


# Seconds the job waits with no live worker before it stops (--placement-timeout). Ten minutes is longer than
# an autoscaler needs to boot and set up a replacement node (3-6 min for the nodes of ray_cluster.yaml) and
# short enough that a job asking for a resource no node offers fails the same day, not never.
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


@dataclass
class _Slot:
    """One of the ``workers`` places in the pool: its current actor, live once Ray has placed it."""

    actor: Any
    probe: Any  # the future of actor.pid() while the actor waits to be placed; None once live
    live: bool = False
    replaced: bool = False  # this actor replaces a lost one (its placement is logged)
    pid: int = 0
    node: str = ""


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
    per core) and all cores for a single worker.

    ``on_result`` sees each scene's result (index, key, pid, node, seconds, rss_mb) as it arrives (tests use
    it). ``worker_resource`` names a custom Ray resource the actors each take one unit of (``render`` on the
    cluster of ray_cluster.yaml), which keeps Blender off the GPU training nodes. ``placement_timeout``:
    seconds with no live worker at all (none placed yet, or all lost) after which the job stops with a
    GenerationError naming the resource; finished shards stay.
    """
    import ray

    from synth.dataset.worker import RenderWorker

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if workers < 1:
        raise UserError(f"{workers} should be >= 1", option="workers")
    if retries < 0:
        raise UserError(f"{retries} should be >= 0", option="retries")
    if placement_timeout <= 0:
        raise UserError(f"{placement_timeout} should be > 0", option="placement_timeout")
    out = Path(out)
    t0 = time.monotonic()
    manifest, todo = prepare_output(out, config, log)
    plans = config.plan()
    done_scenes = sum(len(p.scenes) for p in plans) - sum(len(p.scenes) for p in todo)
    progress = Progress(
        config.num_scenes, done_scenes, len(plans), len(plans) - len(todo), log, progress_interval, workers
    )
    summary = Summary(config.num_scenes, 0, len(plans), 0, len(plans) - len(todo), 0, 0, 0.0)
    if not todo:
        log(f"[synth] {out}: all {len(plans)} shards present and verified; nothing to do")
        summary.seconds = time.monotonic() - t0
        return summary
    log(
        f"[synth] {out}: {len(todo)} of {len(plans)} shards to render "
        f"({config.num_scenes - done_scenes} scenes) on {workers} worker(s)"
    )

    connected_here = ensure_ray(workers, address)
    progress.start()
    resources = {worker_resource: 1} if worker_resource else None
    needs = f"1 CPU and 1 {worker_resource!r}" if worker_resource else "1 CPU"
    # max_restarts=0: a dead actor is replaced here, not by Ray (whose restart waits, without bound, for a
    # slot on a node that may be gone), so its scenes can go to the live workers at once.
    actor_cls = ray.remote(RenderWorker).options(
        num_cpus=1,
        num_gpus=1 if config.device == "gpu" else 0,  # one GPU per Blender: Cycles uses all of a GPU
        resources=resources,
        max_restarts=0,
        max_task_retries=0,
        max_concurrency=1,
    )
    threads = threads_per_worker if threads_per_worker is not None else (1 if workers > 1 else 0)
    cfg_dict = config.to_dict()

    def new_slot(replaced: bool = False) -> _Slot:
        actor = actor_cls.remote(cfg_dict, threads)
        return _Slot(actor=actor, probe=actor.where.remote(), replaced=replaced)

    slots = [new_slot() for _ in range(workers)]

    queue = [(i, p) for p in todo for i in p.scenes]  # shard order, so few shards are open at once
    queue.reverse()
    shard_of = {i: p for p in todo for i in p.scenes}
    buffers: dict[str, dict[int, tuple[str, dict[str, bytes]]]] = {p.name: {} for p in todo}
    attempts: dict[int, int] = {}
    inflight: dict[Any, tuple[int, int, Any]] = {}  # future -> (scene index, slot, actor)
    load = [0] * workers
    per_actor = 2  # one rendering, one queued, so an actor never waits on the driver
    no_live_since: float | None = time.monotonic()

    def live_count() -> int:
        return sum(s.live for s in slots)

    def submit() -> None:
        while queue:
            live = [k for k in range(workers) if slots[k].live]
            if not live:
                return
            k = min(live, key=lambda s: load[s])
            if load[k] >= per_actor:
                return
            index, _ = queue.pop()
            inflight[slots[k].actor.render.remote(index)] = (index, k, slots[k].actor)
            load[k] += 1

    def lose(k: int, why: str, scenes: int) -> None:
        """Slot ``k``'s actor is gone: replace it (each of its calls fails and requeues its scene itself)."""
        nonlocal no_live_since
        slot = slots[k]
        where = f" on node {slot.node[:12]}" if slot.node else ""
        ray.kill(slot.actor, no_restart=True)
        slots[k] = new_slot(replaced=True)
        summary.worker_restarts += 1
        progress.set_live(live_count())
        if progress.live == 0 and no_live_since is None:
            no_live_since = time.monotonic()
        if slot.live or scenes:
            log(
                f"[synth] worker {k} lost{where} ({why}); {scenes} scene(s) back to the queue, "
                f"{progress.live}/{workers} workers live, a replacement waits for {needs}"
            )
        else:  # a replacement that Ray cancelled before it ran (e.g. placed on a node as that node died)
            log(f"[synth] worker {k}: its replacement did not start ({why}); trying again")

    def placed(k: int, fut: Any) -> None:
        nonlocal no_live_since
        slot = slots[k]
        slot.probe = None
        try:
            slot.pid, slot.node = ray.get(fut)
        except ray.exceptions.RayError as err:
            lose(k, _last_line(err), 0)
            return
        slot.live = True
        progress.set_live(live_count())
        no_live_since = None
        if slot.replaced:
            log(f"[synth] worker {k} placed on node {slot.node[:12]}; {progress.live}/{workers} workers live")

    try:
        while queue or inflight:
            probes = {s.probe: k for k, s in enumerate(slots) if s.probe is not None}
            submit()
            if not inflight and not probes:  # cannot happen: every slot is live or waiting to be placed
                raise GenerationError("no worker is live or starting")
            ready, _ = ray.wait(
                list(inflight) + list(probes), num_returns=1, timeout=min(progress_interval, 1.0)
            )
            if not ready:
                if no_live_since is not None and time.monotonic() - no_live_since > placement_timeout:
                    raise GenerationError(
                        f"no worker could be placed for {placement_timeout:.0f} s: "
                        f"no live node offers {needs}; "
                        f"{len(manifest.shards)} finished shards are kept, rerun the same command to finish"
                    )
                progress.tick()
                continue
            fut = ready[0]
            if fut in probes:
                placed(probes[fut], fut)
                continue
            index, k, actor = inflight.pop(fut)
            if slots[k].actor is actor:
                load[k] -= 1
            try:
                result = ray.get(fut)
            except ray.exceptions.RayError as err:
                progress.failures += 1
                summary.failures += 1
                attempts[index] = attempts.get(index, 0) + 1
                lost = not isinstance(err, ray.exceptions.RayTaskError)  # the actor's process or node is gone
                if not lost:
                    log(
                        f"[synth] scene {scene_id(index)} failed (attempt {attempts[index]}): "
                        f"{type(err).__name__}: {_last_line(err)}"
                    )
                if attempts[index] > retries:
                    raise GenerationError(
                        f"scene {scene_id(index)} failed {attempts[index]} times; "
                        f"{summary.shards_written} shards written this run are kept"
                    ) from err
                queue.append((index, shard_of[index]))
                if lost and slots[k].actor is actor:
                    held = 1 + sum(a is actor for _, _, a in inflight.values())
                    lose(k, type(err).__name__, held)  # one line for the actor, not one per scene it held
                continue
            if on_result is not None:
                on_result({k: v for k, v in result.items() if k != "members"})
            plan = shard_of[index]
            buffers[plan.name][index] = (result["key"], result["members"])
            summary.scenes_rendered += 1
            progress.done += 1
            submit()
            if len(buffers[plan.name]) == len(plan.scenes):
                _finish_shard(out, manifest, plan, buffers.pop(plan.name))
                summary.shards_written += 1
                progress.done_shards += 1
                progress.tick(force=True)
            else:
                progress.tick()
    finally:
        for slot in slots:
            ray.kill(slot.actor, no_restart=True)
        if connected_here:
            ray.shutdown()
    manifest.complete = len(manifest.shards) == len(plans)
    manifest.save(out)
    summary.seconds = time.monotonic() - t0
    return summary


def _last_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else ""


def _finish_shard(
    out: Path, manifest: Manifest, plan: ShardPlan, samples: dict[int, tuple[str, dict[str, bytes]]]
) -> None:
    ordered = [samples[i] for i in plan.scenes]
    count, size, digest = shardlib.write_shard(out / SHARDS_DIR / plan.name, ordered)
    manifest.shards[plan.name] = ShardRecord(
        name=plan.name,
        split=plan.split,
        index=plan.index,
        num_samples=count,
        bytes=size,
        sha256=digest,
        first_key=ordered[0][0],
        last_key=ordered[-1][0],
    )
    manifest.save(out)
