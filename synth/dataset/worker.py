"""The render worker: one long-lived Blender per process, so bpy's start-up is paid once, not once per scene.

``RenderWorker`` is a plain class; the driver wraps it with ``ray.remote``. ``render_sample`` is the whole
per-scene job (shared by the actor and the benchmark): ``synth.dataset.scenes.render_scene``, which one-off
scenes and re-renders use too, padded to the dataset's layer slots.
"""

from __future__ import annotations

import os
import time
from typing import Any

from synth.dataset.plan import GenerationConfig, scene_id
from synth.dataset.scenes import render_scene
from synth.dataset.shards import pad_layers


def render_sample(renderer: Any, config: GenerationConfig, index: int) -> dict[str, bytes]:
    """Sample and render scene ``index``; return its shard members with ``config.layer_slots`` layer slots."""
    return pad_layers(render_scene(renderer, config, index).files, config.layer_slots)


CACHED_MODULES = ("assets.shapes", "assets.meshes", "synth.scene.sampler", "synth.scene.geometry")


def release_scene_caches() -> None:
    """Empty the per-asset lru caches of the sampling/asset modules and collect garbage.

    Procedural assets are drawn with fresh 32-bit seeds per scene, so nothing in those caches is reused by
    the next scene; between scenes they only hold memory (tens of MB once full), which is what made a
    long-lived worker's RSS creep. Clearing them keeps it flat (bench/bench_generate.py measures it).
    """
    import gc
    import sys

    for name in CACHED_MODULES:
        module = sys.modules.get(name)
        for value in vars(module).values() if module else ():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()
    gc.collect()


def rss_mb() -> float:
    """Resident set size of this process in MiB (from /proc; 0 where that does not exist)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except ImportError:
        return ""


class WorkerStartError(RuntimeError):
    """A render worker could not start on its node (its Blender, or the GPU it was given, is unusable).

    Raised by :meth:`RenderWorker.start` inside the actor, so the driver learns which node it was on and
    can stop placing workers there (synth.dataset.pool)."""

    def __init__(self, node: str, cause: str):
        super().__init__(node, cause)
        self.node, self.cause = node, cause

    def __str__(self) -> str:
        return self.cause


class RenderWorker:
    """Owns one BlenderRenderer for the life of the process; ``render(index)`` returns one scene's members.

    The renderer is made by :meth:`start` (the driver's probe that the actor is placed and usable), not in
    the constructor: a constructor that fails leaves Ray's actor dead without saying where it ran."""

    def __init__(self, config: dict[str, Any], threads: int = 0):
        self.config = GenerationConfig.from_dict(config)
        self.threads = threads
        self.renderer: Any = None
        self.count = 0

    def where(self) -> tuple[int, str]:
        """(pid, Ray node id): the driver's probe that the actor is placed and its process runs (cheap: the
        placement is known before Blender starts, so a slow start-up does not count as no placement)."""
        return os.getpid(), _node_id()

    def start(self) -> tuple[int, str]:
        """Start Blender on the configured device; (pid, Ray node id). WorkerStartError when it cannot."""
        from synth.render.blender.renderer import BlenderRenderer

        if self.renderer is None:
            try:
                self.renderer = BlenderRenderer(threads=self.threads, device=self.config.device)
            except Exception as err:  # any failure to start is reported, with its node, to the driver
                raise WorkerStartError(_node_id(), f"{type(err).__name__}: {err}") from err
        return os.getpid(), _node_id()

    def render(self, index: int) -> dict[str, Any]:
        self.start()
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            members = render_sample(self.renderer, self.config, index)
        finally:
            release_scene_caches()
        self.count += 1
        return {
            "index": index,
            "key": scene_id(index),
            "members": members,
            "pid": os.getpid(),
            "node": _node_id(),
            "seconds": time.perf_counter() - t0,
            "core_seconds": time.process_time() - cpu0,  # every Cycles thread of this process
            "rss_mb": rss_mb(),
            "count": self.count,
        }
