"""A supervised pool of render actors: ``workers`` long-lived RenderWorker actors that the driver keeps
alive itself, and the scenes it hands them.

Ray does not restart the actors (``max_restarts=0``: Ray's restart waits, without bound, for a slot on a
node that may be gone). The pool sees a death at once, puts every scene the actor held back in the queue
for the live workers and asks for a replacement, used as soon as Ray has placed and started it (same node
after a crash, a new node after a loss), so the pool grows back to ``workers``. A worker that fails to
*start* (a node that offers a GPU Cycles cannot use, a node whose Blender cannot load) counts against its
node: after ``MAX_START_FAILURES_PER_NODE`` the node is skipped with one log line and no later actor is
placed there. Only when no worker at all is live or starting for ``placement_timeout`` seconds (a worker
counts as starting from when Ray has started its process, before Blender loads, so a slow start-up is not
taken for a missing node) does the pool stop, naming the resource nobody offers (and the nodes it
skipped).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from synth.dataset.plan import scene_id
from synth.dataset.progress import Progress

MAX_START_FAILURES_PER_NODE = 3  # start failures of workers on one node before the node is skipped
SCENES_PER_ACTOR = 2  # one rendering, one queued, so an actor never waits on the driver
NODE_LABEL = "ray.io/node-id"  # the label Ray gives every node: its id


class GenerationError(RuntimeError):
    pass


@dataclass
class _Slot:
    """One of the ``workers`` places in the pool: its current actor, placed once Ray has started its process
    (``where()`` answered), live once it has started Blender (``start()`` answered)."""

    actor: Any
    probe: Any  # the pending where() (not placed yet) or start() (placed, starting); None once live
    placed: bool = False
    live: bool = False
    replaced: bool = False  # this actor replaces a lost one (its placement is logged)
    node: str = ""
    load: int = 0  # scenes submitted to this actor and not yet back


@dataclass
class PoolStats:
    worker_restarts: int = 0
    worker_start_failures: int = 0
    failed_attempts: Counter[str] = field(default_factory=Counter)  # cause -> scene attempts that failed


class RenderPool:
    """``workers`` actors of ``actor_cls`` (a ``ray.remote`` class with ``start() -> (pid, node)`` and
    ``render(index) -> dict``), made with ``actor_options`` and ``actor_args``. ``render(indices)`` yields
    each scene's result as it arrives, retrying failed scenes up to ``retries`` times; the caller runs
    between results while the pool is held (nothing else is processed meanwhile)."""

    def __init__(
        self,
        actor_cls: Any,
        actor_options: dict[str, Any],
        actor_args: tuple,
        workers: int,
        *,
        retries: int,
        placement_timeout: float,
        needs: str,
        progress: Progress,
        log: Callable[[str], None],
    ):
        self.actor_cls, self.actor_options, self.actor_args = actor_cls, actor_options, actor_args
        self.workers = workers
        self.retries, self.placement_timeout, self.needs = retries, placement_timeout, needs
        self.progress, self.log = progress, log
        self.stats = PoolStats()
        self.start_failures: Counter[str] = Counter()  # node -> start failures there
        self.skipped: dict[str, str] = {}  # node -> the last start failure's cause
        self.attempts: Counter[int] = Counter()
        self.inflight: dict[Any, tuple[int, int, Any]] = {}  # future -> (scene index, slot, actor)
        self.slots = [self._new_slot() for _ in range(workers)]
        self.waiting_since: float | None = time.monotonic()  # since when no worker is live or starting

    # -- the loop ---------------------------------------------------------------------------------------
    def render(self, indices: list[int]) -> Iterator[dict[str, Any]]:
        import ray

        queue = list(reversed(indices))  # popped from the end: in the given order
        while queue or self.inflight:
            self._submit(queue)
            probes = {s.probe: k for k, s in enumerate(self.slots) if s.probe is not None}
            ready, _ = ray.wait(list(self.inflight) + list(probes), num_returns=1, timeout=1.0)
            if not ready:
                self._check_placement()
                self.progress.tick()
            elif ready[0] in probes:
                self._probed(probes[ready[0]], ready[0])
            elif (result := self._collect(ready[0], queue)) is not None:
                self._submit(queue)  # keep the actors busy while the caller handles the result
                yield result

    def close(self) -> None:
        import ray

        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)

    def live_count(self) -> int:
        return sum(s.live for s in self.slots)

    # -- slots ------------------------------------------------------------------------------------------
    def _new_slot(self, replaced: bool = False) -> _Slot:
        options = dict(self.actor_options)
        if self.skipped:
            options["label_selector"] = {NODE_LABEL: f"!in({','.join(sorted(self.skipped))})"}
        actor = self.actor_cls.options(**options).remote(*self.actor_args)
        return _Slot(actor=actor, probe=actor.where.remote(), replaced=replaced)

    def _update_waiting(self) -> None:
        """Start the placement clock when no worker is live or starting, stop it when one is."""
        if any(s.placed for s in self.slots):
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = time.monotonic()

    def _submit(self, queue: list[int]) -> None:
        while queue:
            live = [k for k, s in enumerate(self.slots) if s.live]
            if not live:
                return
            k = min(live, key=lambda s: self.slots[s].load)
            if self.slots[k].load >= SCENES_PER_ACTOR:
                return
            index = queue.pop()
            self.inflight[self.slots[k].actor.render.remote(index)] = (index, k, self.slots[k].actor)
            self.slots[k].load += 1

    def _probed(self, k: int, fut: Any) -> None:
        """Slot ``k``'s probe answered: where() (placed: start Blender) or start() (live), or failed."""
        import ray

        slot = self.slots[k]
        try:
            _, slot.node = ray.get(fut)
        except ray.exceptions.RayTaskError as err:  # start() raised: WorkerStartError, with its node
            self._start_failed(k, err.cause)
            return
        except ray.exceptions.RayError as err:  # the actor died or was never scheduled
            self._lose(k, _last_line(err), 0)
            return
        if not slot.placed:
            slot.placed, slot.probe = True, slot.actor.start.remote()
            self._update_waiting()
            return
        slot.probe, slot.live = None, True
        self.progress.set_live(self.live_count())
        if slot.replaced:
            live = f"{self.progress.live}/{self.workers}"
            self.log(f"[synth] worker {k} placed on node {slot.node[:12]}; {live} workers live")

    def _start_failed(self, k: int, error: Any) -> None:
        """Slot ``k``'s actor could not start: count it against its node (skipped once it reaches the cap)."""
        import ray

        node = getattr(error, "node", "")
        self.stats.worker_start_failures += 1
        self.start_failures[node] += 1
        cause = str(error)
        if node and self.start_failures[node] >= MAX_START_FAILURES_PER_NODE and node not in self.skipped:
            self.skipped[node] = cause
            self.log(
                f"[synth] node {node[:12]} skipped: {self.start_failures[node]} workers failed to start "
                f"there ({cause})"
            )
        elif node not in self.skipped:
            count = f"{self.start_failures[node]}/{MAX_START_FAILURES_PER_NODE}"
            self.log(f"[synth] worker {k} failed to start on node {node[:12]} ({count}): {cause}")
        ray.kill(self.slots[k].actor, no_restart=True)
        self.slots[k] = self._new_slot(replaced=True)
        self._update_waiting()  # with no other worker live or starting, the wait for a placement restarts

    def _lose(self, k: int, why: str, scenes: int) -> None:
        """Slot ``k``'s actor is gone: replace it (each of its calls fails and requeues its scene itself)."""
        import ray

        slot = self.slots[k]
        where = f" on node {slot.node[:12]}" if slot.node else ""
        ray.kill(slot.actor, no_restart=True)
        self.slots[k] = self._new_slot(replaced=True)
        self.stats.worker_restarts += 1
        self.progress.set_live(self.live_count())
        self._update_waiting()
        if slot.live or scenes:
            self.log(
                f"[synth] worker {k} lost{where} ({why}); {scenes} scene(s) back to the queue, "
                f"{self.progress.live}/{self.workers} workers live, a replacement waits for {self.needs}"
            )
        else:  # a replacement that Ray cancelled before it ran (e.g. placed on a node as that node died)
            self.log(f"[synth] worker {k}: its replacement did not start ({why}); trying again")

    # -- results ----------------------------------------------------------------------------------------
    def _collect(self, fut: Any, queue: list[int]) -> dict[str, Any] | None:
        """The result of ``fut``, or None after requeueing its scene (GenerationError past the retries)."""
        import ray

        index, k, actor = self.inflight.pop(fut)
        current = self.slots[k].actor is actor
        if current:
            self.slots[k].load -= 1
        try:
            return ray.get(fut)
        except ray.exceptions.RayError as err:
            lost = not isinstance(err, ray.exceptions.RayTaskError)  # the actor's process or node is gone
            cause = f"worker lost ({type(err).__name__})" if lost else type(err.cause or err).__name__
            self.stats.failed_attempts[cause] += 1
            self.progress.failures += 1
            self.attempts[index] += 1
            if not lost:
                self.log(
                    f"[synth] scene {scene_id(index)} failed (attempt {self.attempts[index]}): "
                    f"{cause}: {_last_line(err)}"
                )
            if self.attempts[index] > self.retries:
                raise GenerationError(f"scene {scene_id(index)} failed {self.attempts[index]} times") from err
            queue.append(index)
            if lost and current:
                held = 1 + sum(a is actor for _, _, a in self.inflight.values())
                self._lose(k, type(err).__name__, held)  # one line for the actor, not one per scene
            return None

    def _check_placement(self) -> None:
        if self.waiting_since is None or time.monotonic() - self.waiting_since <= self.placement_timeout:
            return
        skipped = ""
        if self.skipped:
            nodes = ", ".join(n[:12] for n in sorted(self.skipped))
            cause = next(iter(self.skipped.values()))
            skipped = f"; node(s) {nodes} skipped after workers failed to start there ({cause})"
        raise GenerationError(
            f"no worker could be placed for {self.placement_timeout:.0f} s: no live node offers "
            f"{self.needs}{skipped}"
        )


def _last_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else ""
