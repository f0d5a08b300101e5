"""``python -m app.train_process`` (or ``accelerate launch -m``, ``torchrun -m``): one training process.

The same options as ``cobl train`` (without ``--num-processes``: the launcher provides the processes).
"""

from __future__ import annotations

import sys

from app.cli_train import main

if __name__ == "__main__":
    sys.exit(main())
