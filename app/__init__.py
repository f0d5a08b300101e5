"""The roof: the ``cobl`` CLI, the training entry points for launchers, and the demo app."""
