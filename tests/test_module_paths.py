"""Every module path the project prints or publishes resolves.

Scans the docs (docs/*.md, README.md), every docstring and comment of the project's Python files, and every
string of the modules that write the dataset card and croissant.json for dotted names of the project's
packages (``core.layers.composite``, ``synth.dataset.plan.scene_seed``), and resolves each by importing
its longest module prefix and looking the rest up as attributes. A renamed or moved module leaves such a
name behind in prose, where nothing else would notice it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "assets", "synth", "cobl", "infer", "train", "app", "splinelens", "bench", "tests")
# A dotted name starting with a package, not part of a longer name, path or URL.
DOTTED = re.compile(r"(?<![\w./\\-])((?:" + "|".join(PACKAGES) + r")(?:\.[A-Za-z_]\w*)+)")
# Endings that make a dotted name a file name (``train.py``, ``cobl.json``), not a module path.
FILE_ENDINGS = {
    "py", "md", "json", "jsonl", "yaml", "yml", "toml", "txt", "png", "jpg", "tar", "npy", "npz", "html",
    "csv", "h5", "psd", "ora", "exr", "hdr", "log", "sh", "cfg", "ini", "safetensors", "bin", "pt", "gz",
}
# The modules whose strings are the published text (dataset card, Hub header, croissant.json).
PUBLISHED = ("synth/dataset/publish.py", "synth/dataset/card.py", "synth/dataset/croissant.py",
             "synth/dataset/datasheet.py")


def dotted_names(text: str) -> list[str]:
    return [m for m in DOTTED.findall(text) if m.rsplit(".", 1)[-1] not in FILE_ENDINGS]


def python_files() -> list[Path]:
    files: list[Path] = []
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def docstrings_and_comments(path: Path) -> str:
    source = path.read_text()
    texts: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                texts.append(doc)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            texts.append(tok.string)
    return "\n".join(texts)


def string_constants(path: Path) -> str:
    return "\n".join(
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def references() -> dict[str, set[str]]:
    """dotted name -> the files naming it."""
    found: dict[str, set[str]] = {}

    def add(text: str, where: Path) -> None:
        for name in dotted_names(text):
            found.setdefault(name, set()).add(str(where.relative_to(ROOT)))

    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        add(doc.read_text(), doc)
    for path in python_files():
        add(docstrings_and_comments(path), path)
    for rel in PUBLISHED:
        add(string_constants(ROOT / rel), ROOT / rel)
    return found


def resolves(name: str) -> bool:
    """Import the longest module prefix of ``name``, then look the remaining parts up as attributes
    (a dataclass field without a default counts as an attribute of its class)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            if importlib.util.find_spec(module_name) is None:
                continue
        except ModuleNotFoundError:  # a parent is not a package
            continue
        obj = importlib.import_module(module_name)
        for attr in parts[cut:]:
            if hasattr(obj, attr):
                obj = getattr(obj, attr)
            elif dataclasses.is_dataclass(obj) and attr in {f.name for f in dataclasses.fields(obj)}:
                return attr == parts[-1]
            else:
                return False
        return True
    return False


def test_the_scanner_finds_and_rejects_moved_modules() -> None:
    """The names main had before the fix are found in prose and do not resolve (so the test can fail)."""
    prose = (
        "composite with `cobl.layers.composite`, pad with ``cobl.layers.EMPTY_RGB``; see synth.schema, "
        "synth.groundtruth, synth.occlusion, cobl.atomic and synth.blender.renderer.BlenderRenderer. "
        "Not names: synth/dataset/plan.py, train.py, foo.cobl.layers, https://x.org/core.spec"
    )
    names = dotted_names(prose)
    assert names == [
        "cobl.layers.composite", "cobl.layers.EMPTY_RGB", "synth.schema", "synth.groundtruth",
        "synth.occlusion", "cobl.atomic", "synth.blender.renderer.BlenderRenderer",
    ]
    assert not any(resolves(n) for n in names)
    for good in ("core.layers.composite", "synth.dataset.plan.scene_seed", "synth.render.groundtruth",
                 "synth.dataset.plan.GenerationConfig.num_scenes", "app.cli.main"):
        assert resolves(good), good


@pytest.fixture(scope="module")
def found() -> dict[str, set[str]]:
    return references()


def test_every_module_path_in_docs_docstrings_and_published_text_resolves(found) -> None:
    assert len(found) > 50  # the scan sees the project's prose, not an empty set
    broken = {name: sorted(where) for name, where in found.items() if not resolves(name)}
    lines = [f"{name}: named in {', '.join(where)}" for name, where in sorted(broken.items())]
    assert not broken, "\n".join(lines)
