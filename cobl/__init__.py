"""CObL: Concurrent Object Layers, the model: one frozen diffusion UNet shared over K object slots and a
background slot, with trained cross-slot modules, its codecs and configs, and the shard loader.

Kept import-light on purpose: the CLI imports this package at start-up without pulling in torch or diffusers.
"""

__version__ = "0.1.0"
