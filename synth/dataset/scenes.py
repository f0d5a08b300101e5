"""Single scenes of a dataset: scene ``index`` of a generation config, rendered exactly as the dataset job
renders it, and compared with the copy a dataset's shard holds.

``cobl synth scene --seed S --index I`` (options -> a GenerationConfig) and ``cobl synth rerender DIR
--index I`` (the GenerationConfig from DIR's manifest) both come here, and the dataset job's worker renders
through :func:`render_scene` too, so a scene is the same bytes whichever way it is made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import schema
from core.errors import UserError
from synth.dataset.manifest import SHARDS_DIR, Manifest
from synth.dataset.plan import GenerationConfig, dataset_scene_spec, scene_id
from synth.dataset.shards import iter_shard
from synth.render.groundtruth import scene_json
from synth.render.scene_dir import RenderedScene

# The members that must agree for a re-render to count as the same scene: the sampled scene and its exact
# geometry. Pixels of the photo and layers match too on the same device, but are not required to.
IDENTITY_MEMBERS = (schema.SCENE, schema.IDS, schema.DEPTH)


def render_scene(renderer: Any, config: GenerationConfig, index: int) -> RenderedScene:
    """Sample and render scene ``index`` of ``config``: its own layers only (the job pads them to
    ``config.layer_slots``). Threads stay out of the spec, and so out of scene.json: the renderer pins
    them for its process."""
    check_index(config, index)
    spec = dataset_scene_spec(config, index)
    rendered = renderer.render(spec)
    files = dict(rendered.files)
    if schema.SCENE not in files:
        files[schema.SCENE] = scene_json(spec, rendered.ground_truth)
    return RenderedScene(scene_id(index), files, rendered.ground_truth)


def check_index(config: GenerationConfig, index: int) -> None:
    if not 0 <= index < config.num_scenes:
        raise UserError(f"{index} should be in [0, {config.num_scenes})", option="index")


def dataset_config(root: str | os.PathLike) -> GenerationConfig:
    """The generation config a dataset directory was rendered with (from its manifest)."""
    return GenerationConfig.from_dict(Manifest.load(root).config)


@dataclass(frozen=True)
class Comparison:
    """A re-rendered scene against the dataset's copy: the shard and the members whose bytes differ."""

    key: str
    shard: str
    differ: tuple[str, ...]

    @property
    def same_scene(self) -> bool:
        return not set(self.differ) & set(IDENTITY_MEMBERS)

    def line(self) -> str:
        verdict = f"differs in {list(self.differ)}" if self.differ else "identical"
        return f"{self.key} vs {self.shard}: {verdict}"


def compare_with_shard(root: str | os.PathLike, config: GenerationConfig, scene: RenderedScene) -> Comparison:
    """Compare ``scene`` (one of ``config``'s) with the sample its shard under ``root`` holds."""
    index = int(scene.scene_id[1:])
    plan = next(p for p in config.plan() if index in p.scenes)
    stored = dict(iter_shard(Path(root) / SHARDS_DIR / plan.name))[scene.scene_id]
    n = scene.num_layers  # the stored sample's further layer slots are padding
    members = [m for m in stored if schema.layer_index(m) is None or schema.layer_index(m) < n]
    differ = tuple(m for m in members if scene.files.get(m) != stored[m])
    return Comparison(scene.scene_id, plan.name, differ)
