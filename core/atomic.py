"""Write-then-rename, so that an interrupted job never leaves a half-written file under its final name.

The only paths this module ever deletes are its own temporaries: the block's temporary output, and the
earlier version of ``final`` after it has been moved aside and the new one is in place (so a failure at any
point leaves either the old ``final`` or the new one, never neither). Whether ``final`` may be replaced at
all is the caller's decision (``core.outdir`` for a user's ``--out``); the current directory, its parents
and ``/`` are refused here as well, whatever the caller decided.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.errors import UserError


def is_protected(path: str | os.PathLike) -> bool:
    """True for ``/``, the current directory and every parent of it: never replaced, never emptied."""
    resolved = Path(path).resolve()
    cwd = Path.cwd().resolve()
    return resolved == Path(resolved.anchor) or resolved == cwd or resolved in cwd.parents


def _temp_name(final: Path, tag: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".{tag}", dir=final.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it onto ``final`` only if the block succeeds.

    Works for a file or a directory written at the temporary path. An existing ``final`` of the same kind is
    replaced (moved aside first, deleted only once the new one is in place); one of the other kind is an
    error, as are ``/``, the current directory and its parents.
    """
    final = Path(os.path.abspath(final))
    if is_protected(final):
        raise UserError(f"{final}: refusing to replace the current directory, a parent of it or /")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(final, "tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written at {tmp} for {final}")
        if final.exists() and final.is_dir() != tmp.is_dir():
            have, want = ("a directory", "a file") if final.is_dir() else ("a file", "a directory")
            raise UserError(f"{final}: exists and is {have}, not {want}")
        if final.is_dir():
            aside = _temp_name(final, "old")
            os.replace(final, aside)
            try:
                os.replace(tmp, final)
            except OSError:
                os.replace(aside, final)
                raise
            _remove(aside)
        else:
            os.replace(tmp, final)
    finally:
        _remove(tmp)


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(final, text.encode("utf-8"))
