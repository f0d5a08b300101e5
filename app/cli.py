"""The ``cobl`` command. Each roof module registers its own subcommands:

  * ``app/cli_synth.py`` -> ``cobl synth scene|run|verify|publish|rerender``
  * ``app/cli_train.py`` -> ``cobl train-vae``, ``cobl train-prior``, ``cobl train``
  * ``app/cli_infer.py`` -> ``cobl infer``, ``cobl eval``
  * ``app/cli_model.py`` -> ``cobl model summary``
  * ``app/demo.py``      -> ``cobl demo``

A module's ``register(subparsers)`` adds parsers whose ``func(args) -> int`` runs the command; heavy imports
(bpy, torch, ray) happen inside ``func`` so ``cobl --help`` stays fast.
"""

from __future__ import annotations

import sys

from app import cli_infer, cli_model, cli_synth, cli_train, demo
from app.parser import run_cli
from app.threads import configure_threads

COMMAND_MODULES = (cli_synth, cli_train, cli_infer, cli_model, demo)


def main(argv: list[str] | None = None) -> int:
    configure_threads()
    return run_cli(argv, COMMAND_MODULES)


if __name__ == "__main__":
    sys.exit(main())
