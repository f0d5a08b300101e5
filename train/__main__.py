"""``python -m train`` / ``accelerate launch -m train`` / ``torchrun -m train``: one training process.

The same options as ``cobl train`` (without ``--num-processes``: the launcher provides the processes).
"""

from __future__ import annotations

import sys

from train.cli import main

if __name__ == "__main__":
    sys.exit(main())
