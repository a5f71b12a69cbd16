"""Blender's own glTF importer (bpy 5.0.1) on an exported avatar: armature, vertex groups, shape keys, and posing
the imported rig moves the mesh as Busto's numpy LBS predicts (world-space vertices of the evaluated mesh)."""

from __future__ import annotations

import numpy as np
import pytest

from portrait_core.conventions import POSE_JOINT_NAMES, SMPL_JOINT_NAMES, UPPER_BODY_CHAIN
from portrait_core.export.gltf import Animation, write_glb

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")

#: SMPL (Y-up) -> Blender (Z-up): p_B = C p_S (docs/CONVENTIONS.md)
C = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, body_mesh, body_rig):
    v = body_mesh.vertices
    jaw = ((v[:, 1] > 0.04) & (v[:, 1] < 0.11) & (v[:, 2] > 0.04)).astype(np.float32)
    morphs = {"jaw_open": np.stack([0 * jaw, -0.01 * jaw, 0.004 * jaw], 1),
              "smile": np.stack([0.003 * np.sign(v[:, 0]) * jaw, 0.002 * jaw, 0 * jaw], 1)}
    pose = np.zeros((4, 6, 3))
    pose[1, 3] = (0.5, 0.0, 0.0)
    pose[2, 3] = (0.2, 0.5, 0.0)
    pose[2, 0] = (0.0, -0.3, 0.1)
    pose[3, 4] = (0.0, 0.2, 0.6)
    pose[3, 5] = (0.3, 0.0, -0.4)
    weights = np.array([[0, 0], [1, 0], [0.5, 1], [0, 0.3]], np.float32)
    anim = Animation(times=[0.0, 0.5, 1.0, 1.5], pose=pose, morph_weights=weights, name="nod")
    path = tmp_path_factory.mktemp("blender") / "avatar.glb"
    write_glb(path, body_mesh, body_rig, morphs, anim)
    return path, morphs, anim


def _import(path):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    assert bpy.ops.import_scene.gltf(filepath=str(path), disable_bone_shape=True) == {"FINISHED"}
    arm = next(o for o in bpy.data.objects if o.type == "ARMATURE")
    mesh = next(o for o in bpy.data.objects if o.type == "MESH")
    return arm, mesh


def _evaluated_smpl(ob) -> np.ndarray:
    """World-space vertices of the evaluated (deformed) mesh, converted back to the SMPL frame."""
    dg = bpy.context.evaluated_depsgraph_get()
    ev = ob.evaluated_get(dg)
    me = ev.to_mesh()
    co = np.empty(len(me.vertices) * 3)
    me.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    co = co.reshape(-1, 3)
    M = np.array(ob.matrix_world)
    world = co @ M[:3, :3].T + M[:3, 3]
    return world @ C  # p_S = C^T p_B


def _set_pose(arm, pose: np.ndarray):
    """Pose code [6,3] -> pose bones, whatever rest orientation the importer gave them:
    basis = R_rest^T · C R C^T · R_rest (R_rest = bone -> armature rotation)."""
    import mathutils
    import torch

    from portrait_core.geometry.rotations import axis_angle_to_matrix

    for k, name in enumerate(POSE_JOINT_NAMES):
        pb = arm.pose.bones[name]
        pb.rotation_mode = "QUATERNION"
        R_rest = np.array(arm.data.bones[name].matrix_local.to_3x3())
        R = axis_angle_to_matrix(torch.tensor(pose[k], dtype=torch.float64)).numpy()
        pb.rotation_quaternion = mathutils.Matrix((R_rest.T @ C @ R @ C.T @ R_rest).tolist()).to_quaternion()
    bpy.context.view_layer.update()


def test_blender_import_has_armature_groups_shape_keys(exported, body_mesh):
    path, morphs, _ = exported
    arm, mesh = _import(path)
    names = [SMPL_JOINT_NAMES[j] for j in UPPER_BODY_CHAIN]
    assert sorted(b.name for b in arm.data.bones) == sorted(names)
    assert arm.data.bones["head"].parent.name == "neck"
    assert {vg.name for vg in mesh.vertex_groups} == set(names)
    assert any(m.type == "ARMATURE" and m.object == arm for m in mesh.modifiers)
    assert [k.name for k in mesh.data.shape_keys.key_blocks] == ["Basis", *morphs]
    assert len(mesh.data.vertices) == body_mesh.num_vertices
    assert len(mesh.data.color_attributes) == 1
    assert arm.animation_data is not None and arm.animation_data.action is not None


def test_posing_the_head_in_blender_matches_numpy_lbs(exported, body_mesh, body_rig, test_pose):
    path, _, _ = exported
    arm, mesh = _import(path)
    arm.animation_data.action = None
    keys = mesh.data.shape_keys
    if keys.animation_data is not None:
        keys.animation_data.action = None
    for kb in keys.key_blocks[1:]:
        kb.value = 0.0
    # rest = canonical: the imported mesh sits where it was exported (Y-up -> Z-up only)
    _set_pose(arm, np.zeros((6, 3)))
    rest_err = np.abs(_evaluated_smpl(mesh) - body_mesh.vertices).max()
    assert rest_err < 1e-5
    head_only = np.zeros((6, 3))
    head_only[3] = (0.5, 0.3, -0.1)
    for name, pose in (("head", head_only), ("all pose joints", test_pose)):
        _set_pose(arm, pose)
        got = _evaluated_smpl(mesh)
        ref = body_rig.pose_mesh(body_mesh.vertices, pose)
        err = np.linalg.norm(got - ref, axis=1).max()
        moved = np.linalg.norm(ref - body_mesh.vertices, axis=1).max()
        print(f"Blender vs numpy LBS ({name}): max vertex error {err:.2e} m, max displacement {moved:.3f} m")
        assert moved > 0.05
        assert err < 1e-4


def test_imported_animation_plays_the_keyframes(exported, body_mesh, body_rig):
    path, morphs, anim = exported
    arm, mesh = _import(path)
    fps = bpy.context.scene.render.fps / bpy.context.scene.render.fps_base
    deltas = np.stack(list(morphs.values()))
    for k, t in enumerate(anim.times):
        frame = float(t) * fps
        assert abs(frame - round(frame)) < 1e-6
        bpy.context.scene.frame_set(int(round(frame)))
        got = _evaluated_smpl(mesh)
        neutral = body_mesh.vertices + np.einsum("k,kvc->vc", anim.morph_weights[k], deltas)
        ref = body_rig.pose_mesh(neutral, anim.pose[k])
        err = np.linalg.norm(got - ref, axis=1).max()
        assert err < 1e-4, f"key {k} (frame {frame}): max error {err:.2e} m"
