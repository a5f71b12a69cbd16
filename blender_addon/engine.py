"""The "Busto Neural" render engine: each frame, every visible Busto rig is rendered through the generator from
the scene camera with the rig's pose and expression, and the result is written as linear pixels.

F12, Render Animation and command-line rendering (``blender -b file.blend -a``, or ``bpy.ops.render.render(
animation=True)``) all go through :meth:`BustoNeuralEngine.render`. The backend (model + baked avatars) is cached
per process, so a frame range loads the model once.
"""

from __future__ import annotations

import threading

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
#: per 3D-view region: the inputs of the last requested preview, the last finished image, the worker thread
_VIEWS: dict[int, dict] = {}
VIEWPORT_MAX_SIZE = 160


def viewport_size(width: int, height: int, cap: int = VIEWPORT_MAX_SIZE) -> tuple[int, int]:
    s = min(1.0, cap / max(width, height, 1))
    return max(8, round(width * s)), max(8, round(height * s))


def inputs_key(items: list[dict], width: int, height: int) -> bytes:
    """Everything that changes the picture, as bytes (cheap to compare on every redraw)."""
    parts = [np.array([width, height], np.float64).tobytes()]
    for it in items:
        parts += [it["rig"].encode(), repr(it["spec"]).encode(), repr(it["settings"]).encode()]
        parts += [np.round(it[k], 6).tobytes() for k in ("pose", "expression", "cam2world", "intrinsics")]
    return b"|".join(parts)


def draw_image(image: np.ndarray, width: int, height: int, cache: dict | None = None) -> None:
    """Draw a top-down RGBA float image (display values) over the current framebuffer, stretched to
    ``width`` x ``height`` pixels."""
    import gpu
    from gpu_extras.presets import draw_texture_2d

    h, w = image.shape[:2]
    tex = cache.get("texture") if cache is not None and cache.get("texture_of") is image else None
    if tex is None:
        buf = gpu.types.Buffer("FLOAT", w * h * 4, np.ascontiguousarray(np.flipud(image), np.float32).ravel().tolist())
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


def request_viewport_preview(state: dict, items: list[dict], width: int, height: int) -> bool:
    """Start rendering ``items`` for a viewport unless the same picture is done or being made. Returns whether a
    render started. The thread only calls the backend; the main thread draws ``state['image']``."""
    key = inputs_key(items, width, height)
    thread = state.get("thread")
    if key == state.get("key") or (thread is not None and thread.is_alive()):
        return False
    state["key"] = key

    def run():
        try:
            rgb, alpha = composite(items, width, height)
            over_white = rgb + (1.0 - alpha) * K_BACKGROUND
            state["image"] = np.concatenate([over_white, np.ones_like(alpha)], axis=-1).astype(np.float32)
            state["error"] = ""
        except Exception as exc:  # reported on the console; the viewport keeps the last good image
            state["error"] = error_message(exc)
            print(f"Busto Neural viewport: {state['error']}")

    state["thread"] = threading.Thread(target=run, name="busto-viewport", daemon=True)
    state["thread"].start()
    return True


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

    # Rendered viewport shading: a low-resolution neural preview of the view, made in a worker thread and drawn
    # when ready; it refreshes whenever the view, the pose or the expression changes.
    def view_update(self, context, depsgraph):
        pass  # view_draw compares the inputs on every redraw

    def view_draw(self, context, depsgraph):
        region, rv3d = context.region, context.region_data
        state = _VIEWS.setdefault(region.as_pointer(), {})
        if len(_VIEWS) > 16:
            for k in list(_VIEWS)[:-16]:
                _VIEWS.pop(k, None)
        w, h = viewport_size(region.width, region.height)
        try:
            Kn = convert.projection_to_intrinsics(np.array(rv3d.window_matrix))
            cam_world = np.linalg.inv(np.array(rv3d.view_matrix))
            items = rig_inputs(depsgraph, cam_world, Kn)
        except ValueError as exc:
            if state.get("error") != str(exc):
                print(f"Busto Neural viewport: {exc}")
            state["error"], items = str(exc), None
        if items is not None and request_viewport_preview(state, items, w, h):
            def poll():
                t = state.get("thread")
                if t is not None and t.is_alive():
                    return 0.1
                _tag_viewports()
                return None

            bpy.app.timers.register(poll, first_interval=0.1)
        if state.get("image") is not None:
            draw_image(state["image"], region.width, region.height, state)


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
