"""The "Busto Neural" render engine: each frame, every visible Busto rig is rendered through the generator from
the scene camera with the rig's pose and expression, and the result is written as linear pixels.

F12, Render Animation and command-line rendering (``blender -b file.blend -a``, or ``bpy.ops.render.render(
animation=True)``) all go through :meth:`BustoNeuralEngine.render`. The backend (model + baked avatars) is cached
per process, so a frame range loads the model once.
"""

from __future__ import annotations

import bpy
import numpy as np

from . import backend, convert, prefs, scene
from . import constants as K
from .jobs import error_message


def frame_inputs(depsgraph, width: int, height: int) -> list[dict]:
    """What the generator needs for this frame, per visible Busto rig (evaluated at the depsgraph's frame)."""
    sc = depsgraph.scene
    if sc.camera is None:
        raise ValueError("the scene has no active camera")
    cam = sc.camera.evaluated_get(depsgraph)
    items = []
    # the depsgraph's objects are the evaluated, render-visible ones (hide_render, excluded collections respected)
    for ev in depsgraph.objects:
        if not scene.is_rig(ev):
            continue
        c2w, Kn = scene.camera_to_generator(cam, ev, width, height)
        items.append({
            "rig": ev.original,
            "spec": scene.avatar_spec(ev, sc.busto.super_resolve),
            "pose": scene.read_pose_code(ev),
            "expression": scene.read_expression(ev),
            "cam2world": c2w,
            "intrinsics": Kn,
            "distance": float(np.linalg.norm(np.array(cam.matrix_world.translation) -
                                             np.array(ev.matrix_world.translation))),
        })
    if not items:
        raise ValueError("no Busto avatar to render (sample one in the Busto panel, or un-hide its rig for render)")
    return items


def render_frame(depsgraph, width: int, height: int, test_break=lambda: False, progress=lambda x: None):
    """Render the depsgraph's frame -> (rgba [H, W, 4] float32 linear, premultiplied, top-down) or None if
    cancelled. Several avatars are composited back to front by distance from the camera."""
    sc = depsgraph.scene
    items = frame_inputs(depsgraph, width, height)
    items.sort(key=lambda it: -it["distance"])
    rgb = np.zeros((height, width, 3), np.float32)  # premultiplied sRGB-encoded colour
    alpha = np.zeros((height, width, 1), np.float32)
    for i, it in enumerate(items):
        if test_break():
            return None
        Ks, size, (r0, c0) = convert.square_render_plan(it["intrinsics"], width, height)
        settings = prefs.resolve(bpy.context, sc, it["rig"])
        out = backend.get_backend(settings).request(
            "render", {"pose": it["pose"][None].astype(np.float32),
                       "expression": it["expression"][None].astype(np.float32),
                       "cam2world": it["cam2world"][None].astype(np.float32),
                       "intrinsics": Ks[None].astype(np.float32)},
            avatar=it["spec"].to_json(), size=int(size))["rgba"][0]
        if out.shape[0] != size:
            out = convert.resize_bilinear(out, size, size)
        out = out[r0:r0 + height, c0:c0 + width]
        a = np.clip(out[..., 3:4], 0.0, 1.0)
        fg = np.clip(out[..., :3] - (1.0 - a) * K_BACKGROUND, 0.0, 1.0)  # un-composite the white background
        rgb = fg + (1.0 - a) * rgb
        alpha = a + (1.0 - a) * alpha
        progress((i + 1) / len(items))
    if sc.render.film_transparent or sc.busto.transparent_background:
        straight = np.where(alpha > 1e-6, rgb / np.maximum(alpha, 1e-6), 0.0)
        lin = convert.srgb_to_linear(straight) * alpha
        return np.concatenate([lin, alpha], axis=-1).astype(np.float32)
    over_white = rgb + (1.0 - alpha) * K_BACKGROUND
    lin = convert.srgb_to_linear(over_white)
    return np.concatenate([lin, np.ones_like(alpha)], axis=-1).astype(np.float32)


K_BACKGROUND = 1.0  # the generator composites on white (conventions.BACKGROUND)


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
