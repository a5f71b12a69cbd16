"""The "Busto" sidebar tab (3D View > N panel): Model -> Avatar -> Geometry -> Rig -> Animate -> Render."""

from __future__ import annotations

import bpy

from . import backend, prefs, scene
from . import constants as K
from .jobs import current_job


class _BustoPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Busto"


#: Characters per label line that fit the default sidebar (220 px, about 176 px of text space; measured with
#: Blender's UI font in tests/blender_addon/test_panel_widths.py). Longer text is wrapped over several labels.
_LINE_CHARS = 28


def _wrapped_label(layout, text: str, icon: str = "NONE", chars: int = _LINE_CHARS) -> None:
    """``text`` as one label per line of at most ``chars`` characters (the first line shorter for its icon)."""
    import textwrap

    lines = textwrap.wrap(text, chars - (4 if icon != "NONE" else 0)) or [""]
    col = layout.column(align=True)
    col.label(text=lines[0], icon=icon)
    for line in textwrap.wrap(" ".join(lines[1:]), chars):
        col.label(text=line)


def _job_row(layout, context) -> bool:
    """Progress bar + cancel while a job runs; returns True when busy."""
    rt = context.window_manager.busto
    job = current_job()
    if not (rt.job_running and job is not None and not job.done.is_set()):
        return False
    row = layout.row(align=True)
    row.progress(factor=rt.job_progress / 100.0, type="BAR", text=rt.job_label or "Working")
    row.operator("busto.cancel_job", text="", icon="X")
    return True


class BUSTO_PT_model(_BustoPanel, bpy.types.Panel):
    bl_label = "Model"
    bl_idname = "BUSTO_PT_model"

    def draw(self, context):
        layout = self.layout
        settings = prefs.resolve(context)
        rt = context.window_manager.busto
        col = layout.column()
        col.label(text="Checkpoint")  # above the field: beside it the name gets a third of the width ("Chec…")
        col.prop(context.scene.busto, "checkpoint", text="")
        if not settings.checkpoint:
            shipped = backend.shipped_checkpoint(settings)
            if shipped:
                col.label(text="Using the shipped model", icon="INFO")
            elif settings.backend.upper() == "SUBPROCESS":
                col.label(text="Worker's shipped model", icon="INFO")
            else:
                col.label(text="No model shipped:", icon="ERROR")
                col.label(text="choose a checkpoint")
        sub = col.column(align=True)  # one per line: side by side, "Backend: Su…" at the default width
        sub.label(text=f"Device: {settings.device.upper()}")
        sub.label(text=f"Backend: {settings.backend.title()}")
        try:
            kind = backend.choose_kind(settings)
            col.label(text=f"Runs {'inside Blender' if kind == 'INPROCESS' else 'in a worker process'}",
                      icon="CHECKMARK")
        except backend.BackendError:
            box = col.box()
            box.label(text="torch / portrait_core are missing", icon="ERROR")
            for line in backend.environment_report(settings).splitlines()[1:]:
                _wrapped_label(box, line)
            _wrapped_label(box, "Edit > Preferences > Add-ons > Busto")
        if rt.model_status:
            col.label(text=f"Loaded on {rt.model_device.upper() or '?'}", icon="CHECKMARK")
            _wrapped_label(col, rt.model_status)
        else:
            col.label(text="Not loaded (loads on use)", icon="DOT")
        if not _job_row(layout, context):
            layout.operator("busto.load_model", icon="FILE_REFRESH")


class BUSTO_PT_avatar(_BustoPanel, bpy.types.Panel):
    bl_label = "Avatar"
    bl_idname = "BUSTO_PT_avatar"

    def draw(self, context):
        layout = self.layout
        sp = context.scene.busto
        col = layout.column(align=True)
        col.prop(sp, "new_seed")
        col.prop(sp, "new_truncation")
        col.prop(sp, "new_full_360")
        if not _job_row(layout, context):
            op = layout.operator("busto.sample_avatar", text="Sample New Avatar", icon="USER")
            op.new_avatar = True
            layout.operator("busto.avatar_from_photo", text="Avatar from Photo...", icon="IMAGE_DATA")
        rig = scene.active_rig(context)
        if rig is None:
            layout.label(text="No avatar yet", icon="INFO")
            return
        box = layout.box()
        box.label(text=rig.name, icon="ARMATURE_DATA")
        p = rig.busto
        if p.preview is not None:
            p.preview.preview_ensure()
            box.template_icon(icon_value=p.preview.preview.icon_id, scale=6.0)
        c = box.column(align=True)
        c.prop(p, "seed")
        c.prop(p, "truncation")
        c.prop(p, "full_360")
        box.prop(p, "body_shape")
        row = box.row(align=True)
        op = row.operator("busto.sample_avatar", text="Re-sample", icon="FILE_REFRESH")
        op.new_avatar = False
        row.operator("busto.remove_avatar", text="", icon="TRASH")
        n = len(scene.scene_rigs(context.scene))
        if n > 1:
            _wrapped_label(layout, f"{n} avatars in the scene; the panel acts on the active one")


class BUSTO_PT_geometry(_BustoPanel, bpy.types.Panel):
    bl_label = "Geometry"
    bl_idname = "BUSTO_PT_geometry"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        sp = context.scene.busto
        col = layout.column(align=True)
        col.prop(sp, "mesh_resolution")
        col.prop(sp, "mesh_decimate")
        col.prop(sp, "mesh_auto_level")
        sub = col.row()
        sub.enabled = not sp.mesh_auto_level
        sub.prop(sp, "mesh_level")
        col.prop(sp, "mesh_morphs")
        col.prop(sp, "mesh_colors")
        rig = scene.active_rig(context)
        if rig is not None and rig.busto.mesh is not None:
            me = rig.busto.mesh.data
            info = layout.column(align=True)
            info.label(text=rig.busto.mesh.name, icon="MESH_DATA")
            info.label(text=f"{len(me.vertices)} verts, {len(me.polygons)} faces")
        if not _job_row(layout, context):
            row = layout.row()
            row.enabled = rig is not None
            row.operator("busto.extract_mesh", icon="MESH_DATA")


class BUSTO_PT_rig(_BustoPanel, bpy.types.Panel):
    bl_label = "Rig"
    bl_idname = "BUSTO_PT_rig"

    def draw(self, context):
        layout = self.layout
        rig = scene.active_rig(context)
        if rig is None:
            layout.label(text="Sample an avatar first", icon="INFO")
            return
        col = layout.column(align=True)
        col.label(text="Pose bones (Pose Mode):")
        flow = col.grid_flow(columns=2, align=True)
        for name in K.POSE_BONES:
            label = name.replace("left_", "L ").replace("right_", "R ").replace("_", " ").title()  # half a sidebar
            flow.prop(rig.pose.bones[name], "rotation_quaternion", index=-1, text=label)
        layout.operator("busto.reset_pose", icon="LOOP_BACK")
        box = layout.box()
        box.label(text="Expression", icon="MONKEY")
        c = box.column(align=True)
        for name in K.EXPRESSION_SLIDERS:
            c.prop(rig.busto, f"exp_{name}", slider=True)
        box.prop(rig.busto, "show_full_expression")
        if rig.busto.show_full_expression:
            box.column(align=True).prop(rig.busto, "expression", text="")


class BUSTO_PT_animate(_BustoPanel, bpy.types.Panel):
    bl_label = "Animate"
    bl_idname = "BUSTO_PT_animate"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        sp = context.scene.busto
        col = layout.column(align=True)
        col.prop(sp, "anim_start")
        col.prop(sp, "anim_interval")
        col.prop(sp, "anim_amplitude")
        row = layout.row(align=True)
        for name, label in (("NOD", "Nod"), ("TURN", "Turn"), ("SHRUG", "Shrug"), ("SMILE", "Smile")):
            row.operator("busto.animation_preset", text=label).preset = name
        layout.label(text="Keyframe files:")
        row = layout.row(align=True)
        row.operator("busto.import_keyframes", text="Import", icon="IMPORT")
        row.operator("busto.export_keyframes", text="Export", icon="EXPORT")


class BUSTO_PT_render(_BustoPanel, bpy.types.Panel):
    bl_label = "Render"
    bl_idname = "BUSTO_PT_render"

    def draw(self, context):
        layout = self.layout
        sc = context.scene
        col = layout.column(align=True)
        col.prop(sc.render, "resolution_x", text="Width")
        col.prop(sc.render, "resolution_y", text="Height")
        col.prop(sc.busto, "super_resolve")
        col.prop(sc.busto, "transparent_background")
        if sc.render.engine != K.ENGINE_ID or sc.view_settings.view_transform not in ("Standard", "Raw"):
            layout.operator("busto.setup_render", icon="RENDER_STILL")
        else:
            layout.label(text=f"Engine: {K.ENGINE_LABEL}", icon="CHECKMARK")
        layout.label(text="Add camera:")
        row = layout.row(align=True)
        row.operator("busto.add_camera", text="Portrait", icon="CAMERA_DATA").kind = "PORTRAIT"
        row.operator("busto.add_camera", text="Face", icon="VIEW_CAMERA").kind = "FACE"
        col = layout.column(align=True)  # the orbit preset: a full turn, to render the avatar from all sides
        col.prop(sc.busto, "orbit_frames", text="Turn frames")
        col.prop(sc.busto, "orbit_elevation")
        col.operator("busto.orbit_camera", text="Orbit Camera", icon="ORIENTATION_GIMBAL")
        rig = scene.active_rig(context)
        if rig is not None and rig.busto.model_mode == "frontal":
            _wrapped_label(layout, "Frontal model: back views fold onto the front", icon="INFO")
        if sc.camera is None:
            layout.label(text="No scene camera", icon="ERROR")
        rig = scene.active_rig(context)
        box = layout.box()
        row = box.row()
        row.enabled = rig is not None
        row.operator("busto.face_preview", icon="HIDE_OFF")
        if rig is not None and rig.busto.face_preview is not None:
            rig.busto.face_preview.preview_ensure()
            box.template_icon(icon_value=rig.busto.face_preview.preview.icon_id, scale=6.0)
        col = layout.column(align=True)  # side by side, "Render Anim…" at the default width
        col.operator("render.render", text="Render Frame", icon="RENDER_STILL")
        col.operator("render.render", text="Render Animation", icon="RENDER_ANIMATION").animation = True


class BUSTO_PT_engine_settings(bpy.types.Panel):
    """Engine options in Properties > Render when Busto Neural is the engine."""

    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    bl_label = "Busto Neural"
    bl_idname = "BUSTO_PT_engine_settings"
    COMPAT_ENGINES = {K.ENGINE_ID}

    @classmethod
    def poll(cls, context):
        return context.scene.render.engine in cls.COMPAT_ENGINES

    def draw(self, context):
        col = self.layout.column()
        col.prop(context.scene.busto, "super_resolve")
        col.prop(context.scene.busto, "transparent_background")
        col.prop(context.scene.busto, "checkpoint")


CLASSES = (BUSTO_PT_model, BUSTO_PT_avatar, BUSTO_PT_geometry, BUSTO_PT_rig, BUSTO_PT_animate, BUSTO_PT_render,
           BUSTO_PT_engine_settings)
