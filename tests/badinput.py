"""Helpers of the bad-input suite (tests/test_bad_input_*.py): run the real ``cobl`` entry point in-process
and check the contract of issue 20 — exit code 2, one line on stderr naming the flag or file, nothing left
behind (the watched folder's files, their bytes and times, are exactly as before)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import app.cli


def call(capsys, argv: list) -> tuple[int, str, str]:
    """``cobl ARGV`` in-process: (exit code, stdout, stderr); argparse's own exits count as exit codes."""
    capsys.readouterr()
    try:
        code = app.cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its bytes (folders as ``dir``)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in rel:
            continue
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def error_line(err: str) -> str:
    """The one line of ``cobl``'s stderr (Python warnings, which go to the log, are not counted)."""
    lines = [
        line for line in err.strip().splitlines()
        if line.strip() and "Warning" not in line and "/s]" not in line  # progress bars of work done
    ]
    assert len(lines) == 1, lines
    return lines[0]


def assert_refused(capsys, argv: list, *fragments: str, watch: Path | None = None) -> str:
    """``cobl ARGV`` exits 2 with one error line holding every fragment (the flag or the file) and leaves
    ``watch`` exactly as it was; returns the line."""
    before = snapshot(watch) if watch is not None else None
    code, _, err = call(capsys, argv)
    line = error_line(err)
    assert code == 2, (code, err)
    assert "error" in line and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    if watch is not None:
        assert snapshot(watch) == before, "the command left something behind or changed a file"
    return line
