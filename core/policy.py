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

# The image size every command defaults to (`cobl synth scene|run`, the tiny model), so data rendered with
# the defaults is what the default model trains on, without a resize.
DEFAULT_RESOLUTION = 64

# The object count range scenes are rendered with by default, and the tiny model's K: its upper end, so
# every default scene fits the default model (a scene with more objects than K is skipped).
DEFAULT_OBJECTS = (2, 4)

# Upper bounds on sizes a user gives, checked before any work (a typo like 100000 fails at once instead of
# rendering or allocating for minutes). Scene ids are s{index:08d} and shard names {split}-{index:06d}.
MAX_RESOLUTION = 4096
MAX_SAMPLES = 65536  # Cycles samples per pixel
MAX_SCENES = 10**8
MAX_SHARDS = 10**6

# A loader stops (one line naming the cause) when this many samples in a row were skipped: the data cannot
# be read as configured (wrong --num-objects, corrupt shards), and waiting longer only prints warnings.
MAX_SKIPPED_IN_A_ROW = 200
# ... or when more than this share of the samples it has read were corrupt (after at least
# MIN_SAMPLES_FOR_CORRUPT_SHARE of them): a dataset damaged this much is not silently trained or scored on.
MAX_CORRUPT_SHARE = 0.2
MIN_SAMPLES_FOR_CORRUPT_SHARE = 20

# Seconds to wait for a Ray cluster given with --address to accept a connection.
RAY_CONNECT_TIMEOUT_S = 15.0

# The largest photo `cobl infer` reads (pixels), beyond which PIL's decompression-bomb guard would trip.
MAX_PHOTO_PIXELS = 64 * 2**20
