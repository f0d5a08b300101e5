"""The shard assembler: rendered scenes in, finished shards out.

A shard is the unit of work. Scenes arrive in any order; the shard is written (under a temporary name,
renamed when complete: synth.dataset.shards) the moment its last scene arrives, and only then recorded,
with its sha256 and its scenes' core-seconds, in the atomically rewritten manifest. So after a kill the
manifest lists exactly the finished shards, and a rerun redoes everything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synth.dataset import shards as shardlib
from synth.dataset.manifest import SHARDS_DIR, Manifest, ShardRecord
from synth.dataset.plan import ShardPlan


class ShardAssembler:
    def __init__(self, out: Path, manifest: Manifest, todo: list[ShardPlan]):
        self.out, self.manifest = out, manifest
        self.shard_of = {i: plan for plan in todo for i in plan.scenes}
        self.buffers: dict[str, dict[int, dict[str, Any]]] = {plan.name: {} for plan in todo}

    def add(self, result: dict[str, Any]) -> ShardPlan | None:
        """Buffer one scene's result (index, key, members, core_seconds); the shard it completed, if any."""
        plan = self.shard_of[result["index"]]
        buffer = self.buffers[plan.name]
        buffer[result["index"]] = result
        if len(buffer) < len(plan.scenes):
            return None
        self._write(plan, [buffer[i] for i in plan.scenes])
        del self.buffers[plan.name]
        return plan

    def _write(self, plan: ShardPlan, results: list[dict[str, Any]]) -> None:
        samples = [(r["key"], r["members"]) for r in results]
        count, size, digest = shardlib.write_shard(self.out / SHARDS_DIR / plan.name, samples)
        self.manifest.shards[plan.name] = ShardRecord(
            name=plan.name,
            split=plan.split,
            index=plan.index,
            num_samples=count,
            bytes=size,
            sha256=digest,
            first_key=samples[0][0],
            last_key=samples[-1][0],
            core_seconds=[round(float(r["core_seconds"]), 4) for r in results],
        )
        self.manifest.save(self.out)
