"""BlenderRenderer: a long-lived bpy session that turns a SceneSpec into a RenderedScene.

Per scene: one full-frame render of the photo (with the Depth and Object Index passes); amodal object
renders (only that object visible to the camera, transparent film); clean background renders under the
objects' footprints (the covering objects removed, the others camera-invisible; see _clean_background).
Every render uses the same seed, samples and colour
management: the same camera samples are traced in each, so the layers recomposite and a pixel whose samples
all hit the same thing in two renders is bit-identical in both. That is what keeps the ground truth cheap
(bench/bench_groundtruth.py): object renders cover only the pixels the photo does not already determine
(around the object's projected hull, minus where the photo shows only that object or only the table), and
the background only the pixels some object covers; both as a few border renders (Cycles render border,
cropped, without the compositor), rectangles chosen by ``synth.render.regions``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable

import bpy
import numpy as np
import trimesh

from core.layers import ALPHA_CHANNEL
from core.policy import RENDER_ENGINES
from core.spec import RenderSettings, SceneSpec
from synth.render import groundtruth
from synth.render.blender import devices, passes
from synth.render.blender.quiet import quiet_stdout as _quiet_stdout
from synth.render.blender.scene_build import BuiltScene, build_scene, clear_scene
from synth.render.regions import cover_boxes, mask_box, projected_regions
from synth.render.scene_dir import RenderedScene

__all__ = ["BlenderRenderer", "RenderedScene"]

BOX_MARGIN = 1  # px around a projected hull: the 1.5 px pixel filter puts samples <= 0.75 px from a centre
RENDER_OVERHEAD_PX = 400.0  # see _overhead_px
INTERIOR_ERODE = 2  # pixels of the visible area trusted to be the object's alone, see _known_from_photo
DENOISE_REACH = 8  # pixels the denoiser's filter spreads an object's colour
Box = tuple[int, int, int, int]


def _default_mesh_provider(ref) -> trimesh.Trimesh:
    from assets.shapes import build_mesh

    return build_mesh(ref)


class BlenderRenderer:
    """Render SceneSpecs in this process's bpy. Create once per process (bpy state is global) and reuse.

    ``threads`` > 0 pins Cycles to that many threads (Ray workers use 1). ``mesh_provider`` maps an
    AssetRef to its trimesh (default ``assets.shapes.build_mesh``). ``device``: ``"cpu"`` or ``"gpu"``
    (``synth.render.blender.devices``; a UserError before anything renders when there is no GPU).
    """

    def __init__(
        self,
        threads: int = 0,
        mesh_provider: Callable | None = None,
        quiet: bool = True,
        device: str = "cpu",
    ) -> None:
        self.device = device
        self.threads = int(threads)
        self.mesh_provider = mesh_provider or _default_mesh_provider
        self.quiet = quiet
        bpy.ops.wm.read_factory_settings(use_empty=True)  # also resets the preferences: select after it
        self.device_name = devices.select_device(device)
        self.scene = bpy.context.scene
        self._pass_dir = tempfile.mkdtemp(prefix="cobl_blender_")
        self._engine: str | None = None
        self.last_timings: dict[str, float] = {}

    def close(self) -> None:
        clear_scene(self.scene)
        shutil.rmtree(self._pass_dir, ignore_errors=True)

    def __enter__(self) -> BlenderRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- settings -------------------------------------------------------------------------------------------
    def _configure(self, settings: RenderSettings) -> None:
        if settings.engine not in RENDER_ENGINES:
            raise ValueError(f"render.engine {settings.engine!r}: expected one of {RENDER_ENGINES}")
        scene, render = self.scene, self.scene.render
        render.engine = settings.engine
        if settings.engine != self._engine:
            passes.setup_compositor(scene, self._pass_dir)
            passes.setup_render_result_format(scene)
            self._engine = settings.engine
        view = scene.view_settings
        scene.display_settings.display_device = "sRGB"
        view.view_transform = "Standard"
        view.look = "None"
        view.exposure = 0.0
        view.gamma = 1.0
        view.use_curve_mapping = False
        render.dither_intensity = 0.0
        render.use_persistent_data = True
        threads = settings.threads or self.threads
        render.threads_mode = "FIXED" if threads > 0 else "AUTO"
        if threads > 0:
            render.threads = threads
        if settings.engine == "CYCLES":
            cycles = scene.cycles
            cycles.device = "GPU" if self.device == "gpu" else "CPU"
            cycles.samples = int(settings.samples)
            cycles.use_adaptive_sampling = False  # per-pixel sample counts would differ between passes
            cycles.use_denoising = bool(settings.denoise)
            if settings.denoise:  # named explicitly: the defaults could change between Blender versions
                cycles.denoiser = "OPENIMAGEDENOISE"
                cycles.denoising_input_passes = "RGB_ALBEDO_NORMAL"
                cycles.denoising_prefilter = "ACCURATE"
                cycles.denoising_use_gpu = self.device == "gpu"
            cycles.seed = int(settings.seed)
            cycles.use_animated_seed = False
        else:
            scene.eevee.taa_render_samples = int(settings.samples)

    def _set_border(self, box: Box | None, crop: bool = False) -> None:
        render = self.scene.render
        if box is None:
            _assign(render, "use_border", False)
            return
        width, height = render.resolution_x, render.resolution_y
        x0, y0, x1, y1 = box
        _assign(render, "use_border", True)
        _assign(render, "use_crop_to_border", crop)  # False: full-size output, pixel (x, y) stays at (x, y)
        # Blender truncates border * size to whole pixels in float32: a quarter pixel in keeps k/size at k.
        render.border_min_x, render.border_max_x = (x0 + 0.25) / width, (x1 + 0.25) / width
        render.border_min_y = (height - y1 + 0.25) / height
        render.border_max_y = (height - y0 + 0.25) / height

    def _render(self, box: Box | None, transparent: bool) -> dict[str, np.ndarray]:
        """A render through the compositor: full-size rgba, depth and index passes."""
        for path in os.listdir(self._pass_dir):
            os.unlink(os.path.join(self._pass_dir, path))
        self._set_border(box)
        render = self.scene.render
        _assign(render, "film_transparent", transparent)
        _assign(render, "use_compositing", True)
        with _quiet_stdout(self.quiet):
            bpy.ops.render.render(write_still=False)
        return passes.read_passes(self._pass_dir, render.resolution_y, render.resolution_x)

    def _render_rgba(self, box: Box, transparent: bool) -> np.ndarray:
        """Only the combined RGBA inside ``box`` ([y1 - y0, x1 - x0, 4]), without the compositor."""
        self._set_border(box, crop=True)
        render = self.scene.render
        _assign(render, "film_transparent", transparent)
        _assign(render, "use_compositing", False)
        with _quiet_stdout(self.quiet):
            bpy.ops.render.render(write_still=False)
        rgba = passes.read_render_result(self.scene, os.path.join(self._pass_dir, "result.exr"))
        x0, y0, x1, y1 = box
        if rgba.shape[:2] != (y1 - y0, x1 - x0):
            raise RuntimeError(f"border render of {box} came back {rgba.shape[1]}x{rgba.shape[0]}")
        return rgba

    # -- one scene ------------------------------------------------------------------------------------------
    def render(self, spec: SceneSpec) -> RenderedScene:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        meshes = [self.mesh_provider(o.asset) for o in spec.objects]
        clear_scene(self.scene)
        self._configure(spec.render)
        built = build_scene(spec, meshes, self.scene)
        width, height = spec.camera.width, spec.camera.height
        timings["build"] = time.perf_counter() - t0

        t = time.perf_counter()
        _camera_visible(built, table=True, objects=set(range(len(built.objects))))
        photo = self._render(None, transparent=False)
        timings["photo"] = time.perf_counter() - t

        t = time.perf_counter()  # everything from here on is ground truth only
        regions = projected_regions(spec, meshes, BOX_MARGIN)
        object_renders = [np.zeros((height, width, 4), np.float32) for _ in spec.objects]
        layer_renders = 0
        for i, region in enumerate(regions):
            known = _known_from_photo(photo, spec, i)
            if known is not None:
                interior, empty = known
                object_renders[i][interior] = photo["rgba"][interior]
                region = region & ~interior & ~empty
            layer_boxes = cover_boxes(region, _overhead_px(spec))
            if layer_boxes:
                _camera_visible(built, table=False, objects={i})
            for x0, y0, x1, y1 in layer_boxes:
                object_renders[i][y0:y1, x0:x1] = self._render_rgba((x0, y0, x1, y1), transparent=True)
            layer_renders += len(layer_boxes)
        timings["layers"] = time.perf_counter() - t

        t = time.perf_counter()
        clean, bg_renders = self._clean_background(built, spec, photo["rgba"], object_renders)
        timings["background"] = time.perf_counter() - t

        t = time.perf_counter()
        info = {
            "engine": spec.render.engine,
            "samples": spec.render.samples,
            "denoise": spec.render.denoise,
            "seed": spec.render.seed,
            "view_transform": "Standard",
            "look": "None",
            "exposure": 0.0,
            "gamma": 1.0,
            "blender": bpy.app.version_string,
            "device": self.device_name,
            "layer_renders": layer_renders,
            "boxes": [mask_box(r) for r in regions],
            "background_renders": bg_renders,
            "background": "clean",
        }
        index_pass, depth_pass = photo.get("index"), photo["depth"]
        if spec.render.engine != "CYCLES":
            index_pass = self._workbench_ids(built, spec.render)
        result = groundtruth.assemble(
            spec, photo["rgba"], clean, object_renders, index_pass, depth_pass, info
        )
        timings["assemble"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        self.last_timings = timings
        return result

    def _clean_background(
        self, built: BuiltScene, spec: SceneSpec, photo: np.ndarray, object_renders: list[np.ndarray]
    ) -> tuple[np.ndarray, int]:
        """The table as if the objects were absent, wherever some object's amodal render covers it (the
        photo elsewhere): ([H, W, 4] linear, number of border renders). A pixel covered by the objects S is
        rendered with exactly S removed from the scene (``hide_render``: no shadow, no bounce light), the
        other objects camera-invisible but casting shadows, so a shadow one object casts under another's
        footprint stays. One set of border renders per distinct S. ``groundtruth.assemble`` then keeps the
        compositing identity where the layers leave some of the background visible (fractional alpha)."""
        covers = _background_needed(object_renders, spec.render)
        clean = photo.copy()
        if not covers:
            return clean, 0
        stacked = np.stack(covers)  # [N, H, W]
        pixels = np.nonzero(stacked.any(axis=0))
        sets, inverse = np.unique(stacked[:, pixels[0], pixels[1]].T, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        renders = 0
        try:
            for k, members in enumerate(sets):
                region = np.zeros(photo.shape[:2], dtype=bool)
                region[pixels[0][inverse == k], pixels[1][inverse == k]] = True
                _camera_visible(built, table=True, objects=set())
                for obj, absent in zip(built.objects, members, strict=True):
                    _assign(obj, "hide_render", bool(absent))
                for box in cover_boxes(region, _overhead_px(spec)):
                    x0, y0, x1, y1 = box
                    rgba = self._render_rgba(box, transparent=False)
                    inside = region[y0:y1, x0:x1]
                    clean[y0:y1, x0:x1][inside] = rgba[inside]
                    renders += 1
        finally:
            for obj in built.objects:
                _assign(obj, "hide_render", False)
        return clean, renders

    def _workbench_ids(self, built: BuiltScene, settings: RenderSettings) -> np.ndarray:
        """EEVEE has no Object Index pass: an exact flat-colour Workbench render carries pass_index / 255."""
        scene = self.scene
        _camera_visible(built, table=True, objects=set(range(len(built.objects))))
        scene.render.engine = "BLENDER_WORKBENCH"
        shading = scene.display.shading
        shading.light = "FLAT"
        shading.color_type = "OBJECT"
        scene.display.render_aa = "OFF"
        scene.view_settings.view_transform = "Raw"
        built.table.color = (0.0, 0.0, 0.0, 1.0)
        for obj in built.objects:
            obj.color = (obj.pass_index / 255.0, 0.0, 0.0, 1.0)
        try:
            rgba = self._render(None, transparent=False)["rgba"]
        finally:
            self._engine = None  # re-wire the compositor for the next scene's engine
            self._configure(settings)
        return np.rint(rgba[..., 0] * 255.0)


def _known_from_photo(
    photo: dict[str, np.ndarray], spec: SceneSpec, i: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(interior, empty): pixels where object ``i``'s amodal render is known from the photo without
    rendering it. Interior: every camera sample hits the object first, so its render is the photo's pixel
    (alpha 1). Empty: every sample hits the table or nothing; the object rests above the table and the
    camera looks down on it, so no such ray can reach the object and its render is transparent there.

    Cycles traces the same camera samples (same seed) in every render, and visibility to the camera changes
    only what camera rays hit, so the renders agree bit for bit there. The Object Index pass records one
    jittered sample per pixel (within 0.75 px of its centre for the default 1.5 px filter): a pixel whose
    whole 5x5 neighbourhood shows the same index has all its samples well inside that area, unless a
    sub-pixel sliver of something else crosses it (3x3 is not enough: a neighbour's sample can fall on
    this pixel's side of an edge). Checked bit-exact against full renders in tests/test_render.py. Only for
    Cycles without denoising (None otherwise).
    """
    from scipy import ndimage

    if spec.render.engine != "CYCLES" or spec.render.denoise or any(o.pass_index <= 0 for o in spec.objects):
        return None
    index = np.rint(photo["index"])
    cross = np.ones((3, 3), dtype=bool)
    interior = ndimage.binary_erosion(index == spec.objects[i].pass_index, cross, iterations=INTERIOR_ERODE)
    empty = ndimage.binary_erosion(index == 0, cross, iterations=INTERIOR_ERODE)
    return interior, empty


def _overhead_px(spec: SceneSpec) -> float:
    """The fixed cost of one compositor-free border render in pixels' worth of path tracing (measured 4-25
    ms a call at 16 spp on 2 busy cores, where a 256^2 frame takes 1-4 s; the per-pixel cost grows with
    the sample count). The ratio in bench/bench_groundtruth.py barely moves between 100 and 1200. EEVEE
    pays ~1 s a render whatever its size (software GL): one box per region there."""
    if spec.render.engine != "CYCLES":
        return float(spec.camera.width * spec.camera.height)
    return RENDER_OVERHEAD_PX * 16.0 / max(1, spec.render.samples)


def _background_needed(object_renders: list[np.ndarray], settings: RenderSettings) -> list[np.ndarray]:
    """Per object, where the clean background must be rendered because of it: its amodal coverage (alpha
    > 0). Elsewhere no camera sample hits an object, so the background is the photo (same seed, same
    samples). The denoiser (and EEVEE's screen-space effects) spread objects into nearby pixels: then grow
    each region."""
    needed = [rgba[..., ALPHA_CHANNEL] > 0 for rgba in object_renders]
    if settings.denoise or settings.engine != "CYCLES":
        from scipy import ndimage

        needed = [ndimage.binary_dilation(m, iterations=DENOISE_REACH) if m.any() else m for m in needed]
    return needed


def _camera_visible(built: BuiltScene, table: bool, objects: set[int]) -> None:
    _assign(built.table, "visible_camera", table)
    for i, obj in enumerate(built.objects):
        _assign(obj, "visible_camera", i in objects)


def _assign(owner, name: str, value) -> None:
    """Set an RNA property only when it changes: every assignment, even of the same value, tags the scene
    for a depsgraph update that costs a few ms before the next render (comparable to a small border)."""
    if getattr(owner, name) != value:
        setattr(owner, name, value)
