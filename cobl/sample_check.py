"""Every sample checked against its own record, and a stream of samples that has gone bad stopped.

``layer_record_mismatch``: a sample's layer members must agree with its ``scene.json``: as many non-empty
layers as the scene declares objects, and the layer members numbered without a gap. A shard that lost a
``layer_NN.png`` would otherwise be read as a scene with one object fewer, by training and by evaluation.

``SkipLedger``: the loader's account of skipped samples. It counts them by reason (``corrupt``,
``too_many_objects``), warns once per reason instead of once per sample, and stops the stream with one line
naming the cause and the option to change when ``MAX_SKIPPED_IN_A_ROW`` samples in a row were skipped or
more than ``MAX_CORRUPT_SHARE`` of those read were corrupt (``LoaderStopped``).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from core.errors import UserError
from core.policy import MAX_CORRUPT_SHARE, MAX_SKIPPED_IN_A_ROW, MIN_SAMPLES_FOR_CORRUPT_SHARE


def declared_objects(scene: Any) -> int | None:
    """The object count a parsed scene.json declares (the dataset's ground-truth record, or a bare
    ``num_objects``), or None when it declares none."""
    if not isinstance(scene, dict):
        return None
    truth = scene.get("ground_truth")
    if isinstance(truth, dict) and isinstance(truth.get("objects"), list):
        return len(truth["objects"])
    count = scene.get("num_objects")
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def layer_record_mismatch(scene: Any, member_indices: list[int], nonempty: int) -> str | None:
    """Why a sample's layers disagree with its scene.json, or None when they agree.

    ``member_indices``: the indices of its ``layer_NN.png`` members; ``nonempty``: how many of them hold
    any pixel."""
    declared = declared_objects(scene)
    if declared is None:
        return "scene.json is missing or declares no objects; the layers cannot be checked"
    gaps = sorted(set(range(max(member_indices, default=-1) + 1)) - set(member_indices))
    if gaps:
        return f"layer member(s) {', '.join(f'layer_{i:02d}' for i in gaps)} missing"
    if nonempty != declared:
        return f"{nonempty} non-empty layer(s) but scene.json declares {declared} object(s)"
    return None


class LoaderStopped(UserError):
    """The sample stream stopped: the data cannot be used as configured (one line, naming the option).

    Raised inside a DataLoader worker, it reaches the main process rebuilt by torch from its formatted
    traceback (``exc_type(text)``); the constructor recovers the one-line message and option from it."""

    def __init__(self, message: str, *, option: str | None = None):
        if option is None and "Traceback (most recent call last)" in message:
            last = message.strip().splitlines()[-1]
            last = last.split(f"{type(self).__name__}: ", 1)[-1]
            found = re.match(r"([a-z_]+): (.*)", last)
            option, message = (found.group(1), found.group(2)) if found else (None, last)
        super().__init__(message, option=option)


class SkipLedger:
    """Counts skips into ``counts`` (shared with the dataset, which reports them) and applies the bounds."""

    def __init__(self, counts: dict[str, int], num_objects: int, depth: bool = False) -> None:
        self.counts = counts
        self.num_objects = num_objects
        self.depth = depth  # the model reads depth.npy: a sample without one is named as such
        self.in_a_row = 0
        self.read = 0
        self.warned: set[str] = set()
        self.last: dict[str, str] = {}

    def decoded(self) -> None:
        self.read += 1  # reads are counted here, apart from the skip reasons in ``counts``
        self.in_a_row = 0
        self._check_share()

    def skipped(self, reason: str, message: str) -> None:
        """Count a skipped sample; warn on the first of each reason; raise ``LoaderStopped`` past a bound."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.read += 1
        self.in_a_row += 1
        self.last[reason] = message
        if reason not in self.warned:
            self.warned.add(reason)
            warnings.warn(
                f"skipping {message} (further {reason} samples are counted, not shown one by one)",
                stacklevel=3,
            )
        if self.in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise self.stop(f"{self.in_a_row} samples in a row were skipped")
        self._check_share()

    def _check_share(self) -> None:
        corrupt = self.counts.get("corrupt", 0)
        if self.read >= MIN_SAMPLES_FOR_CORRUPT_SHARE and corrupt > MAX_CORRUPT_SHARE * self.read:
            raise LoaderStopped(
                f"{corrupt} of {self.read} samples read are corrupt (more than {MAX_CORRUPT_SHARE:.0%}; "
                f"last: {self.last.get('corrupt', '?')}); check the shards with `cobl synth verify DIR`",
                option="data",
            )

    def stop(self, what: str) -> LoaderStopped:
        """The one-line error for a stream that yields nothing usable: its cause and the option to change."""
        counts = {k: v for k, v in self.counts.items() if v}
        shown = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no sample at all"
        many = self.counts.get("too_many_objects", 0)
        if many and many >= self.counts.get("corrupt", 0):
            return LoaderStopped(
                f"{what} ({shown}): the scenes hold more objects than the model's K = {self.num_objects}; "
                "give --num-objects at least the data's most objects per scene (its --max-objects)",
                option="num_objects",
            )
        last = self.last.get("corrupt", "")
        if self.depth and "depth.npy" in last:
            return LoaderStopped(
                f"{what} ({shown}): the model config is depth-conditioned but the samples carry no "
                "depth.npy; use a config without depth_condition or data rendered with depth",
                option="config",
            )
        detail = f"; last: {last}" if last else ""
        return LoaderStopped(f"{what} ({shown}{detail})", option="data")
