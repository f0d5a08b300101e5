"""BlenderRenderer: a long-lived bpy session that turns a SceneSpec into a RenderedScene.

Per scene: one full-frame render of the photo (with the Depth and Object Index passes), one render of the
background (every object invisible to the camera only, so shadows stay), restricted to the union of the
objects' projected boxes, and amodal object renders (only that object visible to the camera, transparent
film) each restricted to its object's box; objects whose boxes do not overlap share one render.
Every render uses the same seed, samples and colour management: that makes the layers recomposite.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import bpy
import numpy as np
import trimesh

from synth import groundtruth
from synth.blender import passes
from synth.blender.scene_build import BuiltScene, build_scene, clear_scene
from synth.scene_dir import RenderedScene
from synth.spec import RenderSettings, SceneSpec, object_to_world

__all__ = ["BlenderRenderer", "RenderedScene"]

ENGINES = ("CYCLES", "BLENDER_EEVEE")
BOX_MARGIN = 3  # pixels around a projected box: the pixel filter (1.5 px wide) reaches ~1 px past the edge
Box = tuple[int, int, int, int]


def _default_mesh_provider(ref) -> trimesh.Trimesh:
    from assets.shapes import build_mesh

    return build_mesh(ref)


class BlenderRenderer:
    """Render SceneSpecs in this process's bpy. Create once per process (bpy state is global) and reuse.

    ``threads`` > 0 pins Cycles to that many threads (Ray workers use 1). ``mesh_provider`` maps an
    AssetRef to its trimesh (default ``assets.shapes.build_mesh``).
    """

    def __init__(self, threads: int = 0, mesh_provider: Callable | None = None, quiet: bool = True) -> None:
        self.threads = int(threads)
        self.mesh_provider = mesh_provider or _default_mesh_provider
        self.quiet = quiet
        bpy.ops.wm.read_factory_settings(use_empty=True)
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
        if settings.engine not in ENGINES:
            raise ValueError(f"render.engine {settings.engine!r}: expected one of {ENGINES}")
        scene, render = self.scene, self.scene.render
        render.engine = settings.engine
        if settings.engine != self._engine:
            passes.setup_compositor(scene, self._pass_dir)
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
            cycles.device = "CPU"
            cycles.samples = int(settings.samples)
            cycles.use_adaptive_sampling = False  # per-pixel sample counts would differ between passes
            cycles.use_denoising = bool(settings.denoise)
            cycles.seed = int(settings.seed)
            cycles.use_animated_seed = False
        else:
            scene.eevee.taa_render_samples = int(settings.samples)

    def _set_border(self, box: Box | None) -> None:
        render = self.scene.render
        if box is None:
            render.use_border = False
            return
        width, height = render.resolution_x, render.resolution_y
        x0, y0, x1, y1 = box
        render.use_border = True
        render.use_crop_to_border = False  # full-size output: pixel (x, y) stays at (x, y)
        render.border_min_x, render.border_max_x = x0 / width, x1 / width
        render.border_min_y, render.border_max_y = 1.0 - y1 / height, 1.0 - y0 / height

    def _render(self, box: Box | None, transparent: bool) -> dict[str, np.ndarray]:
        for path in os.listdir(self._pass_dir):
            os.unlink(os.path.join(self._pass_dir, path))
        self._set_border(box)
        self.scene.render.film_transparent = transparent
        with _quiet_stdout(self.quiet):
            bpy.ops.render.render(write_still=False)
        render = self.scene.render
        return passes.read_passes(self._pass_dir, render.resolution_y, render.resolution_x)

    # -- one scene ------------------------------------------------------------------------------------------
    def render(self, spec: SceneSpec) -> RenderedScene:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        meshes = [self.mesh_provider(o.asset) for o in spec.objects]
        clear_scene(self.scene)
        self._configure(spec.render)
        built = build_scene(spec, meshes, self.scene)
        width, height = spec.camera.width, spec.camera.height
        boxes = _projected_boxes(spec, meshes)
        timings["build"] = time.perf_counter() - t0

        t = time.perf_counter()
        _camera_visible(built, table=True, objects=set(range(len(built.objects))))
        photo = self._render(None, transparent=False)
        timings["photo"] = time.perf_counter() - t

        t = time.perf_counter()
        background = photo["rgba"].copy()
        union = groundtruth.union_box(boxes)
        if union is not None:
            _camera_visible(built, table=True, objects=set())
            bg = self._render(union, transparent=False)["rgba"]
            x0, y0, x1, y1 = union
            background[y0:y1, x0:x1] = bg[y0:y1, x0:x1]
        timings["background"] = time.perf_counter() - t

        t = time.perf_counter()
        object_renders = [np.zeros((height, width, 4), np.float32) for _ in spec.objects]
        for group in _disjoint_groups(boxes):
            _camera_visible(built, table=False, objects=set(group))
            rgba = self._render(groundtruth.union_box([boxes[i] for i in group]), transparent=True)["rgba"]
            for i in group:
                x0, y0, x1, y1 = boxes[i]
                object_renders[i][y0:y1, x0:x1] = rgba[y0:y1, x0:x1]
        timings["layers"] = time.perf_counter() - t

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
            "layer_renders": len(_disjoint_groups(boxes)),
            "boxes": [list(b) if b else None for b in boxes],
        }
        index_pass, depth_pass = photo["index"], photo["depth"]
        if spec.render.engine != "CYCLES":
            index_pass = self._workbench_ids(built, spec.render)
        result = groundtruth.assemble(
            spec, photo["rgba"], background, object_renders, index_pass, depth_pass, info
        )
        timings["assemble"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        self.last_timings = timings
        return result

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


def _camera_visible(built: BuiltScene, table: bool, objects: set[int]) -> None:
    built.table.visible_camera = table
    for i, obj in enumerate(built.objects):
        obj.visible_camera = i in objects


def _projected_boxes(spec: SceneSpec, meshes: list[trimesh.Trimesh]) -> list[Box | None]:
    """Integer pixel boxes [x0, y0, x1, y1) of each object's projection grown by BOX_MARGIN, clipped to the
    image (the whole frame for an object reaching behind the camera); None when it is off-screen."""
    from synth.geometry import projected_boxes

    width, height = spec.camera.width, spec.camera.height
    world = []
    for obj, mesh in zip(spec.objects, meshes, strict=True):
        m = np.asarray(object_to_world(obj))
        world.append(
            trimesh.Trimesh(np.asarray(mesh.vertices) @ m[:3, :3].T + m[:3, 3], mesh.faces, process=False)
        )
    boxes = []
    for x0, y0, x1, y1 in projected_boxes(spec, meshes=world):
        if not np.isfinite([x0, y0, x1, y1]).all():
            boxes.append((0, 0, width, height))
            continue
        corners = np.array([[x0, y0], [x1, y1]])
        boxes.append(groundtruth.pixel_box(corners, width, height, BOX_MARGIN))
    return boxes


def _disjoint_groups(boxes: list[Box | None]) -> list[list[int]]:
    """Greedy grouping of objects whose boxes do not overlap: each group is one amodal render."""
    groups: list[list[int]] = []
    for i, box in enumerate(boxes):
        if box is None:
            continue
        for group in groups:
            if all(not _overlap(box, boxes[j]) for j in group):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@contextlib.contextmanager
def _quiet_stdout(quiet: bool) -> Iterator[None]:
    """Blender prints render progress on the C-level stdout; silence it during a render."""
    if not quiet:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
