"""The ``cobl`` command. Each part of the project registers its own subcommands:

  * ``synth/cli.py``  -> ``cobl synth scene|run|verify|publish``
  * ``train/cli.py``  -> ``cobl train-vae``, ``cobl train``
  * ``infer/cli.py``  -> ``cobl infer``, ``cobl eval``
  * ``cobl/demo.py``  -> ``cobl demo``

A module's ``register(subparsers)`` adds parsers whose ``func(args) -> int`` runs the command; heavy imports
(bpy, torch, ray) happen inside ``func`` so ``cobl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cobl.errors import UserError

COMMAND_MODULES = ("synth.cli", "train.cli", "infer.cli", "cobl.demo")


class _Parser(argparse.ArgumentParser):
    """argparse with errors on one line and exit code 2 (argparse's own usage dump is noise in logs)."""

    def error(self, message: str) -> None:  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cobl", description="Concurrent Object Layers: data, training, inference.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"cobl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cobl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
