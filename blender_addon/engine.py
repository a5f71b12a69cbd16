"""The "Busto Neural" render engine: each frame, every visible Busto rig is rendered through the generator from
the scene camera with the rig's pose and expression, and the result is written as linear pixels.

F12, Render Animation and command-line rendering (``blender -b file.blend -a``, or ``bpy.ops.render.render(
animation=True)``) all go through :meth:`BustoNeuralEngine.render`. The backend (model + baked avatars) is cached
per process, so a frame range loads the model once.
"""

from __future__ import annotations

import math
import threading
import time

import bpy
import numpy as np

from . import backend, convert, prefs, scene
from . import constants as K
from .jobs import error_message


def frame_inputs(depsgraph, width: int, height: int) -> list[dict]:
    """What the generator needs for this frame, per visible Busto rig (evaluated at the depsgraph's frame), seen
    from the scene camera."""
    sc = depsgraph.scene
    if sc.camera is None:
        raise ValueError("the scene has no active camera")
    cam = sc.camera.evaluated_get(depsgraph)
    if cam.data.type != "PERSP":
        raise ValueError(f"camera {cam.name!r} is {cam.data.type.lower()}; the neural renderer needs a perspective "
                         "camera")
    d = cam.data
    Kn = convert.blender_intrinsics(d.lens, d.sensor_width, d.sensor_height, d.sensor_fit, width, height,
                                    d.shift_x, d.shift_y)
    return rig_inputs(depsgraph, np.array(cam.matrix_world), Kn)


def rig_inputs(depsgraph, camera_world: np.ndarray, intrinsics: np.ndarray) -> list[dict]:
    """Per visible Busto rig: avatar spec, pose code, expression, the camera in its canonical frame and the backend
    settings. Runs on the main (or render) thread; the result is plain data for any thread."""
    sc = depsgraph.scene
    items = []
    # the depsgraph's objects are the evaluated, render-visible ones (hide_render, excluded collections respected)
    for ev in depsgraph.objects:
        if not scene.is_rig(ev):
            continue
        rig_world = np.array(ev.matrix_world)
        items.append({
            "rig": ev.original.name,
            "settings": prefs.resolve(bpy.context, sc, ev.original),
            "spec": scene.avatar_spec(ev, sc.busto.super_resolve),
            "pose": scene.read_pose_code(ev),
            "expression": scene.read_expression(ev),
            "cam2world": convert.blender_camera_to_cv(camera_world, rig_world),
            "intrinsics": np.asarray(intrinsics, dtype=np.float64),
            "distance": float(np.linalg.norm(camera_world[:3, 3] - rig_world[:3, 3])),
        })
    if not items:
        raise ValueError("no Busto avatar to render (sample one in the Busto panel, or un-hide its rig for render)")
    return items


def composite(items: list[dict], width: int, height: int, test_break=lambda: False, progress=lambda x: None):
    """Render ``items`` through their backends and composite them back to front (no bpy: any thread).
    Returns (premultiplied sRGB colour [H, W, 3], alpha [H, W, 1]), top-down, or None if cancelled."""
    rgb = np.zeros((height, width, 3), np.float32)
    alpha = np.zeros((height, width, 1), np.float32)
    ordered = sorted(items, key=lambda it: -it["distance"])
    for i, it in enumerate(ordered):
        if test_break():
            return None
        Ks, size, (r0, c0) = convert.square_render_plan(it["intrinsics"], width, height)
        try:  # a worker-process render is cancelled while it waits (test_break polled), and times out
            out = backend.get_backend(it["settings"]).request(
                "render", {"pose": it["pose"][None].astype(np.float32),
                           "expression": it["expression"][None].astype(np.float32),
                           "cam2world": it["cam2world"][None].astype(np.float32),
                           "intrinsics": Ks[None].astype(np.float32)},
                should_stop=test_break, avatar=it["spec"].to_json(), size=int(size))["rgba"][0]
        except backend.Cancelled:
            return None
        if out.shape[0] != size:
            out = convert.resize_bilinear(out, size, size)
        out = out[r0:r0 + height, c0:c0 + width]
        a = np.clip(out[..., 3:4], 0.0, 1.0)
        fg = np.clip(out[..., :3] - (1.0 - a) * K_BACKGROUND, 0.0, 1.0)  # un-composite the white background
        rgb = fg + (1.0 - a) * rgb
        alpha = a + (1.0 - a) * alpha
        progress((i + 1) / len(ordered))
    return rgb, alpha


def render_frame(depsgraph, width: int, height: int, test_break=lambda: False, progress=lambda x: None):
    """Render the depsgraph's frame -> (rgba [H, W, 4] float32 linear, premultiplied, top-down) or None if
    cancelled. Several avatars are composited back to front by distance from the camera."""
    sc = depsgraph.scene
    done = composite(frame_inputs(depsgraph, width, height), width, height, test_break, progress)
    if done is None:
        return None
    rgb, alpha = done
    if sc.render.film_transparent or sc.busto.transparent_background:
        straight = np.where(alpha > 1e-6, rgb / np.maximum(alpha, 1e-6), 0.0)
        lin = convert.srgb_to_linear(straight) * alpha
        return np.concatenate([lin, alpha], axis=-1).astype(np.float32)
    over_white = rgb + (1.0 - alpha) * K_BACKGROUND
    lin = convert.srgb_to_linear(over_white)
    return np.concatenate([lin, np.ones_like(alpha)], axis=-1).astype(np.float32)


K_BACKGROUND = 1.0  # the generator composites on white (conventions.BACKGROUND)


# ------------------------------------------------------------------------------------------------ viewport
# Rendered viewport shading shows the neural avatar live: while the view, frame, pose or expression changes (scrubbing
# or playing the timeline) each redraw asks for a small preview (VIEWPORT_LOW_SIZE rays on the long side, more where
# previews render within VIEWPORT_FRAME_BUDGET: adapt_low_cap); once the picture has been still for VIEWPORT_SETTLE_SECONDS a refined one (VIEWPORT_MAX_SIZE) follows. One worker thread per
# 3D-view region renders the newest request only: a request waiting behind a busy worker is replaced by a newer one,
# and a result is shown only when newer than the image on screen. The decisions are pure functions (tested plainly);
# :class:`ViewportPreview` holds one region's state and never touches bpy, so its thread may run it.

VIEWPORT_LOW_SIZE = 64
VIEWPORT_MAX_SIZE = 160
VIEWPORT_SETTLE_SECONDS = 0.3
#: a moving preview may take this long; where previews render faster their size grows (dynamic resolution) up to
#: VIEWPORT_LOW_MAX, never below VIEWPORT_LOW_SIZE
VIEWPORT_FRAME_BUDGET = 1.0 / 24.0
VIEWPORT_LOW_MAX = 128
VIEWPORT_LOW_GROWTH = 1.25
#: how often the main-thread timer checks for finished previews and due refinements
VIEWPORT_POLL_SECONDS = 0.05


def viewport_size(width: int, height: int, cap: int = VIEWPORT_MAX_SIZE) -> tuple[int, int]:
    """The render size of a ``width`` x ``height`` region with the long side at most ``cap`` (at least 8)."""
    s = min(1.0, cap / max(width, height, 1))
    return max(8, round(width * s)), max(8, round(height * s))


def viewport_level(seconds_since_change: float, settle: float = VIEWPORT_SETTLE_SECONDS) -> str:
    """``"low"`` while the picture changed less than ``settle`` seconds ago (moving), else ``"full"`` (still)."""
    return "low" if seconds_since_change < settle else "full"


def viewport_cap(level: str, low_cap: int = VIEWPORT_LOW_SIZE) -> int:
    """The long side in rays of a preview at ``level`` (``low_cap``: the moving preview's, from
    :func:`adapt_low_cap`)."""
    return low_cap if level == "low" else VIEWPORT_MAX_SIZE


def adapt_low_cap(cap: int, seconds: float, budget: float = VIEWPORT_FRAME_BUDGET, lowest: int = VIEWPORT_LOW_SIZE,
                  highest: int = VIEWPORT_LOW_MAX, growth: float = VIEWPORT_LOW_GROWTH) -> int:
    """The long side of the next moving preview, after one of ``cap`` rays took ``seconds``: ``cap`` scaled by
    sqrt(budget / seconds) (the ray count, and most of the time, grows with the square of the side), by at most
    ``growth`` either way per preview, kept in [lowest, highest]. Repeated, it settles where a preview takes the
    budget: 64 on a 2-core CPU (the floor; a 64-ray preview takes 40-50 ms there), larger on a GPU."""
    factor = math.sqrt(budget / max(seconds, 1e-6))
    factor = min(max(factor, 1.0 / growth), growth)
    return int(min(max(round(cap * factor), lowest), highest))


def result_is_newer(result_seq: int, shown_seq: int) -> bool:
    """Whether a finished preview (request number ``result_seq``) replaces the image on screen (``shown_seq``):
    only a later request does, so a late answer to an old request never overwrites a newer picture."""
    return result_seq > shown_seq


def refine_due(level_shown: str | None, seconds_since_change: float, settle: float = VIEWPORT_SETTLE_SECONDS) -> bool:
    """Whether a redraw is needed to ask for the refined preview: the screen shows a low-resolution (or no)
    picture of the current inputs and they have been still long enough."""
    return level_shown != "full" and viewport_level(seconds_since_change, settle) == "full"


def inputs_key(items: list[dict], width: int, height: int) -> bytes:
    """Everything that changes the picture, as bytes (cheap to compare on every redraw)."""
    parts = [np.array([width, height], np.float64).tobytes()]
    for it in items:
        parts += [it["rig"].encode(), repr(it["spec"]).encode(), repr(it["settings"]).encode()]
        parts += [np.round(it[k], 6).tobytes() for k in ("pose", "expression", "cam2world", "intrinsics")]
    return b"|".join(parts)


def preview_image(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composited premultiplied sRGB + alpha -> the opaque RGBA image drawn in the viewport (over white,
    top-down, display values)."""
    over_white = rgb + (1.0 - alpha) * K_BACKGROUND
    return np.concatenate([over_white, np.ones_like(alpha)], axis=-1).astype(np.float32)


def texture_data(image: np.ndarray) -> np.ndarray:
    """A top-down RGBA image -> the flat float32 data of a GPU texture (rows bottom-up, as OpenGL expects)."""
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"expected an RGBA image [H, W, 4], got shape {image.shape}")
    return np.ascontiguousarray(np.flipud(image), np.float32).ravel()


class ViewportPreview:
    """One 3D-view region's live preview: the newest inputs, when they last changed, the single pending request,
    the worker thread and the image on screen. No bpy: :meth:`update` runs on the main thread in ``view_draw``,
    the worker calls the backend through ``render`` (default :func:`composite`)."""

    def __init__(self, render=None, clock=time.monotonic):
        self.render = render or composite
        self.clock = clock
        self.lock = threading.Lock()
        self.key: bytes | None = None
        self.changed_at = 0.0
        self.seq = 0
        self.pending: dict | None = None  # the newest request not yet started
        self.running: dict | None = None  # the request the worker renders now
        self.thread: threading.Thread | None = None
        self.image: np.ndarray | None = None
        self.shown: dict | None = None  # the request whose image is on screen
        self.drawn_seq = 0  # the request whose image was last drawn
        self.error = ""
        self.timings: list[tuple[str, float]] = []  # (level, seconds) of recent renders
        self.low_cap = VIEWPORT_LOW_SIZE  # the moving preview's long side, adapted to the render time
        self.gpu_cache: dict = {}  # the texture of the image on screen (main thread only)

    def update(self, items: list[dict], region_w: int, region_h: int) -> dict | None:
        """Note the current inputs and queue the preview they need. Returns the queued request, or None when the
        picture on screen, in progress or pending already is that one."""
        now = self.clock()
        key = inputs_key(items, region_w, region_h)
        with self.lock:
            if key != self.key:
                self.key, self.changed_at = key, now
            level = viewport_level(now - self.changed_at)
            w, h = viewport_size(region_w, region_h, viewport_cap(level, self.low_cap))
            target = (key, level)
            for req in (self.shown, self.running, self.pending):
                if req is not None and (req["key"], req["level"]) == target:
                    return None
            if self.shown is not None and self.shown["key"] == key and self.shown["level"] == "full":
                return None  # the refined picture of these inputs is on screen already
            self.seq += 1
            req = {"seq": self.seq, "key": key, "level": level, "items": items, "size": (w, h),
                   "cap": viewport_cap(level, self.low_cap)}
            self.pending = req  # replaces (drops) any older request still waiting
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._work, name="busto-viewport", daemon=True)
                self.thread.start()
            return req

    def _work(self) -> None:
        while True:
            with self.lock:
                req, self.pending = self.pending, None
                self.running = req
                if req is None:
                    return
            w, h = req["size"]
            t0 = time.perf_counter()
            try:
                rgb, alpha = self.render(req["items"], w, h)
                image, error = preview_image(rgb, alpha), ""
            except Exception as exc:  # reported on the console; the viewport keeps the last good image
                image, error = None, error_message(exc)
                print(f"Busto Neural viewport: {error}")
            seconds = time.perf_counter() - t0
            with self.lock:
                self.running = None
                self.timings = (self.timings + [(req["level"], seconds)])[-32:]
                if req["level"] == "low" and image is not None:
                    self.low_cap = adapt_low_cap(req["cap"], seconds)
                self.error = error
                if image is not None and result_is_newer(req["seq"], self.shown["seq"] if self.shown else 0):
                    self.image, self.shown = image, {k: req[k] for k in ("seq", "key", "level", "size")}

    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def needs_redraw(self) -> bool:
        """A new image is ready to draw, or the inputs have been still long enough to ask for the refined one."""
        with self.lock:
            if self.shown is not None and self.shown["seq"] != self.drawn_seq:
                return True
            shown_level = self.shown["level"] if self.shown and self.shown["key"] == self.key else None
            asked = any(r is not None and r["key"] == self.key and r["level"] == "full"
                        for r in (self.running, self.pending))
            return self.key is not None and not asked and refine_due(shown_level, self.clock() - self.changed_at)

    def waiting(self) -> bool:
        """Whether the main thread should keep polling (a render runs, or a refinement is still to come)."""
        with self.lock:
            refined = self.shown is not None and self.shown["key"] == self.key and self.shown["level"] == "full"
        return self.busy() or (self.key is not None and not refined and not self.error)

    def frame(self) -> np.ndarray | None:
        """The image to draw now (marks it drawn)."""
        with self.lock:
            if self.shown is not None:
                self.drawn_seq = self.shown["seq"]
            return self.image


#: per 3D-view region (its pointer): the live preview
_VIEWS: dict[int, ViewportPreview] = {}
_TICKING = [False]


def draw_image(image: np.ndarray, width: int, height: int, cache: dict | None = None) -> None:
    """Draw a top-down RGBA float image (display values) over the current framebuffer, stretched to
    ``width`` x ``height`` pixels (needs a GPU context: not available in background mode)."""
    import gpu
    from gpu_extras.presets import draw_texture_2d

    h, w = image.shape[:2]
    tex = cache.get("texture") if cache is not None and cache.get("texture_of") is image else None
    if tex is None:
        data = texture_data(image)
        buf = gpu.types.Buffer("FLOAT", data.size, data.tolist())
        tex = gpu.types.GPUTexture((w, h), format="RGBA16F", data=buf)
        if cache is not None:
            cache["texture"], cache["texture_of"] = tex, image
    gpu.state.blend_set("ALPHA")
    draw_texture_2d(tex, (0, 0), width, height)
    gpu.state.blend_set("NONE")


def _tag_viewports() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def viewport_tick(views: dict | None = None) -> float | None:
    """The main-thread timer: redraw the 3D views when a preview finished or a refinement is due; keeps running
    (returns its interval) while any preview waits, stops (None) otherwise."""
    views = _VIEWS if views is None else views
    if any(v.needs_redraw() for v in list(views.values())):
        _tag_viewports()
    if any(v.waiting() for v in list(views.values())):
        return VIEWPORT_POLL_SECONDS
    _TICKING[0] = False
    return None


def _ensure_tick() -> None:
    if not _TICKING[0] and not bpy.app.background:
        _TICKING[0] = True
        bpy.app.timers.register(viewport_tick, first_interval=VIEWPORT_POLL_SECONDS)


def request_viewport_preview(state: ViewportPreview, items: list[dict], width: int, height: int) -> bool:
    """Queue the preview ``items`` need in a ``width`` x ``height`` region (see :meth:`ViewportPreview.update`).
    Returns whether a render was queued."""
    return state.update(items, width, height) is not None


class BustoNeuralEngine(bpy.types.RenderEngine):
    bl_idname = K.ENGINE_ID
    bl_label = K.ENGINE_LABEL
    bl_use_preview = False
    bl_use_postprocess = True
    bl_use_eevee_viewport = True  # solid/material viewport shading keeps working for the mesh

    def render(self, depsgraph):
        sc = depsgraph.scene
        pct = sc.render.resolution_percentage / 100.0
        w, h = max(1, int(sc.render.resolution_x * pct)), max(1, int(sc.render.resolution_y * pct))
        if sc.view_settings.view_transform not in ("Standard", "Raw"):
            self.report({"WARNING"}, f"Busto Neural: view transform is '{sc.view_settings.view_transform}'; use "
                                     "'Standard' to see the generator's colours unchanged (Busto panel > Render)")
        self.update_stats("", f"Busto Neural: frame {sc.frame_current}")
        try:
            rgba = render_frame(depsgraph, w, h, self.test_break, self.update_progress)
        except Exception as exc:  # shown in the UI / console; the frame stays empty
            self.report({"ERROR"}, f"Busto Neural: {error_message(exc)}")
            rgba = np.zeros((h, w, 4), np.float32)
            rgba[..., 0] = rgba[..., 2] = rgba[..., 3] = 1.0  # magenta marks a failed frame
        if rgba is None:  # cancelled
            return
        result = self.begin_result(0, 0, w, h)
        result.layers[0].passes["Combined"].rect.foreach_set(np.ascontiguousarray(np.flipud(rgba)).ravel())
        self.end_result(result)

    # Rendered viewport shading: the live neural preview (ViewportPreview): low resolution while the view, frame,
    # pose or expression changes, refined once they have been still for VIEWPORT_SETTLE_SECONDS.
    def view_update(self, context, depsgraph):
        pass  # view_draw compares the inputs on every redraw

    def view_draw(self, context, depsgraph):
        region, rv3d = context.region, context.region_data
        state = _VIEWS.get(region.as_pointer())
        if state is None:
            state = _VIEWS[region.as_pointer()] = ViewportPreview()
            for k in list(_VIEWS)[:-16]:  # regions closed since: forget them
                _VIEWS.pop(k, None)
        try:
            Kn = convert.projection_to_intrinsics(np.array(rv3d.window_matrix))
            cam_world = np.linalg.inv(np.array(rv3d.view_matrix))
            items = rig_inputs(depsgraph, cam_world, Kn)
        except ValueError as exc:
            if state.error != str(exc):
                print(f"Busto Neural viewport: {exc}")
            state.error, items = str(exc), None
        if items is not None:
            state.update(items, region.width, region.height)
            _ensure_tick()  # redraws when the preview is ready, and again to refine once the view is still
        image = state.frame()
        if image is not None:
            draw_image(image, region.width, region.height, state.gpu_cache)


def _panels_for_engine():
    """Built-in panels that also make sense for this engine (output/format/dimensions are engine-agnostic)."""
    names = ("RENDER_PT_format", "RENDER_PT_frame_range", "RENDER_PT_color_management",
             "RENDER_PT_color_management_display_settings", "RENDER_PT_output", "RENDER_PT_encoding",
             "DATA_PT_lens", "DATA_PT_camera", "DATA_PT_context_camera")
    return [getattr(bpy.types, n) for n in names if hasattr(bpy.types, n)]


def register():
    for p in _panels_for_engine():
        if hasattr(p, "COMPAT_ENGINES"):
            p.COMPAT_ENGINES.add(K.ENGINE_ID)


def unregister():
    for p in _panels_for_engine():
        if hasattr(p, "COMPAT_ENGINES"):
            p.COMPAT_ENGINES.discard(K.ENGINE_ID)


CLASSES = (BustoNeuralEngine,)
