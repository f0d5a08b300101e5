"""1-D regression data: synthetic specs like ``sine:12`` or a CSV of x,y pairs."""

from __future__ import annotations

import csv
import os

import numpy as np

from splinelens.errors import InputError

TARGETS = {
    "sine": lambda x: np.sin(np.pi * x),
    "cos": lambda x: np.cos(np.pi * x),
    "abs": np.abs,
    "quad": lambda x: x**2,
    "sinquad": lambda x: np.sin(np.pi * x) + 0.3 * x**2,
}


def synthetic(name: str, n: int, jitter: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n points on [-1, 1] (optionally jittered, endpoints kept) of a named target function."""
    if name not in TARGETS:
        raise InputError(f"--data: unknown target {name!r}; expected one of {', '.join(sorted(TARGETS))}")
    if n < 2:
        raise InputError(f"--data: need at least 2 points, got {n}")
    x = np.linspace(-1.0, 1.0, n)
    if jitter > 0:
        rng = np.random.default_rng(seed)
        x[1:-1] += rng.uniform(-jitter, jitter, n - 2) * (2.0 / (n - 1))
    return x, TARGETS[name](x)


def read_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read x,y pairs (an optional header row is skipped); any other malformed row raises ``InputError``."""
    xs: list[float] = []
    ys: list[float] = []
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a text CSV of x,y pairs ({exc})") from None
    for lineno, row in enumerate(rows, start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise InputError(f"{path}:{lineno}: expected 2 columns x,y, got {len(row)}")
        try:
            x, y = float(row[0]), float(row[1])
        except ValueError:
            if lineno == 1 and not xs:
                continue  # header
            raise InputError(f"{path}:{lineno}: expected two numbers x,y, got {','.join(row)!r}") from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InputError(f"{path}:{lineno}: x and y must be finite numbers")
        xs.append(x)
        ys.append(y)
    if len(xs) < 2:
        raise InputError(f"{path}: expected at least 2 data rows x,y, got {len(xs)}")
    x_arr = np.array(xs)
    if np.unique(x_arr).size != x_arr.size:
        raise InputError(f"{path}: x values must be distinct (a function of x is fitted)")
    order = np.argsort(x_arr)
    return x_arr[order], np.array(ys)[order]


def load(spec: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Resolve a ``--data`` value: ``NAME:N[:JITTER]`` for synthetic data, otherwise a CSV path."""
    if os.path.exists(spec) or spec.lower().endswith(".csv"):
        return read_csv(spec)
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise InputError(f"--data: expected NAME:N[:JITTER] (e.g. sine:12) or a CSV path, got {spec!r}")
    try:
        n = int(parts[1])
        jitter = float(parts[2]) if len(parts) == 3 else 0.0
    except ValueError:
        raise InputError(f"--data: expected an integer N and float JITTER in {spec!r}") from None
    return synthetic(parts[0], n, jitter, seed)
