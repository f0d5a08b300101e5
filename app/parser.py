"""The CLI's machinery and error policy: subcommand modules register parsers; bad flags and bad input are one
line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from core.errors import UserError


def _no_default(value: object) -> bool:
    """Nothing worth printing as a default: unset, a switch that is off, or suppressed (``0`` is a value)."""
    return value is None or value is False or value is argparse.SUPPRESS


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` lists each option's default (argparse already shows choices as ``{a,b}``), unless its help
    text states it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = "default" in text.lower()
        if shown or not action.option_strings or action.required or _no_default(action.default):
            return text
        return f"{text} (default: %(default)s)".strip()


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors on one line and exit code 2 (argparse's own usage dump is noise in logs), and
    every default in ``--help``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:  # noqa: D102
        action = super().add_argument(*args, **kwargs)
        if action.help is None and action.option_strings and not action.required:
            if not _no_default(action.default):
                action.help = "(default: %(default)s)"  # argparse prints no help line for help=None
        return action

    def error(self, message: str) -> None:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_reporting_errors(command: Callable[[], int | None]) -> int:
    """Run ``command``; a UserError becomes ``cobl: error: ...`` on one line and exit code 2."""
    try:
        return int(command() or 0)
    except UserError as err:
        print(f"cobl: error: {err.as_flag()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cobl: interrupted", file=sys.stderr)
        return 130


def build_parser(command_modules: Sequence[ModuleType]) -> argparse.ArgumentParser:
    """The ``cobl`` parser with the subcommands that each module's ``register(subparsers)`` adds."""
    parser = OneLineParser(prog="cobl", description="Concurrent Object Layers: data, training, inference.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for module in command_modules:
        module.register(sub)
    return parser


def run_cli(argv: list[str] | None, command_modules: Sequence[ModuleType]) -> int:
    """Parse ``argv`` against ``command_modules``' subcommands and run the chosen one."""
    args = build_parser(command_modules).parse_args(argv)
    return run_reporting_errors(lambda: args.func(args))
