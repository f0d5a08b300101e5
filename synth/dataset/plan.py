"""The dataset plan: which scenes exist, their ids and seeds, their splits and shards, and the options that
determine the dataset's bytes. Pure logic (no Ray, no Blender): the Ray driver, the render worker, the
manifest and one-off re-renders all read it.

Reproducibility: scene ``i`` of a dataset with seed ``SEED`` has id ``s{i:08d}`` and scene seed
``scene_seed(SEED, i)`` (numpy ``SeedSequence([SEED, i])``), so any scene can be re-rendered alone and the
same command always yields the same shards. Splits are contiguous index ranges (train first) with exact counts
from the fractions; within a split, shard ``j`` holds the split's scenes ``j*shard_size`` up to
``(j+1)*shard_size - 1``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import UserError
from core.policy import RENDER_DEVICES, RENDER_ENGINES
from synth.dataset import shards as shardlib

DEFAULT_SPLITS = {"train": 0.9, "val": 0.05, "test": 0.05}


SAMPLING_ATTEMPTS = 20  # seeds tried per scene when the sampler cannot meet its constraints


def scene_seed(dataset_seed: int, index: int, attempt: int = 0) -> int:
    """Seed of scene ``index``: 63 bits of ``SeedSequence([dataset_seed, index])`` (independent streams).

    Should the sampler fail on that seed (SamplingError), the job moves on deterministically to
    ``SeedSequence([dataset_seed, index, attempt])`` for attempt 1, 2, ...; scene.json records the seed used.
    """
    entropy = [int(dataset_seed), int(index)] + ([int(attempt)] if attempt else [])
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


SCENE_ID_REGEX = r"s\d{8}"  # what scene_id writes (croissant.json's record fields match it)


def scene_id(index: int) -> str:
    """The WebDataset key of scene ``index`` (no dots, sorts in index order)."""
    return f"s{index:08d}"


def scene_index(key: str) -> int:
    if not (key.startswith("s") and key[1:].isdigit()):
        raise ValueError(f"not a dataset scene id: {key!r}")
    return int(key[1:])


def parse_splits(text: str) -> dict[str, float]:
    """``"train=0.9,val=0.05,test=0.05"`` -> ordered fractions summing to 1."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        try:
            frac = float(value)
        except ValueError:
            frac = -1.0
        if (
            not eq
            or not shardlib.SHARD_PATTERN.match(f"{name}-000000.tar")
            or not 0 <= frac <= 1
            or name in out
        ):
            raise UserError(
                f"{part!r} should be NAME=FRACTION (lower-case name, fraction in [0, 1])", option="split"
            )
        out[name] = frac
    if not out or not math.isclose(sum(out.values()), 1.0, abs_tol=1e-6):
        raise UserError(f"fractions {out} should sum to 1", option="split")
    return out


def split_counts(num_scenes: int, splits: dict[str, float]) -> dict[str, int]:
    """Exact per-split counts (largest remainder; ties go to the earlier split)."""
    raw = {name: frac * num_scenes for name, frac in splits.items()}
    counts = {name: int(math.floor(v)) for name, v in raw.items()}
    order = sorted(splits, key=lambda n: (-(raw[n] - counts[n]), list(splits).index(n)))
    for name in order[: num_scenes - sum(counts.values())]:
        counts[name] += 1
    return counts


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    scenes: tuple[int, ...]  # dataset scene indices, ascending

    @property
    def name(self) -> str:
        return shardlib.shard_name(self.split, self.index)


def plan_shards(num_scenes: int, splits: dict[str, float], shard_size: int) -> list[ShardPlan]:
    plans: list[ShardPlan] = []
    start = 0
    for split, count in split_counts(num_scenes, splits).items():
        for j, lo in enumerate(range(0, count, shard_size)):
            hi = min(lo + shard_size, count)
            plans.append(ShardPlan(split, j, tuple(range(start + lo, start + hi))))
        start += count
    return plans


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that determines the dataset's bytes (workers and cluster address do not).

    ``device`` is part of it: Cycles on a GPU traces the same scene to slightly different pixels than on
    the CPU (another floating-point path), so a dataset is rendered on one device throughout and a resumed
    job must use the same one. Manifests written before it existed were rendered on the CPU (the default).
    """

    num_scenes: int
    seed: int = 0
    resolution: int = 128
    samples: int = 16
    engine: str = "CYCLES"
    device: str = "cpu"
    splits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SPLITS))
    shard_size: int = 1000
    sampler: dict[str, Any] = field(default_factory=dict)  # every SamplerConfig field

    @property
    def layer_slots(self) -> int:
        """Layer members per sample (K on the data side): the most objects a scene may hold, i.e. the
        sampler's ``max_objects``. Derived, so the two cannot disagree."""
        return int(self.sampler_config().max_objects)

    def sampler_config(self) -> Any:
        """The frozen ``SamplerConfig`` every scene of the dataset is sampled with."""
        from synth.scene.sampler import SamplerConfig

        return SamplerConfig(**_sampler_kwargs(SamplerConfig, self.sampler))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        # Manifests written before layer_slots was derived also hold it; it always equalled max_objects.
        data = {k: v for k, v in data.items() if k != "layer_slots"}
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UserError(f"generation config: unknown field(s) {sorted(unknown)}")
        return cls(**data)

    def plan(self) -> list[ShardPlan]:
        return plan_shards(self.num_scenes, self.splits, self.shard_size)


def make_config(
    num_scenes: int,
    *,
    seed: int = 0,
    resolution: int = 128,
    samples: int = 16,
    engine: str = "CYCLES",
    device: str = "cpu",
    splits: dict[str, float] | None = None,
    shard_size: int = 1000,
    sampler_overrides: dict[str, Any] | None = None,
) -> GenerationConfig:
    """Validate options and freeze the sampler config into a :class:`GenerationConfig`."""
    from synth.scene.sampler import SamplerConfig

    for name, value, lo in (
        ("num_scenes", num_scenes, 1),
        ("resolution", resolution, 8),
        ("samples", samples, 1),
        ("shard_size", shard_size, 1),
    ):
        if value < lo:
            raise UserError(f"{value} should be >= {lo}", option=name)
    if engine not in RENDER_ENGINES:
        raise UserError(f"{engine!r} should be one of {', '.join(RENDER_ENGINES)}", option="engine")
    if device not in RENDER_DEVICES:
        raise UserError(f"{device!r} should be one of {', '.join(RENDER_DEVICES)}", option="device")
    overrides = dict(sampler_overrides or {})
    # the image and render settings live in the sampler config, which builds the spec's camera and render
    overrides.update(width=resolution, height=resolution, samples=samples, engine=engine)
    overrides.setdefault("check_res", min(64, resolution))  # as `cobl synth scene` does, so its scenes match
    try:
        sampler = SamplerConfig(**_sampler_kwargs(SamplerConfig, overrides, strict=True))
    except (TypeError, ValueError) as err:
        raise UserError(f"sampler config: {err}") from None
    return GenerationConfig(
        num_scenes=num_scenes,
        seed=seed,
        resolution=resolution,
        samples=samples,
        engine=engine,
        device=device,
        splits=dict(splits or DEFAULT_SPLITS),
        shard_size=shard_size,
        sampler=_jsonable(dataclasses.asdict(sampler)),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def dataset_scene_spec(config: GenerationConfig, index: int):
    """The SceneSpec of scene ``index`` exactly as the dataset job renders it (for re-rendering one scene)."""
    from synth.scene.sampler import SamplingError, sample_scene

    sampler = config.sampler_config()
    for attempt in range(SAMPLING_ATTEMPTS):
        try:
            return sample_scene(scene_seed(config.seed, index, attempt), sampler, scene_id(index))
        except SamplingError:
            if attempt == SAMPLING_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _sampler_kwargs(cls: Any, data: dict[str, Any], strict: bool = False) -> dict[str, Any]:
    """JSON lists back to the tuples a frozen SamplerConfig expects."""
    if strict:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown SamplerConfig field(s) {sorted(unknown)}")
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            v = data[f.name]
            out[f.name] = _tuplify(v) if isinstance(v, list) else v
    return out


def _tuplify(v: Any) -> Any:
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v
