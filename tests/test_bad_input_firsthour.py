"""A newcomer's first hour (issue 20): defaults that fit each other, `--help` with defaults and choices, a
notice for an empty split."""

from __future__ import annotations

import pytest

from app.flag_checks import default_object_range
from cobl.configs import tiny_config
from core.policy import DEFAULT_OBJECTS, DEFAULT_RESOLUTION
from tests.badinput import call


def test_default_data_fits_the_default_model():
    """Scenes rendered with the defaults train the default model without a skip or a resize."""
    config = tiny_config()
    assert default_object_range(None, None) == DEFAULT_OBJECTS
    assert DEFAULT_OBJECTS[1] == config.num_objects and config.resolution == DEFAULT_RESOLUTION
    assert default_object_range(5, None) == (5, 5) and default_object_range(None, 1) == (1, 1)


@pytest.mark.parametrize(
    "argv, shown",
    [
        (["synth", "run", "--help"], ["--resolution RESOLUTION", f"(default: {DEFAULT_RESOLUTION})",
                                      "scenes per shard (default 1000)"]),
        (["synth", "scene", "--help"], [f"(default: {DEFAULT_RESOLUTION})", "(default: 0)"]),
        (["train", "--help"], ["{cosine,linear,", "(default: 1000)", "sd 2 as the authors, tiny 8"]),
        (["train-vae", "--help"], ["(default: 1500)", "(default: 0.001)"]),
        (["infer", "--help"], ["(default: cobl_layers)", "{ddim,"]),
    ],
)
def test_help_shows_defaults_and_choices(capsys, argv, shown):
    code, out, _ = call(capsys, argv)
    assert code == 0
    text = " ".join(out.split())
    for fragment in shown:
        assert " ".join(fragment.split()) in text, fragment


def test_an_empty_split_gets_a_notice():
    from app.cli_dataset import empty_split_notices
    from synth.dataset.plan import DEFAULT_SPLITS, make_config

    notices = empty_split_notices(make_config(8, resolution=32), "train=0.9,val=0.05,test=0.05")
    assert len(notices) == 1 and "split 'test' gets 0 of 8 scenes" in notices[0]
    assert empty_split_notices(make_config(60, resolution=32, splits=DEFAULT_SPLITS), "...") == []


def readme_cli_lines() -> list[list[str]]:
    """The commands of README's "The CLI" block, as a shell splits them (comments dropped)."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("## The CLI", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_readme_cli_lines_parse_as_printed():
    """Every `cobl`/`splinelens` line of the README parses with today's flags (a renamed flag fails here)."""
    from app.cli import COMMAND_MODULES
    from app.parser import build_parser
    from splinelens.cli import build_parser as splinelens_parser

    lines = readme_cli_lines()
    assert [words[0] for words in lines[:2]] == ["source", "cobl"]
    for words in lines[1:]:
        parser = {"cobl": build_parser(COMMAND_MODULES), "splinelens": splinelens_parser()}[words[0]]
        parser.parse_args(words[1:])  # argparse exits (a test failure) on an unknown or missing flag
