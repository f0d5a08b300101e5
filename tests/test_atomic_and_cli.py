"""Write-then-rename and the CLI's error contract."""

import pytest

from core.atomic import atomic_path, write_text_atomic


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_file_and_dir(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "one")
    write_text_atomic(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    for text in ("x", "y"):
        with atomic_path(tmp_path / "d") as tmp:
            tmp.mkdir()
            (tmp / "f").write_text(text)
    assert (tmp_path / "d" / "f").read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "d"]
