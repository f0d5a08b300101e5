"""Which device Cycles renders on: ``"cpu"``, or ``"gpu"`` = OptiX if Cycles finds an OptiX device, else
CUDA, else a one-line UserError naming what it found (nothing is rendered or written then).

The preferences are process-wide (``bpy.context.preferences``), the device per scene
(``scene.cycles.device``); BlenderRenderer selects once at start-up and sets the scene's device per render.
"""

from __future__ import annotations

import bpy

from core.errors import UserError
from core.policy import GPU_BACKENDS, RENDER_DEVICES
from synth.render.blender.quiet import quiet_stdout


def select_device(device: str) -> str:
    """Enable ``device`` for Cycles in this process; return what renders, e.g. ``"CPU"`` or
    ``"OPTIX: NVIDIA H200"`` (recorded in scene.json's render info)."""
    if device not in RENDER_DEVICES:
        raise UserError(f"{device!r} should be one of {', '.join(RENDER_DEVICES)}", option="device")
    if device == "cpu":
        return "CPU"
    prefs = bpy.context.preferences.addons["cycles"].preferences
    found = []
    for backend in GPU_BACKENDS:
        try:
            prefs.compute_device_type = backend
        except TypeError:  # this Blender build has no such backend
            found.append(f"{backend}: not built in")
            continue
        with quiet_stdout(True):  # "CUEW initialization failed" and the like
            prefs.refresh_devices()
        gpus = [d for d in prefs.devices if d.type == backend]
        if gpus:
            for d in prefs.devices:
                d.use = d.type == backend  # the GPUs only: a CPU device beside them would change the pixels
            return f"{backend}: " + ", ".join(sorted({d.name for d in gpus}))
        found.append(f"{backend}: no device")
    others = sorted({f"{d.type} {d.name!r}" for d in prefs.devices}) or ["nothing"]
    raise UserError(
        f"gpu: Cycles found no GPU ({'; '.join(found)}; it sees {', '.join(others)}); use --device cpu",
        option="device",
    )
