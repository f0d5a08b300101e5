"""The roof: the ``cobl`` CLI, the training entry points for launchers, and the demo app.

Importing it sets ``OMP_WAIT_POLICY=PASSIVE`` (unless set) before anything loads torch: OpenMP threads that
spin while they wait for a descheduled sibling make every CPU step many times slower on a machine whose
cores other processes also use (a 64-pixel `cobl infer` took minutes instead of seconds, README "The CLI");
passive waiting costs little when the cores are idle.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
