"""The dataset job's progress line: done/total, live workers/requested, rate, ETA, failures, shards."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


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
        eta = fmt_seconds(remaining / rate) if rate > 0 else "?"
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


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"
