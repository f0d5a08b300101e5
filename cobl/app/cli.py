"""The ``cobl`` command. Each roof module registers its own subcommands:

  * ``cobl/app/cli_synth.py`` -> ``cobl synth scene|run|verify|publish|rerender|seed``
  * ``cobl/app/cli_train.py`` -> ``cobl train-vae``, ``cobl train``
  * ``cobl/app/cli_infer.py`` -> ``cobl infer``, ``cobl eval``
  * ``cobl/app/cli_model.py`` -> ``cobl model summary``
  * ``cobl/app/demo.py``      -> ``cobl demo``

A module's ``register(subparsers)`` adds parsers whose ``func(args) -> int`` runs the command; heavy imports
(bpy, torch, ray) happen inside ``func`` so ``cobl --help`` stays fast.
"""

from __future__ import annotations

import sys

from cobl.app import cli_infer, cli_model, cli_synth, cli_train, demo
from cobl.app.parser import run_cli

COMMAND_MODULES = (cli_synth, cli_train, cli_infer, cli_model, demo)


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, COMMAND_MODULES)


if __name__ == "__main__":
    sys.exit(main())
