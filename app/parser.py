"""The CLI's machinery and error policy: subcommand modules register parsers; bad flags and bad input are one
line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from core.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors on one line and exit code 2 (argparse's own usage dump is noise in logs)."""

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
