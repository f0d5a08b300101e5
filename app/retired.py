"""Flags that were renamed: the old spelling stops the command with one line naming the new one (exit 2),
instead of being accepted as a second name for the same thing or failing as an unknown flag."""

from __future__ import annotations

import argparse
from typing import Any


class _Retired(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, replacement: str, **kwargs: Any) -> None:
        kwargs.update(nargs="*", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        super().__init__(option_strings, argparse.SUPPRESS, **kwargs)
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None):
        parser.error(f"{option} was replaced by {self.replacement}")


def retire(parser: argparse.ArgumentParser, flag: str, replacement: str) -> None:
    """``flag`` (with any values) now fails at parse time: ``... error: FLAG was replaced by REPLACEMENT``."""
    parser.add_argument(flag, action=_Retired, replacement=replacement)
