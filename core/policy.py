"""The project's small policies, each defined once: thresholds, caps and accepted names that several floors
share. Everything else imports them from here, so changing a policy changes it everywhere."""

from __future__ import annotations

# A pixel belongs to a layer's mask when its alpha exceeds this (ids.png, modal/amodal masks, metrics).
ALPHA_THRESHOLD = 0.5

# A slot holds an object when its alpha mass exceeds this fraction of the image (the paper's 2 %): object
# discovery at inference, the order search, evaluation and the small-object rule of the metrics.
MIN_OBJECT_AREA = 0.02

# New datasets hold no object the method is defined not to report: the scene sampler's default minimum amodal
# area (ray-cast at its check resolution) is the rule above plus a margin for the anti-aliased alpha mass.
SAMPLED_MIN_OBJECT_AREA = MIN_OBJECT_AREA + 0.01

# Exhaustive searches over slot orders stop at this many occupied slots (6! = 720 orders).
MAX_ORDER_SEARCH_SLOTS = 6

# bg.png may differ from what the layers need to recomposite the photo exactly by at most this much per
# pixel and channel (in [0, 1] units, before 8-bit rounding), where the layers leave the background visible.
BACKGROUND_SLACK = 1.0 / 255.0

# PSNR of identical images is infinite; report this finite cap so JSON stays valid.
PSNR_CAP_DB = 100.0

# Render engines the renderer supports (bpy 5 names).
RENDER_ENGINES = ("CYCLES", "BLENDER_EEVEE")

# Devices the renderer renders on (``--device``), and the Cycles GPU backends tried for "gpu", in order.
RENDER_DEVICES = ("cpu", "gpu")
GPU_BACKENDS = ("OPTIX", "CUDA")

# Raster image files PIL reads (photos, depth images); HDR formats are separate.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# High-dynamic-range images Blender reads (HDRI worlds, and image textures beside IMAGE_SUFFIXES).
HDR_SUFFIXES = (".hdr", ".exr")

# The depth a depth-conditioned model is trained and evaluated on (cobl.depth): the renderer's exact
# depth (an oracle input: a user with a photo has none) or that depth degraded like a monocular estimate.
DEPTH_SOURCES = ("rendered", "monocular")
