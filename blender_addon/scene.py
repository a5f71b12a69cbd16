"""Blender-side building blocks (bpy): the avatar rig, the skinned mesh, pose/expression keyframes and their
readback, cameras. The math is in :mod:`.convert`; this module only moves arrays in and out of Blender data."""

from __future__ import annotations

import math

import bpy
import numpy as np
from bpy_extras import anim_utils
from mathutils import Matrix

from . import constants as K
from . import convert, presets
from .props import effective_expression, set_expression

#: Bone tails: child joint to point at (SMPL id), or None for a fixed offset.
_TAIL_TARGET = {0: 3, 3: 6, 6: 9, 9: 12, 12: 15, 13: 16, 14: 17, 16: 18, 17: 19}


# --------------------------------------------------------------------------------------------- lookup
def is_rig(ob) -> bool:
    return ob is not None and ob.type == "ARMATURE" and ob.busto.is_avatar


def active_rig(context):
    """The avatar the panel acts on: the active object if it is a Busto rig, the rig of an active Busto mesh, or
    the first Busto rig in the scene."""
    ob = context.active_object
    if is_rig(ob):
        return ob
    if ob is not None and is_rig(ob.parent):
        return ob.parent
    for o in context.scene.objects:
        if is_rig(o):
            return o
    return None


def scene_rigs(scene, for_render: bool = False) -> list:
    return [o for o in scene.objects if is_rig(o) and not (for_render and o.hide_render)]


# --------------------------------------------------------------------------------------------- rig
def create_rig(context, name: str, joint_positions: np.ndarray):
    """A new armature whose rest pose is the canonical pose.

    ``joint_positions`` [24, 3]: canonical SMPL joints (metres, canonical frame, origin at the neck joint), so the
    armature's origin is the canonical neck joint and armature space is canonical space in Blender axes. Bones:
    pelvis, spine1-3, neck, collars, head, shoulders, elbows. Only the six pose bones may rotate (the generator
    is driven by the pose code); move the whole avatar with the object transform.
    """
    arm = bpy.data.armatures.new(name)
    ob = bpy.data.objects.new(name, arm)
    context.scene.collection.objects.link(ob)
    ob.show_in_front = True
    _edit_bones(context, ob, joint_positions, create=True)
    for pb in ob.pose.bones:
        pb.rotation_mode = "QUATERNION"
        posable = pb.name in K.POSE_BONES
        pb.lock_location = (True, True, True)
        pb.lock_scale = (True, True, True)
        pb.lock_rotation = (not posable,) * 3
        pb.lock_rotation_w = not posable
    ob.busto.is_avatar = True
    return ob


def update_rig_rest(context, ob, joint_positions: np.ndarray) -> bool:
    """Move the rest bones to new canonical joints (a new body shape). Returns whether anything moved."""
    jp = convert.smpl_to_blender_points(np.asarray(joint_positions, dtype=np.float64).reshape(24, 3))
    heads = np.array([ob.data.bones[K.SMPL_JOINT_NAMES[j]].head_local for j in K.RIG_JOINTS])
    if np.abs(heads - jp[list(K.RIG_JOINTS)]).max() < 1e-6:
        return False
    _edit_bones(context, ob, joint_positions, create=False)
    return True


def _edit_bones(context, ob, joint_positions: np.ndarray, create: bool) -> None:
    jp = convert.smpl_to_blender_points(np.asarray(joint_positions, dtype=np.float64).reshape(24, 3))
    arm = ob.data
    view_layer = context.view_layer
    previous = view_layer.objects.active
    if previous is not None and previous.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = ob
    try:
        bpy.ops.object.mode_set(mode="EDIT")
        for j in K.RIG_JOINTS:
            name_j = K.SMPL_JOINT_NAMES[j]
            eb = arm.edit_bones.new(name_j) if create else arm.edit_bones[name_j]
            head = jp[j]
            if j in _TAIL_TARGET:
                tail = jp[_TAIL_TARGET[j]]
            elif j == 15:  # head: straight up
                tail = head + np.array([0.0, 0.0, 0.18])
            else:  # elbows: continue the upper arm
                tail = head + 0.8 * (jp[j] - jp[K.SMPL_PARENTS[j]])
            if np.linalg.norm(tail - head) < 1e-3:
                tail = head + np.array([0.0, 0.0, 0.05])
            eb.head, eb.tail, eb.roll = head.tolist(), tail.tolist(), 0.0
            p = K.SMPL_PARENTS[j]
            if create and p >= 0:
                eb.parent = arm.edit_bones[K.SMPL_JOINT_NAMES[p]]
            eb.use_connect = False
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = previous if previous is not None else ob


def rest_rotations(ob, bones=K.POSE_BONES) -> np.ndarray:
    """Rest orientations [J, 3, 3] (bone -> armature) of the named bones."""
    return np.array([np.array(ob.data.bones[n].matrix_local.to_3x3()) for n in bones])


def read_pose_code(ob) -> np.ndarray:
    """Pose code [6, 3] from the (evaluated) rig's pose bones."""
    basis = np.array([np.array(ob.pose.bones[n].matrix_basis) for n in K.POSE_BONES])
    return convert.bone_matrices_to_pose_code(basis, rest_rotations(ob))


def set_pose_code(ob, pose: np.ndarray) -> None:
    q = convert.pose_code_to_bone_quaternions(np.asarray(pose).reshape(6, 3), rest_rotations(ob))
    for n, qi in zip(K.POSE_BONES, q):
        ob.pose.bones[n].rotation_quaternion = qi.tolist()


def read_expression(ob) -> np.ndarray:
    return np.asarray(effective_expression(ob.busto), dtype=np.float64)


def avatar_spec(ob, super_resolve: bool):
    from .backend import AvatarSpec

    p = ob.busto
    return AvatarSpec(seed=int(p.seed), truncation=round(float(p.truncation), 6),
                      body_shape=tuple(round(float(x), 6) for x in p.body_shape), super_resolve=bool(super_resolve))


# --------------------------------------------------------------------------------------------- mesh
def create_mesh(context, rig, name: str, data: dict, colors: bool = True):
    """Mesh object from the worker's arrays (canonical metres), parented to ``rig`` and skinned with the exported
    weights (vertex groups named after the rig's bones + an Armature modifier)."""
    v = convert.smpl_to_blender_points(data["vertices"]).astype(np.float32)
    f = np.asarray(data["faces"], dtype=np.int32)
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(v))
    me.vertices.foreach_set("co", v.ravel())
    me.loops.add(f.size)
    me.loops.foreach_set("vertex_index", f.ravel())
    me.polygons.add(len(f))
    me.polygons.foreach_set("loop_start", np.arange(0, f.size, 3, dtype=np.int32))
    me.update(calc_edges=True)
    me.validate(verbose=False)
    if colors and data.get("colors") is not None and len(data["colors"]) == len(v):
        rgb = convert.srgb_to_linear(np.asarray(data["colors"])[:, :3])
        rgba = np.concatenate([rgb, np.ones((len(rgb), 1), np.float32)], axis=1)
        attr = me.color_attributes.new("Col", "FLOAT_COLOR", "POINT")
        attr.data.foreach_set("color", rgba.ravel())
        me.color_attributes.active_color = attr
        textured = data.get("loop_uvs") is not None and data.get("texture") is not None
        if textured and len(data["loop_uvs"]) == len(f):
            _texture(me, name, np.asarray(data["loop_uvs"], np.float32), np.asarray(data["texture"], np.uint8))
        else:
            me.materials.append(_vertex_color_material())
    for poly in me.polygons:
        poly.use_smooth = True
    ob = bpy.data.objects.new(name, me)
    context.scene.collection.objects.link(ob)
    ob.parent = rig
    ob.matrix_parent_inverse = Matrix.Identity(4)
    _skin(ob, rig, data)
    if data.get("morphs") is not None and len(data["morphs"]):
        _expression_shape_keys(ob, rig, v, data)
    return ob


def _expression_shape_keys(ob, rig, rest: np.ndarray, data: dict) -> None:
    """One shape key per expression morph, driven by the rig's expression controls:
    ``value = (expression[c] + slider(c)) / morph_scale`` (linear morphs, applied before the Armature modifier,
    i.e. expression in canonical space, then pose, as in the generator)."""
    ob.shape_key_add(name="Basis", from_mix=False)
    scale = float(data.get("morph_scale", 2.0))
    slider_of = {index: name for name, index in K.EXPRESSION_SLIDERS.items()}
    for name, comp, delta in zip(data["morph_names"], data["morph_components"], data["morphs"]):
        comp = int(comp)
        kb = ob.shape_key_add(name=str(name), from_mix=False)  # the glTF morph target name (export's too)
        kb.data.foreach_set("co", (rest + convert.smpl_to_blender_points(delta)).astype(np.float32).ravel())
        kb.slider_min, kb.slider_max = -10.0, 10.0
        drv = kb.driver_add("value").driver
        drv.type = "SCRIPTED"
        var = drv.variables.new()
        var.name, var.type = "e", "SINGLE_PROP"
        var.targets[0].id_type = "OBJECT"
        var.targets[0].id = rig
        var.targets[0].data_path = f"busto.expression[{comp // 8}][{comp % 8}]"
        expr = "e"
        if comp in slider_of:
            s = drv.variables.new()
            s.name, s.type = "s", "SINGLE_PROP"
            s.targets[0].id_type = "OBJECT"
            s.targets[0].id = rig
            s.targets[0].data_path = f"busto.exp_{slider_of[comp]}"
            expr = "(e + s)"
        drv.expression = f"{expr} / {scale!r}"


def _texture(me, name: str, loop_uvs: np.ndarray, texture: np.ndarray) -> None:
    """UV map from per-corner UVs [F,3,2] (glTF convention, v down) and a material showing the baked sRGB texture
    [S,S,3] (packed into the .blend; Workbench 'Texture' colour and EEVEE/Cycles show it)."""
    uv = me.uv_layers.new(name="UVMap")
    flipped = loop_uvs.reshape(-1, 2).copy()
    flipped[:, 1] = 1.0 - flipped[:, 1]  # Blender's v points up
    uv.data.foreach_set("uv", flipped.ravel())
    h, w = texture.shape[:2]
    img = bpy.data.images.new(f"{name} texture", w, h, alpha=False)
    rgba = np.concatenate([texture[::-1].astype(np.float32) / 255.0, np.ones((h, w, 1), np.float32)], axis=-1)
    img.pixels.foreach_set(rgba.ravel())  # Blender images are bottom-up; byte images hold sRGB values
    img.pack()
    mat = bpy.data.materials.new(f"{name} texture")
    if mat.node_tree is None:  # Blender < 5.0 creates materials without nodes
        mat.use_nodes = True
    nt = mat.node_tree
    bsdf = next(n for n in nt.nodes if n.type == "BSDF_PRINCIPLED")
    tex = nt.nodes.new("ShaderNodeTexImage")
    tex.image = img
    nt.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    nt.nodes.active = tex
    bsdf.inputs["Roughness"].default_value = 0.7
    me.materials.append(mat)


def _vertex_color_material():
    mat = bpy.data.materials.get("Busto vertex colour")
    if mat is not None:
        return mat
    mat = bpy.data.materials.new("Busto vertex colour")
    if mat.node_tree is None:  # Blender < 5.0 creates materials without nodes
        mat.use_nodes = True
    nt = mat.node_tree
    bsdf = next(n for n in nt.nodes if n.type == "BSDF_PRINCIPLED")
    col = nt.nodes.new("ShaderNodeVertexColor")
    col.layer_name = "Col"
    nt.links.new(col.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.7
    return mat


def _skin(ob, rig, data: dict) -> None:
    names = [str(n) for n in data["joint_names"]]
    joints = np.asarray(data["joints"], dtype=np.int64)
    weights = np.asarray(data["weights"], dtype=np.float32)
    bone_names = set(rig.data.bones.keys())
    for j, name in enumerate(names):
        if name not in bone_names:
            continue
        vg = ob.vertex_groups.new(name=name)
        rows, cols = np.nonzero((joints == j) & (weights > 0))
        if len(rows) == 0:
            continue
        w = weights[rows, cols]
        # batch by quantised weight: one vg.add per distinct value (vg.add takes one weight per call)
        q = np.round(w * 1000).astype(np.int64)
        for value in np.unique(q):
            sel = rows[q == value]
            vg.add(sel.tolist(), float(value) / 1000.0, "REPLACE")
    mod = ob.modifiers.new("Armature", "ARMATURE")
    mod.object = rig
    mod.use_vertex_groups = True


# --------------------------------------------------------------------------------------------- keyframes
def channelbag(ob):
    """The F-curves of ``ob``'s action for its slot (layered actions, Blender 4.4+; 5.0 removed
    ``Action.fcurves``). On Blender 4.2/4.3 the action itself holds the F-curves."""
    ad = ob.animation_data
    if ad is None or ad.action is None:
        return None
    if hasattr(anim_utils, "action_get_channelbag_for_slot") and hasattr(ad, "action_slot"):
        return anim_utils.action_get_channelbag_for_slot(ad.action, ad.action_slot)
    return ad.action


def key_pose(ob, pose: np.ndarray, frames, interpolation: str = "BEZIER") -> None:
    """Key the six pose bones at ``frames`` from pose codes [K, 6, 3] (sign-continuous quaternions)."""
    q = convert.continuous_quaternions(convert.pose_code_to_bone_quaternions(pose, rest_rotations(ob)), axis=0)
    for k, frame in enumerate(frames):
        for n, qi in zip(K.POSE_BONES, q[k]):
            pb = ob.pose.bones[n]
            pb.rotation_quaternion = qi.tolist()
            pb.keyframe_insert("rotation_quaternion", frame=frame, group=n)
    _set_interpolation(ob, interpolation, prefix="pose.bones")


def key_expression(ob, expression: np.ndarray, frames, interpolation: str = "BEZIER") -> None:
    """Key the full 64-vector at ``frames`` from [K, 64]."""
    e = np.asarray(expression, dtype=np.float64).reshape(len(frames), K.EXPRESSION_DIM)
    for k, frame in enumerate(frames):
        set_expression(ob.busto, e[k])
        ob.keyframe_insert("busto.expression", frame=frame, group="Expression")
    _set_interpolation(ob, interpolation, prefix="busto.expression")


def key_sliders(ob, sliders: dict[str, list[float]], frames, interpolation: str = "BEZIER") -> None:
    for name, values in sliders.items():
        path = f"busto.exp_{name}"
        for frame, value in zip(frames, values):
            setattr(ob.busto, f"exp_{name}", float(value))
            ob.keyframe_insert(path, frame=frame, group="Expression")
    _set_interpolation(ob, interpolation, prefix="busto.exp_")


def _set_interpolation(ob, interpolation: str, prefix: str) -> None:
    bag = channelbag(ob)
    if bag is None:
        return
    for fc in bag.fcurves:
        if fc.data_path.startswith(prefix):
            for kp in fc.keyframe_points:
                kp.interpolation = interpolation


def key_orbit_camera(cam_ob, rig, pitch_yaw: np.ndarray, frames, radius=K.PORTRAIT_RADIUS,
                     look_at=K.PORTRAIT_LOOK_AT) -> None:
    """Key ``cam_ob`` on an orbit around the rig (official camera_pose: column 0 pitch, column 1 yaw)."""
    cam_ob.rotation_mode = "QUATERNION"
    rig_world = np.array(rig.matrix_world)
    prev = None
    for (pitch, yaw), frame in zip(np.asarray(pitch_yaw, dtype=np.float64), frames):
        M = convert.cv_to_blender_camera(convert.orbit_camera_cv(yaw, pitch, radius, look_at), rig_world)
        cam_ob.matrix_world = Matrix(M.tolist())
        q = np.array(cam_ob.rotation_quaternion)
        if prev is not None and float(np.dot(q, prev)) < 0:
            cam_ob.rotation_quaternion = (-q).tolist()
        prev = np.array(cam_ob.rotation_quaternion)
        cam_ob.keyframe_insert("location", frame=frame)
        cam_ob.keyframe_insert("rotation_quaternion", frame=frame)


# --------------------------------------------------------------------------------------------- cameras
def camera_to_generator(cam_ob, rig, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Blender camera (evaluated) -> (OpenCV cam2world [4,4] in the rig's canonical frame, normalised K [3,3])."""
    cam = cam_ob.data
    if cam.type != "PERSP":
        raise ValueError(f"camera {cam_ob.name!r} is {cam.type.lower()}; the neural renderer needs a perspective "
                         "camera")
    c2w = convert.blender_camera_to_cv(np.array(cam_ob.matrix_world), np.array(rig.matrix_world))
    Kn = convert.blender_intrinsics(cam.lens, cam.sensor_width, cam.sensor_height, cam.sensor_fit, width, height,
                                    cam.shift_x, cam.shift_y)
    return c2w, Kn


def face_camera_cv(rig) -> np.ndarray:
    """The generator's face camera for the rig's current pose: the orbit camera of the canonical face centre carried
    by the head bone's canonical->posed transform. OpenCV cam2world [4, 4] in the rig's canonical frame."""
    pb, bone = rig.pose.bones["head"], rig.data.bones["head"]
    G = np.array(pb.matrix) @ np.linalg.inv(np.array(bone.matrix_local))  # armature space, Blender axes
    rest = convert.cv_to_blender_camera(
        convert.orbit_camera_cv(math.pi / 2, math.pi / 2, K.FACE_RADIUS, K.FACE_CENTRE))
    return convert.blender_camera_to_cv(G @ rest)


def add_portrait_camera(context, rig, name: str = "Busto portrait camera", yaw: float = math.pi / 2,
                        pitch: float = math.pi / 2):
    """A Blender camera equal to the generator's portrait camera around ``rig`` (12° fov on a 36 mm sensor)."""
    cam = bpy.data.cameras.new(name)
    cam.sensor_fit = "AUTO"
    cam.sensor_width = 36.0
    cam.lens = convert.lens_for_fov(K.PORTRAIT_FOV_DEG, cam.sensor_width)
    cam.clip_start, cam.clip_end = 0.05, 100.0
    ob = bpy.data.objects.new(name, cam)
    context.scene.collection.objects.link(ob)
    M = convert.cv_to_blender_camera(convert.orbit_camera_cv(yaw, pitch, K.PORTRAIT_RADIUS, K.PORTRAIT_LOOK_AT),
                                     np.array(rig.matrix_world))
    ob.matrix_world = Matrix(M.tolist())
    return ob


def add_orbit_camera(context, rig, frame_start: int, frame_end: int, elevation: float = 0.0,
                     name: str = "Busto orbit camera"):
    """The "orbit" preset: the generator's portrait camera (12° fov, portrait radius, looking at the portrait
    centre) turning once around the avatar over ``frame_start..frame_end`` (:func:`presets.orbit_keys`).

    The camera is the child of a pivot empty at the portrait centre, parented to the rig; the pivot's rotation
    about the rig's up axis has two LINEAR keys, so on every frame (and sub-frame) the camera keeps its distance
    and looks at the centre. ``elevation``: radians above level. An earlier orbit of the same name is replaced.
    Returns the camera object."""
    frames, yaws = presets.orbit_keys(frame_start, frame_end)
    for old in (name, f"{name} pivot"):
        ob = bpy.data.objects.get(old)
        if ob is not None:
            data = ob.data
            bpy.data.objects.remove(ob, do_unlink=True)
            if data is not None and data.users == 0:
                bpy.data.cameras.remove(data)
    centre = convert.smpl_to_blender_points(np.asarray(K.PORTRAIT_LOOK_AT))  # rig (armature) space
    pivot = bpy.data.objects.new(f"{name} pivot", None)
    pivot.empty_display_type = "SPHERE"
    pivot.empty_display_size = 0.05
    context.scene.collection.objects.link(pivot)
    pivot.parent = rig
    pivot.location = centre.tolist()
    pivot.rotation_mode = "XYZ"
    cam = bpy.data.cameras.new(name)
    cam.sensor_fit = "AUTO"
    cam.sensor_width = 36.0
    cam.lens = convert.lens_for_fov(K.PORTRAIT_FOV_DEG, cam.sensor_width)
    cam.clip_start, cam.clip_end = 0.05, 100.0
    ob = bpy.data.objects.new(name, cam)
    context.scene.collection.objects.link(ob)
    ob.parent = pivot
    M = convert.cv_to_blender_camera(convert.orbit_camera_cv(presets.FRONT_YAW, math.pi / 2 - elevation,
                                                             K.PORTRAIT_RADIUS, K.PORTRAIT_LOOK_AT))
    M[:3, 3] -= centre  # in the pivot's frame
    ob.matrix_basis = Matrix(M.tolist())
    # yaw grows counter-clockwise seen from above in SMPL axes (+Y up) = clockwise about Blender's +Z
    for frame, yaw in zip(frames, yaws):
        pivot.rotation_euler = (0.0, 0.0, -(float(yaw) - presets.FRONT_YAW))
        pivot.keyframe_insert("rotation_euler", index=2, frame=frame)
    _set_interpolation(pivot, "LINEAR", prefix="rotation_euler")
    return ob


def add_face_camera(context, rig, name: str = "Busto face camera"):
    """A camera that follows the head: the generator's face camera (orbit of the canonical face centre), parented
    to the head bone so it moves with the head's rotation."""
    cam = bpy.data.cameras.new(name)
    cam.sensor_fit = "AUTO"
    cam.sensor_width = 36.0
    cam.lens = convert.lens_for_fov(K.FACE_FOV_DEG, cam.sensor_width)
    cam.clip_start, cam.clip_end = 0.05, 100.0
    ob = bpy.data.objects.new(name, cam)
    context.scene.collection.objects.link(ob)
    # armature-space (rest) camera matrix
    M_arm = convert.cv_to_blender_camera(
        convert.orbit_camera_cv(math.pi / 2, math.pi / 2, K.FACE_RADIUS, K.FACE_CENTRE))
    ob.parent = rig
    ob.parent_type = "BONE"
    ob.parent_bone = "head"
    # a bone parent puts the child at the bone's tail in bone space: undo it with the parent inverse
    bone = rig.data.bones["head"]
    tail_m = bone.matrix_local.copy()
    tail_m.translation = bone.tail_local
    ob.matrix_parent_inverse = tail_m.inverted()
    ob.matrix_basis = Matrix(M_arm.tolist())
    return ob


def setup_render(scene) -> None:
    """Engine = Busto Neural; the view transform that shows the GAN's pixels unchanged."""
    scene.render.engine = K.ENGINE_ID
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
