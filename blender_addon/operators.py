"""Operators, one per step of the panel: model, avatar, geometry, rig, animation, render."""

from __future__ import annotations

import math
import os

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import backend, convert, prefs, presets, scene
from . import constants as K
from .jobs import BackgroundJobOperator, error_message


def _settings(context, rig=None) -> backend.Settings:
    return prefs.resolve(context, context.scene, rig)


def _need_rig(op, context):
    rig = scene.active_rig(context)
    if rig is None:
        op.report({"ERROR"}, "No Busto avatar in the scene: sample one first (Avatar > Sample)")
    return rig


def _store_info(context, info: dict) -> None:
    rt = context.window_manager.busto
    rt.model_status = (f"{info.get('preset', '?')} model, {info.get('output_resolution', '?')} px, "
                       f"{info.get('mode', '?')} mode")
    rt.model_device = str(info.get("device", ""))
    rt.model_mode = str(info.get("mode", ""))


#: preview yaws of a sampled avatar: the front only, or all round (front, left, back, right)
FRONT_YAWS = [math.pi / 2]
ALL_ROUND_YAWS = [math.pi / 2 + k * math.pi / 2 for k in range(4)]


def _model_mode(context, rig=None) -> str:
    """'frontal' / '360' of the model the rig (or scene) renders with: what the rig recorded when it was sampled
    (the load reply), else the loaded model's reply or the checkpoint's config (backend.model_mode); '' unknown."""
    if rig is not None and rig.busto.model_mode:
        return rig.busto.model_mode
    return backend.model_mode(_settings(context, rig))


# ------------------------------------------------------------------------------------------------ model
class BUSTO_OT_load_model(BackgroundJobOperator, bpy.types.Operator):
    """Load the generator checkpoint (once per Blender session; rendering and sampling reuse it)"""

    bl_idname = "busto.load_model"
    bl_label = "Load Model"
    job_label = "Loading model"

    def prepare(self, context):
        return {"settings": _settings(context)}

    def work(self, job, state):
        return backend.load(state["settings"], job.report_progress, job.should_stop)

    def finish(self, context, state, info):
        _store_info(context, info)
        self.report({"INFO"}, f"Busto: loaded {info.get('checkpoint')} ({context.window_manager.busto.model_status}, "
                              f"{info.get('device')})")


# ------------------------------------------------------------------------------------------------ avatar
class BUSTO_OT_sample_avatar(BackgroundJobOperator, bpy.types.Operator):
    """Sample an avatar from the seed and truncation: creates a rig (one rig per avatar) with a preview"""

    bl_idname = "busto.sample_avatar"
    bl_label = "Sample Avatar"
    bl_options = {"REGISTER", "UNDO"}
    job_label = "Sampling avatar"

    new_avatar: BoolProperty(name="New avatar", default=True,
                             description="Create a new rig; off: re-sample the active avatar with its parameters")

    def prepare(self, context):
        sp = context.scene.busto
        rig = scene.active_rig(context) if not self.new_avatar else None
        if not self.new_avatar and rig is None:
            self.report({"ERROR"}, "No active Busto avatar to re-sample")
            return None
        if rig is not None:
            spec = scene.avatar_spec(rig, sp.super_resolve)
            full_360 = rig.busto.full_360
        else:
            spec = backend.AvatarSpec(seed=sp.new_seed, truncation=round(sp.new_truncation, 6),
                                      super_resolve=sp.super_resolve)
            full_360 = sp.new_full_360
        yaws = ALL_ROUND_YAWS if full_360 else FRONT_YAWS
        return {"settings": _settings(context, rig), "spec": spec, "yaws": yaws, "rig": rig.name if rig else None,
                "full_360": full_360}

    def work(self, job, state):
        info = backend.load(state["settings"], job.report_progress, job.should_stop)
        if info.get("mode") == "360":  # the checkpoint decides: a 360 model previews all round
            state["yaws"], state["full_360"] = ALL_ROUND_YAWS, True
        out = backend.sample(state["settings"], state["spec"], state["yaws"], 128, job.report_progress,
                             job.should_stop)
        return info, out

    def finish(self, context, state, result):
        info, out = result
        _store_info(context, info)
        spec = state["spec"]
        if state["rig"] is None:
            rig = scene.create_rig(context, f"Busto avatar {spec.seed}", out["joint_positions"])
            p = rig.busto
            p.seed, p.truncation, p.full_360 = spec.seed, spec.truncation, state["full_360"]
            p.checkpoint = state["settings"].checkpoint
            p.model_mode = str(info.get("mode", ""))
            for o in context.view_layer.objects:
                o.select_set(False)
            rig.select_set(True)
            context.view_layer.objects.active = rig
        else:
            rig = bpy.data.objects[state["rig"]]
            if scene.update_rig_rest(context, rig, out["joint_positions"]) and rig.busto.mesh is not None:
                self.report({"WARNING"}, f"{rig.name}: the body shape changed; extract the mesh again")
            rig.busto.model_mode = str(info.get("mode", ""))
            rig.busto.full_360 = state["full_360"]
        rig.busto.preview = _preview_image(f"{rig.name} preview", out["preview"])
        mode_note = ""
        if state["full_360"] and info.get("mode") != "360":
            mode_note = " (note: this checkpoint was trained in frontal mode; back views are not meaningful)"
        self.report({"INFO"}, f"Busto: avatar seed {spec.seed}, truncation {spec.truncation:g} -> {rig.name}"
                              + mode_note)


#: image files the photo browser shows
PHOTO_GLOB = "*.jpg;*.jpeg;*.png;*.webp;*.bmp;*.tif;*.tiff"


def photo_output_dir(cache_dir: str, photo: str) -> str:
    """The default folder of a photo's avatar: ``<cache>/photo_avatars/<photo name>-<hash of its path and
    modification time>`` (a changed photo gets a new folder; the same photo inverted again reuses it)."""
    import hashlib

    try:
        mtime = os.stat(photo).st_mtime_ns
    except OSError:
        mtime = 0
    digest = hashlib.sha1(f"{os.path.abspath(photo)}|{mtime}".encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in os.path.splitext(os.path.basename(photo))[0])
    return os.path.join(cache_dir or os.path.expanduser("~"), "photo_avatars", f"{stem[:40] or 'photo'}-{digest}")


class BUSTO_OT_avatar_from_photo(BackgroundJobOperator, bpy.types.Operator):
    """Make an avatar of the person in a photo: the worker prepares the photo, inverts it into the model and tunes
    the model on it (minutes on a CPU), then the avatar is loaded with its rig and mesh, ready to keyframe"""

    bl_idname = "busto.avatar_from_photo"
    bl_label = "Avatar from Photo"
    bl_options = {"REGISTER", "UNDO"}
    job_label = "Avatar from photo"

    filepath: StringProperty(name="Photo", subtype="FILE_PATH", description="Portrait photo of one person")
    filter_glob: StringProperty(default=PHOTO_GLOB, options={"HIDDEN"})
    prepared: StringProperty(name="Prepared folder", subtype="DIR_PATH", default="", options={"SKIP_SAVE"},
                             description="A prepared dataset folder (labels.json + images) instead of a photo")
    index: IntProperty(name="Record", default=0, min=0, description="Record of the prepared folder")
    output_dir: StringProperty(name="Output folder", subtype="DIR_PATH", default="",
                               description="Where the avatar checkpoint, sheet and report go (empty: a folder per "
                                           "photo under the Busto cache folder)")
    latent_steps: IntProperty(name="Latent steps", default=40, min=0, max=5000)
    tune_steps: IntProperty(name="Tuning steps", default=30, min=0, max=5000)
    sr_steps: IntProperty(name="Super-resolution steps", default=30, min=0, max=5000)
    face_steps: IntProperty(name="Face texture steps", default=60, min=0, max=5000)
    detail_steps: IntProperty(name="Face detail steps", default=100, min=0, max=5000,
                              description="Face-texture tuning on the full-resolution output, last")
    candidates: IntProperty(name="Starting codes", default=8, min=1, max=64)
    extract: BoolProperty(name="Extract mesh", default=True,
                          description="Extract, colour and bind the mesh (with the Geometry panel's settings)")

    def invoke(self, context, event):
        if not self.filepath and not self.prepared and not bpy.app.background and context.window is not None:
            context.window_manager.fileselect_add(self)
            return {"RUNNING_MODAL"}
        return BackgroundJobOperator.invoke(self, context, event)

    def execute(self, context):
        # after the file browser Blender calls execute: run as a background job with progress and Esc to cancel
        if not bpy.app.background and context.window is not None:
            return BackgroundJobOperator.invoke(self, context, None)
        return BackgroundJobOperator.execute(self, context)

    def prepare(self, context):
        settings = _settings(context)
        photo = bpy.path.abspath(self.filepath) if self.filepath else ""
        prepared = bpy.path.abspath(self.prepared) if self.prepared else ""
        if not photo and not prepared:
            self.report({"ERROR"}, "Avatar from photo: choose a photo")
            return None
        source = photo or prepared
        if not os.path.exists(source):
            self.report({"ERROR"}, f"Avatar from photo: {source}: no such file")
            return None
        out = bpy.path.abspath(self.output_dir) if self.output_dir else photo_output_dir(settings.cache_dir, source)
        sp = context.scene.busto
        return {"settings": settings, "photo": photo or None, "prepared": prepared or None, "index": self.index,
                "out": out, "steps": (self.latent_steps, self.tune_steps, self.sr_steps, self.face_steps, self.detail_steps),
                "candidates": self.candidates,
                "extract": self.extract, "super_resolve": sp.super_resolve, "resolution": sp.mesh_resolution,
                "decimate": sp.mesh_decimate, "colors": sp.mesh_colors,
                "level": "auto" if sp.mesh_auto_level else sp.mesh_level, "morphs": sp.mesh_morphs,
                "name": os.path.splitext(os.path.basename(source.rstrip("/\\")))[0] or "photo"}

    def work(self, job, state):
        import dataclasses

        def part(lo: float, hi: float):
            return lambda x, label="": job.report_progress(lo + (hi - lo) * float(x), label)

        backend.load(state["settings"], part(0.0, 0.02), job.should_stop)
        latent, tune, sr, face, detail = state["steps"]
        result = backend.invert(state["settings"], state["out"], photo=state["photo"], prepared=state["prepared"],
                                index=state["index"], latent_steps=latent, tune_steps=tune, sr_steps=sr,
                                face_steps=face, detail_steps=detail, candidates=state["candidates"], progress=part(0.02, 0.8), should_stop=job.should_stop)
        settings = dataclasses.replace(state["settings"], checkpoint=str(result["checkpoint"]))
        info = backend.load(settings, part(0.8, 0.82), job.should_stop)
        spec = backend.AvatarSpec(seed=0, truncation=0.7, body_shape=tuple(min(5.0, max(-5.0, float(x))) for x in result["body_shape"]),
                                  super_resolve=state["super_resolve"])
        sample = backend.sample(settings, spec, [math.pi / 2], 128, part(0.82, 0.86), job.should_stop)
        mesh = None
        if state["extract"]:
            mesh = backend.extract(settings, spec, state["resolution"], state["decimate"], state["colors"],
                                   state["level"], state["morphs"], part(0.86, 1.0), job.should_stop)
        return {"result": result, "info": info, "spec": spec, "sample": sample, "mesh": mesh,
                "checkpoint": settings.checkpoint}

    def finish(self, context, state, out):
        _store_info(context, out["info"])
        spec, result = out["spec"], out["result"]
        rig = scene.create_rig(context, f"Busto photo {state['name']}", out["sample"]["joint_positions"])
        p = rig.busto
        p.seed, p.truncation, p.full_360 = spec.seed, spec.truncation, False
        p.body_shape = spec.body_shape
        p.checkpoint = out["checkpoint"]
        p.model_mode = str(out["info"].get("mode", ""))
        for o in context.view_layer.objects:
            o.select_set(False)
        rig.select_set(True)
        context.view_layer.objects.active = rig
        p.preview = _preview_image(f"{rig.name} preview", out["sample"]["preview"])
        if out["mesh"] is not None:
            p.mesh = scene.create_mesh(context, rig, f"{rig.name} mesh", out["mesh"], state["colors"])
        rec = result.get("reconstruction", {})
        self.report({"INFO"}, f"Busto: {rig.name} from {state['photo'] or state['prepared']}: PSNR "
                              f"{rec.get('psnr_matte', float('nan')):.1f} dB inside the matte, "
                              f"{rec.get('psnr_face_region', float('nan')):.1f} dB face region; checkpoint "
                              f"{out['checkpoint']}")


def _preview_image(name: str, previews: np.ndarray, pack: bool = True):
    """Side-by-side previews [n, S, S, 4] (sRGB, top-down) -> a packed Blender image (saved in the .blend)."""
    tiles = np.asarray(previews, dtype=np.float32)
    strip = np.concatenate(list(tiles), axis=1)  # [S, n*S, 4]
    h, w = strip.shape[:2]
    img = bpy.data.images.get(name)
    if img is not None and (img.size[0], img.size[1]) != (w, h):
        bpy.data.images.remove(img)
        img = None
    if img is None:
        img = bpy.data.images.new(name, w, h, alpha=True)
    img.colorspace_settings.name = "sRGB"
    rgba = strip.copy()
    rgba[..., 3] = 1.0
    img.pixels.foreach_set(np.flipud(rgba).ravel())
    img.update()
    if pack:
        img.pack()
    img.preview_ensure()
    return img


class BUSTO_OT_remove_avatar(bpy.types.Operator):
    """Delete the active avatar's rig and its mesh"""

    bl_idname = "busto.remove_avatar"
    bl_label = "Remove Avatar"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        rig = _need_rig(self, context)
        if rig is None:
            return {"CANCELLED"}
        name = rig.name
        for child in list(rig.children):
            bpy.data.objects.remove(child, do_unlink=True)
        arm = rig.data
        bpy.data.objects.remove(rig, do_unlink=True)
        if arm.users == 0:
            bpy.data.armatures.remove(arm)
        self.report({"INFO"}, f"Busto: removed {name}")
        return {"FINISHED"}


# ------------------------------------------------------------------------------------------------ geometry
class BUSTO_OT_extract_mesh(BackgroundJobOperator, bpy.types.Operator):
    """Extract the active avatar's mesh (marching cubes of its density), colour it and bind it to the rig"""

    bl_idname = "busto.extract_mesh"
    bl_label = "Extract Mesh"
    bl_options = {"REGISTER", "UNDO"}
    job_label = "Extracting mesh"

    def prepare(self, context):
        rig = _need_rig(self, context)
        if rig is None:
            return None
        sp = context.scene.busto
        return {"settings": _settings(context, rig), "spec": scene.avatar_spec(rig, sp.super_resolve),
                "rig": rig.name, "resolution": sp.mesh_resolution, "decimate": sp.mesh_decimate,
                "colors": sp.mesh_colors, "level": "auto" if sp.mesh_auto_level else sp.mesh_level, "morphs": sp.mesh_morphs}

    def work(self, job, state):
        backend.load(state["settings"], job.report_progress, job.should_stop)
        return backend.extract(state["settings"], state["spec"], state["resolution"], state["decimate"],
                               state["colors"], state["level"], state["morphs"], job.report_progress,
                               job.should_stop)

    def finish(self, context, state, data):
        rig = bpy.data.objects.get(state["rig"])
        if rig is None:
            raise ValueError(f"the rig {state['rig']!r} was deleted while the mesh was extracted")
        old = rig.busto.mesh
        name = f"{rig.name} mesh"
        ob = scene.create_mesh(context, rig, name, data, state["colors"])
        if old is not None and old.name in bpy.data.objects:
            old_me = old.data
            bpy.data.objects.remove(old, do_unlink=True)
            if old_me is not None and old_me.users == 0:
                bpy.data.meshes.remove(old_me)
            ob.name = ob.data.name = name
        rig.busto.mesh = ob
        keys = len(ob.data.shape_keys.key_blocks) - 1 if ob.data.shape_keys else 0
        self.report({"INFO"}, f"Busto: {ob.name}: {len(ob.data.vertices)} vertices, {len(ob.data.polygons)} faces, "
                              f"{keys} expression shape keys, bound to {rig.name}")


# ------------------------------------------------------------------------------------------------ rig
class BUSTO_OT_reset_pose(bpy.types.Operator):
    """Put the avatar back in the canonical pose with a neutral expression (keyframes are kept)"""

    bl_idname = "busto.reset_pose"
    bl_label = "Reset Pose"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        rig = _need_rig(self, context)
        if rig is None:
            return {"CANCELLED"}
        for pb in rig.pose.bones:
            pb.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
        rig.busto.expression.foreach_set(np.zeros(K.EXPRESSION_DIM, np.float32))
        for name in K.EXPRESSION_SLIDERS:
            setattr(rig.busto, f"exp_{name}", 0.0)
        self.report({"INFO"}, f"Busto: {rig.name} reset to the canonical pose")
        return {"FINISHED"}


# ------------------------------------------------------------------------------------------------ animation
def load_official_keyframes(path: str) -> dict:
    """An official AniPortraitGAN keyframe folder or file -> {'pose': [N,6,3] Eulers, 'expression': [N,64],
    'camera': [N,2]} (keys present when found)."""
    path = bpy.path.abspath(path)
    out: dict[str, np.ndarray] = {}
    if os.path.isdir(path):
        for key, names in (("pose", ("joint_eulers.npy", "pose.npy")), ("expression", ("expression.npy",)),
                           ("camera", ("camera_pose.npy",))):
            for n in names:
                f = os.path.join(path, n)
                if os.path.isfile(f):
                    out[key] = np.load(f, allow_pickle=False)
                    break
    elif os.path.isfile(path):
        a = np.load(path, allow_pickle=False)
        base = os.path.basename(path).lower()
        key = "expression" if "expression" in base else "camera" if "camera" in base else "pose"
        out[key] = a
    else:
        raise FileNotFoundError(f"no such keyframe file or folder: {path}")
    if not out:
        raise ValueError(f"{path}: no official keyframe files (joint_eulers.npy / pose.npy, expression.npy, "
                         f"camera_pose.npy)")
    checks = {"pose": (6, 3), "expression": (K.EXPRESSION_DIM,), "camera": (2,)}
    for key, a in out.items():
        if a.ndim != len(checks[key]) + 1 or tuple(a.shape[1:]) != checks[key]:
            raise ValueError(f"{path}: {key} keyframes must be [N, {', '.join(map(str, checks[key]))}], got "
                             f"{list(a.shape)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{path}: {key} keyframes contain NaN or inf")
    return out


class BUSTO_OT_import_keyframes(bpy.types.Operator):
    """Import official AniPortraitGAN keyframes (a folder with joint_eulers.npy/pose.npy, expression.npy,
    camera_pose.npy, or one of those files) onto the active avatar"""

    bl_idname = "busto.import_keyframes"
    bl_label = "Import Keyframes"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="File or folder", subtype="FILE_PATH")
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    filter_glob: StringProperty(default="*.npy", options={"HIDDEN"})
    use_camera: BoolProperty(name="Camera", default=True,
                             description="Key the scene camera on the portrait orbit from camera_pose.npy")
    bake: BoolProperty(name="Bake every frame", default=False,
                       description="Key every frame with the official linear interpolation of Euler angles "
                                   "(off: key only the keyframes, linear F-curves)")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        rig = _need_rig(self, context)
        if rig is None:
            return {"CANCELLED"}
        path = self.filepath or self.directory
        try:
            data = load_official_keyframes(path)
            n_keys = self.apply(context, rig, data)
        except Exception as exc:
            self.report({"ERROR"}, f"Import keyframes: {error_message(exc)}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Busto: imported {', '.join(f'{k} ({len(v)})' for k, v in data.items())} keys onto "
                              f"{rig.name} ({n_keys} frames)")
        return {"FINISHED"}

    def apply(self, context, rig, data: dict) -> int:
        sp = context.scene.busto
        start, step = sp.anim_start, sp.anim_interval
        interp = "LINEAR"
        last = start
        for key, values in data.items():
            if self.bake and len(values) > 1:
                values = convert.interpolate_keyframes(values, step)
                frames = [start + i for i in range(len(values))]
            else:
                frames = [start + i * step for i in range(len(values))]
            last = max(last, frames[-1])
            if key == "pose":
                scene.key_pose(rig, convert.official_keyframes_to_pose_code(values), frames, interp)
            elif key == "expression":
                scene.key_expression(rig, values, frames, interp)
            elif key == "camera" and self.use_camera:
                cam = context.scene.camera
                if cam is None:
                    cam = scene.add_portrait_camera(context, rig)
                    context.scene.camera = cam
                scene.key_orbit_camera(cam, rig, values, frames)
        context.scene.frame_start = start
        context.scene.frame_end = max(context.scene.frame_end if context.scene.frame_end > start else start, last)
        context.scene.frame_set(start)
        return last - start + 1


class BUSTO_OT_export_keyframes(bpy.types.Operator):
    """Write the active avatar's animation over the scene's frame range in the official format
    (joint_eulers.npy [N,6,3], expression.npy [N,64], camera_pose.npy [N,2])"""

    bl_idname = "busto.export_keyframes"
    bl_label = "Export Keyframes"

    directory: StringProperty(name="Folder", subtype="DIR_PATH")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        rig = _need_rig(self, context)
        if rig is None:
            return {"CANCELLED"}
        if not self.directory:
            self.report({"ERROR"}, "Export keyframes: choose a folder")
            return {"CANCELLED"}
        sc = context.scene
        folder = bpy.path.abspath(self.directory)
        frame0 = sc.frame_current
        eulers, exprs, cams = [], [], []
        try:
            os.makedirs(folder, exist_ok=True)
            for f in range(sc.frame_start, sc.frame_end + 1):
                sc.frame_set(f)
                pose = scene.read_pose_code(rig)
                eulers.append(convert.matrix_to_euler_zyx(convert.axis_angle_to_matrix(pose)))
                exprs.append(scene.read_expression(rig))
                if sc.camera is not None:
                    c2w = convert.blender_camera_to_cv(np.array(sc.camera.matrix_world), np.array(rig.matrix_world))
                    d = c2w[:3, 3] - np.asarray(K.PORTRAIT_LOOK_AT)
                    r = np.linalg.norm(d)
                    cams.append([math.acos(np.clip(d[1] / r, -1, 1)), math.atan2(d[2], d[0])])
            np.save(os.path.join(folder, "joint_eulers.npy"), np.asarray(eulers, np.float64))
            np.save(os.path.join(folder, "expression.npy"), np.asarray(exprs, np.float32))
            if cams:
                np.save(os.path.join(folder, "camera_pose.npy"), np.asarray(cams, np.float32))
        except OSError as exc:
            self.report({"ERROR"}, f"Export keyframes: {exc}")
            return {"CANCELLED"}
        finally:
            sc.frame_set(frame0)
        self.report({"INFO"}, f"Busto: wrote {len(eulers)} frames to {folder}")
        return {"FINISHED"}


_PRESET_ITEMS = [(n, presets.build_preset(n).label, presets.build_preset(n).description) for n in presets.PRESET_NAMES]


class BUSTO_OT_animation_preset(bpy.types.Operator):
    """Key a short animation on the active avatar"""

    bl_idname = "busto.animation_preset"
    bl_label = "Animation Preset"
    bl_options = {"REGISTER", "UNDO"}

    preset: EnumProperty(name="Preset", items=_PRESET_ITEMS)

    def execute(self, context):
        rig = _need_rig(self, context)
        if rig is None:
            return {"CANCELLED"}
        sp = context.scene.busto
        p = presets.build_preset(self.preset, sp.anim_amplitude)
        frames = [sp.anim_start + k * sp.anim_interval for k in p.frames]
        if p.pose is not None:
            scene.key_pose(rig, p.pose, frames)
        if p.sliders:
            scene.key_sliders(rig, p.sliders, frames)
        sc = context.scene
        sc.frame_end = max(sc.frame_end, frames[-1])
        self.report({"INFO"}, f"Busto: keyed '{p.label}' on {rig.name}, frames {frames[0]}-{frames[-1]}")
        return {"FINISHED"}


# ------------------------------------------------------------------------------------------------ render
class BUSTO_OT_add_camera(bpy.types.Operator):
    """Add a camera matching the generator's portrait camera, or a face camera that follows the head"""

    bl_idname = "busto.add_camera"
    bl_label = "Add Camera"
    bl_options = {"REGISTER", "UNDO"}

    kind: EnumProperty(name="Camera", items=[
        ("PORTRAIT", "Portrait", "The generator's portrait camera (head and shoulders, 12° field of view)"),
        ("FACE", "Face", "The face camera: close-up that follows the head bone"),
    ])
    make_active: BoolProperty(name="Make active", default=True)
    yaw: FloatProperty(name="Yaw", default=0.0, min=-math.pi, max=math.pi, subtype="ANGLE",
                       description="Portrait camera angle around the avatar (0: front, ±180°: back; a frontal "
                                   "model covers about ±90°, a 360° model all round)")

    def execute(self, context):
        rig = _need_rig(self, context)
        if rig is None:
            return {"CANCELLED"}
        yaw = presets.FRONT_YAW + self.yaw
        if self.kind == "PORTRAIT":
            cam = scene.add_portrait_camera(context, rig, yaw=yaw)
        else:
            cam = scene.add_face_camera(context, rig)
        if self.make_active:
            context.scene.camera = cam
        self.report({"INFO"}, f"Busto: added {cam.name}")
        if self.kind == "PORTRAIT" and presets.outside_frontal_range(yaw) and _model_mode(context, rig) == "frontal":
            self.report({"WARNING"}, f"Busto: a yaw of {math.degrees(self.yaw):.0f}° sees the back; this checkpoint "
                                     "was trained in frontal mode, so back views are outside its range")
        return {"FINISHED"}


class BUSTO_OT_orbit_camera(bpy.types.Operator):
    """Key a camera making one full turn around the active avatar over a frame range (linear, at the portrait
    camera's distance, looking at the portrait centre): render the animation to see the avatar from all sides"""

    bl_idname = "busto.orbit_camera"
    bl_label = "Orbit Camera"
    bl_options = {"REGISTER", "UNDO"}

    frame_start: IntProperty(name="Start", default=1, description="First frame of the turn (default: the Animate "
                                                                 "panel's Start)")
    frame_end: IntProperty(name="End", default=120, description="Last frame of the turn (default: Start + the "
                                                               "Animate panel's orbit frames - 1)")
    make_active: BoolProperty(name="Make active", default=True)
    set_range: BoolProperty(name="Set frame range", default=True,
                            description="Make the scene's frame range the turn (a seamless loop)")

    def execute(self, context):
        rig = _need_rig(self, context)
        if rig is None:
            return {"CANCELLED"}
        sp, sc = context.scene.busto, context.scene
        start = self.frame_start if self.properties.is_property_set("frame_start") else sp.anim_start
        end = self.frame_end if self.properties.is_property_set("frame_end") else start + sp.orbit_frames - 1
        if end <= start:
            self.report({"ERROR"}, f"Orbit camera: the end frame ({end}) must come after the start frame ({start})")
            return {"CANCELLED"}
        cam = scene.add_orbit_camera(context, rig, start, end, sp.orbit_elevation)
        if self.make_active:
            sc.camera = cam
        if self.set_range:
            sc.frame_start, sc.frame_end = start, end
        mode = _model_mode(context, rig)
        self.report({"INFO"}, f"Busto: {cam.name} turns around {rig.name} over frames {start}-{end} "
                              f"({360.0 / (end - start + 1):.3g}° a frame, {mode or 'unknown'} model)")
        if mode == "frontal":
            self.report({"WARNING"}, "Busto: this checkpoint was trained in frontal mode; the back half of the "
                                     "orbit is outside its range (the back folds onto the front). Use a 360° model "
                                     "(render.mode = '360') for back views")
        return {"FINISHED"}


class BUSTO_OT_face_preview(BackgroundJobOperator, bpy.types.Operator):
    """Render the active avatar through the generator's face camera (follows the head) at the current frame"""

    bl_idname = "busto.face_preview"
    bl_label = "Face Preview"
    job_label = "Face preview"

    size: IntProperty(name="Size", default=128, min=16, max=1024)

    def prepare(self, context):
        rig = _need_rig(self, context)
        if rig is None:
            return None
        context.view_layer.update()
        Kn = convert.blender_intrinsics(convert.lens_for_fov(K.FACE_FOV_DEG), 36.0, 36.0, "AUTO", self.size,
                                        self.size)
        return {"settings": _settings(context, rig), "rig": rig.name,
                "spec": scene.avatar_spec(rig, context.scene.busto.super_resolve),
                "pose": scene.read_pose_code(rig), "expression": scene.read_expression(rig),
                "cam2world": scene.face_camera_cv(rig), "intrinsics": Kn}

    def work(self, job, state):
        backend.load(state["settings"], job.report_progress, job.should_stop)
        job.report_progress(0.5, "rendering")
        return backend.render_frames(state["settings"], state["spec"], state["pose"], state["expression"],
                                     state["cam2world"], state["intrinsics"], size=self.size,
                                     should_stop=job.should_stop)

    def finish(self, context, state, rgba):
        rig = bpy.data.objects.get(state["rig"])
        if rig is None:
            raise ValueError(f"the rig {state['rig']!r} was deleted")
        rig.busto.face_preview = _preview_image(f"{rig.name} face preview", rgba, pack=False)
        self.report({"INFO"}, f"Busto: face preview of {rig.name} at frame {context.scene.frame_current}")


class BUSTO_OT_setup_render(bpy.types.Operator):
    """Use the Busto Neural engine with the 'Standard' view transform (shows the generator's pixels unchanged)"""

    bl_idname = "busto.setup_render"
    bl_label = "Use Busto Neural"
    bl_options = {"REGISTER", "UNDO"}

    resolution: IntProperty(name="Resolution", default=0, min=0, max=4096,
                            description="Square output size (0: keep the scene's resolution)")

    def execute(self, context):
        sc = context.scene
        scene.setup_render(sc)
        if self.resolution:
            sc.render.resolution_x = sc.render.resolution_y = self.resolution
            sc.render.resolution_percentage = 100
        self.report({"INFO"}, f"Busto: render engine {K.ENGINE_LABEL}, view transform Standard, "
                              f"{sc.render.resolution_x}x{sc.render.resolution_y}")
        return {"FINISHED"}


CLASSES = (
    BUSTO_OT_load_model, BUSTO_OT_sample_avatar, BUSTO_OT_avatar_from_photo, BUSTO_OT_remove_avatar, BUSTO_OT_extract_mesh, BUSTO_OT_reset_pose,
    BUSTO_OT_import_keyframes, BUSTO_OT_export_keyframes, BUSTO_OT_animation_preset, BUSTO_OT_add_camera,
    BUSTO_OT_orbit_camera,
    BUSTO_OT_face_preview, BUSTO_OT_setup_render,
)
