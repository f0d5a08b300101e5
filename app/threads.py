"""How the ``cobl`` processes use the CPU's threads; set by the roof before torch is imported.

OpenMP threads that reach a barrier first wait there for the others. GNU OpenMP (torch's CPU backend) spins
while it waits, by default for some 300,000 iterations, before it sleeps: on a dedicated machine that saves a
wake-up, on a shared one the spinning thread burns the time slice that its descheduled peer needs to reach
the barrier. Beside other busy processes two spinning threads ran the demo's training step 14x slower than
two waiting passively, and about as slow as one thread (docs/training.md, "Threads"). So the threads wait
passively unless the environment says otherwise (``OMP_WAIT_POLICY`` set by the user wins).
"""

from __future__ import annotations

import os
import sys

OMP_WAIT_POLICY = "PASSIVE"


def configure_threads() -> None:
    """Set the OpenMP wait policy for this process and its children (effective only before torch loads)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
