"""``cobl synth ...``: single scenes (app/cli_scene.py) and dataset jobs (app/cli_dataset.py)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from app import cli_dataset, cli_scene

    parser = subparsers.add_parser("synth", help="render scenes and build/verify/publish datasets")
    sub = parser.add_subparsers(dest="synth_command", required=True, parser_class=type(parser))
    cli_scene.register(sub)
    cli_dataset.register(sub)
