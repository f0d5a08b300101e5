"""CObL: Concurrent Object Layers.

Kept import-light on purpose: ``synth`` imports the compositing math and the error type from here without
pulling in torch or diffusers.
"""

__version__ = "0.1.0"
