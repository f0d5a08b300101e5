"""``DIR/manifest.json``: the record of a dataset — every finished shard with its checksum, totals, the
generator version, the full generation config and what rendering it cost (synth.dataset.cost) — and
``verify``, which re-checks the shards against it.

The manifest is rewritten atomically each time a shard completes, so after a kill it lists exactly the shards
that were finished; a resumed job trusts a shard only if its bytes still hash to the recorded sha256.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import write_text_atomic
from core.errors import UserError
from synth.dataset.cost import RunCost, summarize
from synth.dataset.plan import GenerationConfig  # the plan says which shards should exist
from synth.dataset.shards import sha256_file

MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
FORMAT = "cobl-webdataset"
MANIFEST_VERSION = 1


def generator_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"cobl {version('cobl')}"
    except PackageNotFoundError:  # not installed as a distribution (running from a source tree)
        return "cobl (source)"


@dataclass
class ShardRecord:
    name: str  # file name under DIR/shards/
    split: str
    index: int
    num_samples: int
    bytes: int
    sha256: str
    first_key: str
    last_key: str
    core_seconds: list[float] = field(default_factory=list)  # per scene, in key order (synth.dataset.cost)


@dataclass
class Manifest:
    config: dict[str, Any]
    shards: dict[str, ShardRecord] = field(default_factory=dict)
    generator: str = field(default_factory=generator_version)
    complete: bool = False
    runs: list[RunCost] = field(default_factory=list)  # one per `cobl synth run` invocation

    def cost(self) -> dict[str, Any]:
        """Throughput, core-seconds per scene (over the finished shards), restarts and failures."""
        return summarize(self.runs, (c for rec in self.shards.values() for c in rec.core_seconds))

    def totals(self) -> dict[str, Any]:
        per_split: dict[str, dict[str, int]] = {}
        for rec in self.shards.values():
            s = per_split.setdefault(rec.split, {"shards": 0, "samples": 0, "bytes": 0})
            s["shards"] += 1
            s["samples"] += rec.num_samples
            s["bytes"] += rec.bytes
        return {
            "shards": len(self.shards),
            "samples": sum(r.num_samples for r in self.shards.values()),
            "bytes": sum(r.bytes for r in self.shards.values()),
            "splits": dict(sorted(per_split.items())),
        }

    def to_dict(self) -> dict[str, Any]:
        shards = sorted(self.shards.values(), key=lambda r: (r.split, r.index))
        return {
            "format": FORMAT,
            "manifest_version": MANIFEST_VERSION,
            "generator": self.generator,
            "complete": self.complete,
            "totals": self.totals(),
            "cost": self.cost(),
            "config": self.config,
            "runs": [asdict(r) for r in self.runs],
            "shards": [asdict(r) for r in shards],
        }

    def save(self, root: str | os.PathLike) -> None:
        write_text_atomic(Path(root) / MANIFEST, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, root: str | os.PathLike) -> Manifest:
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise UserError(f"{path}: no manifest (is this a dataset directory written by `cobl synth run`?)")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: not valid JSON ({err})") from None
        if data.get("format") != FORMAT or data.get("manifest_version") != MANIFEST_VERSION:
            raise UserError(f"{path}: format/manifest_version should be {FORMAT!r}/{MANIFEST_VERSION}")
        try:
            shards = {r["name"]: ShardRecord(**r) for r in data["shards"]}
            return cls(
                config=data["config"],
                shards=shards,
                generator=data["generator"],
                complete=bool(data.get("complete")),
                runs=[RunCost.from_dict(r) for r in data.get("runs", [])],  # none before cost records
            )
        except (KeyError, TypeError) as err:
            raise UserError(f"{path}: malformed shard record or missing field ({err})") from None


def load_if_present(root: str | os.PathLike) -> Manifest | None:
    return Manifest.load(root) if (Path(root) / MANIFEST).is_file() else None


@dataclass
class VerifyReport:
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # "name: why"
    unexpected: list[str] = field(default_factory=list)  # shard files the manifest does not list
    incomplete: bool = False  # the manifest says the job has not finished

    @property
    def passed(self) -> bool:
        return not (self.missing or self.corrupt or self.incomplete)


def check_shard(path: Path, rec: ShardRecord) -> str | None:
    """Why the shard at ``path`` does not match its record, or None when it does."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != rec.bytes:
        return f"size {size} bytes, manifest says {rec.bytes}"
    digest = sha256_file(path)
    if digest != rec.sha256:
        return f"sha256 {digest[:12]}..., manifest says {rec.sha256[:12]}..."
    return None


def verify(root: str | os.PathLike) -> VerifyReport:
    """Re-hash every shard the manifest lists; report missing, corrupt and unlisted shards."""
    root = Path(root)
    manifest = Manifest.load(root)
    report = VerifyReport(incomplete=not manifest.complete)
    try:
        planned = [p.name for p in GenerationConfig.from_dict(manifest.config).plan()]
    except (TypeError, ValueError) as err:
        raise UserError(f"{root / MANIFEST}: config is not a generation config ({err})") from None
    report.missing = sorted(set(planned) - set(manifest.shards))
    for name, rec in sorted(manifest.shards.items()):
        why = check_shard(root / SHARDS_DIR / name, rec)
        if why is None:
            report.ok.append(name)
        elif why == "missing":
            report.missing.append(name)
        else:
            report.corrupt.append(f"{name}: {why}")
    report.missing.sort()
    shard_dir = root / SHARDS_DIR
    if shard_dir.is_dir():
        listed = set(manifest.shards)
        report.unexpected = sorted(p.name for p in shard_dir.glob("*.tar") if p.name not in listed)
    return report
