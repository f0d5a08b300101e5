"""The ``--out`` policy: a command never deletes or replaces what it did not create.

Every command that writes a folder or file a user named checks it here before any work:

- ``/``, the current directory and its parents are refused always;
- an existing, non-empty folder is refused unless it holds this command's own earlier output, recognised by
  the marker the command wrote there (``MARKER``, or the command's own record such as a dataset's
  ``manifest.json``), and then it is replaced only with ``--overwrite`` (or resumed, for resumable commands);
- an existing file is replaced only when this command wrote it and the user passes ``--overwrite``;
- the place is tried for writing (a temporary file created and removed), so an unwritable ``--out`` fails
  on one line before the work instead of with a traceback after it.

Errors are ``UserError(option=...)``: the CLI words them as the flag.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.atomic import is_protected, write_text_atomic
from core.errors import UserError

MARKER = ".cobl-output.json"  # {"command": "synth scene"}: written into every folder a command creates

NEW, RESUME, REPLACE = "new", "resume", "replace"


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor)


def probe_writable(path: str | os.PathLike, option: str = "out") -> None:
    """Fail with one line unless something can be created at ``path`` (a temporary file is created in the
    nearest existing folder on the way and removed at once; nothing else is written)."""
    path = Path(os.path.abspath(path))
    base = _nearest_existing(path if not path.exists() or path.is_dir() else path.parent)
    if not base.is_dir():
        raise UserError(f"{path}: {base} is a file, not a folder", option=option)
    try:
        fd, name = tempfile.mkstemp(prefix=".cobl-write-check-", dir=base)
    except OSError as err:
        raise UserError(f"{path}: cannot write in {base} ({err.strerror or err})", option=option) from None
    os.close(fd)
    os.unlink(name)


def written_by(path: str | os.PathLike) -> str | None:
    """The command whose marker a folder holds, or None."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        command = json.loads(marker.read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None
    return command if isinstance(command, str) else None


def mark_output(path: str | os.PathLike, command: str) -> None:
    """Record in folder ``path`` that ``command`` wrote it (what ``check_output_dir`` recognises)."""
    write_text_atomic(Path(path) / MARKER, json.dumps({"command": command}) + "\n")


def check_output_dir(
    path: str | os.PathLike,
    command: str,
    *,
    overwrite: bool = False,
    option: str = "out",
    resumable: bool = False,
    own_record: str | tuple[str, ...] = (),
    ignore: tuple[str, ...] = (),
) -> str:
    """Check a folder ``--out`` before ``command`` runs; returns NEW (absent or empty), RESUME (the
    command's own earlier output and ``resumable``) or REPLACE (its own and ``overwrite``).

    ``own_record``: file name(s) that mark the command's own output as well as ``MARKER`` does (a dataset's
    ``manifest.json``, a run's options), for folders written before markers existed. ``ignore``: entries a
    launcher writes for this very command before it runs (Ray Train's storage), not counted."""
    records = (own_record,) if isinstance(own_record, str) else tuple(own_record)
    path = Path(path)
    if is_protected(path):
        raise UserError(
            f"{path}: is the current directory, a parent of it or /; give a new folder", option=option
        )
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder", option=option)
    state = NEW
    if path.is_dir() and any(p.name not in ignore for p in path.iterdir()):
        own = written_by(path) == command or any((path / name).exists() for name in records)
        if not own:
            raise UserError(
                f"{path}: exists, is not empty and was not written by `cobl {command}`; give a new or "
                "empty folder (nothing in it is touched)",
                option=option,
            )
        if resumable:
            state = RESUME
        elif overwrite:
            state = REPLACE
        else:
            raise UserError(
                f"{path}: holds an earlier `cobl {command}` output; pass --overwrite to replace it, or give "
                "a new folder",
                option=option,
            )
    probe_writable(path, option)
    return state


def check_output_file(
    path: str | os.PathLike,
    command: str,
    is_own: Callable[[Path], bool],
    *,
    overwrite: bool = False,
    option: str = "out",
) -> None:
    """Check a file ``--out`` before ``command`` runs: new, or this command's own (``is_own``) and
    ``overwrite``; its folder must be writable."""
    path = Path(path)
    if path.is_dir() or is_protected(path):
        raise UserError(f"{path}: is a folder; give a file name", option=option)
    if path.exists():
        if not is_own(path):
            raise UserError(
                f"{path}: exists and was not written by `cobl {command}`; give a new file name",
                option=option,
            )
        if not overwrite:
            raise UserError(
                f"{path}: holds an earlier `cobl {command}` result; pass --overwrite to replace it",
                option=option,
            )
    probe_writable(path, option)
