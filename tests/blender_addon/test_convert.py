"""blender_addon.convert, presets, protocol and constants: pure numpy, no bpy (checked against portrait_core)."""

from __future__ import annotations

import io
import math
import sys

import numpy as np
import pytest
import torch

from blender_addon import constants as K
from blender_addon import convert as cv
from blender_addon import presets, protocol

RNG = np.random.default_rng(0)


def _random_rotations(n):
    return cv.axis_angle_to_matrix(RNG.normal(size=(n, 3)) * 1.2)


def test_convert_imports_neither_bpy_nor_torch():
    import subprocess

    code = ("import sys; import blender_addon.convert, blender_addon.protocol, blender_addon.presets, "
            "blender_addon.constants; bad = [m for m in ('bpy', 'torch', 'mathutils') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_points_and_rotations_change_of_basis():
    p = np.array([[1.0, 2.0, 3.0]])
    assert np.allclose(cv.smpl_to_blender_points(p), [[1.0, -3.0, 2.0]])
    assert np.allclose(cv.blender_to_smpl_points(cv.smpl_to_blender_points(p)), p)
    R = _random_rotations(4)
    q = RNG.normal(size=(4, 3))
    # rotating then converting == converting then rotating
    assert np.allclose(cv.smpl_to_blender_points(np.einsum("nij,nj->ni", R, q)),
                       np.einsum("nij,nj->ni", cv.smpl_to_blender_rotation(R), cv.smpl_to_blender_points(q)))
    assert np.allclose(cv.blender_to_smpl_rotation(cv.smpl_to_blender_rotation(R)), R)


def test_rotation_helpers_match_portrait_core():
    from portrait_core.geometry import rotations as rot

    aa = RNG.normal(size=(64, 3)) * 1.3
    n = np.linalg.norm(aa, axis=-1, keepdims=True)
    aa = np.where(n > 3.0, aa / n * 3.0, aa)  # the axis-angle of a matrix has angle <= pi
    aa[0] = 0.0
    aa[1] = [1e-9, 0, 0]
    R = cv.axis_angle_to_matrix(aa)
    assert np.allclose(R, rot.axis_angle_to_matrix(torch.tensor(aa)).numpy(), atol=1e-10)
    assert np.allclose(cv.matrix_to_axis_angle(R), aa, atol=1e-7)
    q = cv.matrix_to_quaternion(R)
    assert np.allclose(np.abs((q * rot.matrix_to_quaternion(torch.tensor(R)).numpy()).sum(-1)), 1.0, atol=1e-9)
    assert np.allclose(cv.quaternion_to_matrix(q), R, atol=1e-10)
    e = RNG.uniform(-1.2, 1.2, size=(32, 3))
    assert np.allclose(cv.euler_zyx_to_matrix(e), rot.euler_zyx_to_matrix(torch.tensor(e)).numpy(), atol=1e-10)
    assert np.allclose(cv.matrix_to_euler_zyx(cv.euler_zyx_to_matrix(e)), e, atol=1e-9)
    # near-pi rotations keep their axis
    aa_pi = np.array([[0.0, 0.0, math.pi - 1e-4]])
    assert np.allclose(cv.matrix_to_axis_angle(cv.axis_angle_to_matrix(aa_pi)), aa_pi, atol=1e-6)


def test_pose_code_bone_roundtrip_any_rest_orientation():
    rest = _random_rotations(6)
    pose = RNG.normal(size=(10, 6, 3)) * 0.5
    q = cv.pose_code_to_bone_quaternions(pose, rest)
    assert q.shape == (10, 6, 4)
    assert np.abs(cv.bone_quaternions_to_pose_code(q, rest) - pose).max() < 1e-9
    basis = np.tile(np.eye(4), (10, 6, 1, 1))
    basis[..., :3, :3] = cv.quaternion_to_matrix(q)
    assert np.abs(cv.bone_matrices_to_pose_code(basis, rest) - pose).max() < 1e-9
    # the bone rotation realises C R Cᵀ about the joint in armature axes
    R_arm = rest @ cv.quaternion_to_matrix(q) @ np.swapaxes(rest, -1, -2)
    assert np.allclose(R_arm, cv.smpl_to_blender_rotation(cv.axis_angle_to_matrix(pose)), atol=1e-10)
    # identity rest: the quaternion is the SMPL rotation with (w, x, y, z) -> (w, x, -z, y)
    q_id = cv.pose_code_to_bone_quaternions(pose, np.tile(np.eye(3), (6, 1, 1)))
    q_s = cv.matrix_to_quaternion(cv.axis_angle_to_matrix(pose))
    assert np.allclose(q_id, q_s[..., [0, 1, 3, 2]] * np.array([1, 1, -1, 1]), atol=1e-10)


def test_continuous_quaternions():
    q = cv.matrix_to_quaternion(cv.axis_angle_to_matrix(np.array([[0, 0, a] for a in np.linspace(0, 6, 20)])))
    c = cv.continuous_quaternions(q)
    assert ((c[1:] * c[:-1]).sum(-1) >= 0).all()
    assert np.allclose(cv.quaternion_to_matrix(c), cv.quaternion_to_matrix(q))


def test_portrait_camera_roundtrip_through_blender():
    from portrait_core.geometry.camera import Camera

    for yaw, pitch in [(math.pi / 2, math.pi / 2), (0.3, 1.2), (math.pi * 1.5, 2.0)]:
        ref = Camera.portrait(yaw, pitch)
        c2w = cv.orbit_camera_cv(yaw, pitch, K.PORTRAIT_RADIUS, K.PORTRAIT_LOOK_AT)
        assert np.allclose(c2w, ref.cam2world[0].double().numpy(), atol=1e-6)
        rig = np.eye(4)
        rig[:3, 3] = [0.5, -2.0, 1.0]
        rig[:3, :3] = cv.axis_angle_to_matrix(np.array([0.0, 0.0, 0.7]))
        M = cv.cv_to_blender_camera(c2w, rig)
        assert np.allclose(cv.blender_camera_to_cv(M, rig), c2w, atol=1e-10)
        # a Blender camera looks down its local -Z
        assert np.allclose(M[:3, :3] @ [0, 0, -1], rig[:3, :3] @ cv.smpl_to_blender_points(c2w[:3, 2]), atol=1e-10)
    # the frontal camera sits in front of the subject: Blender -Y
    M = cv.cv_to_blender_camera(cv.orbit_camera_cv(math.pi / 2, math.pi / 2, 2.0, (0, 0, 0)))
    assert np.allclose(M[:3, 3], [0, -2.0, 0])
    lens = cv.lens_for_fov(K.PORTRAIT_FOV_DEG)
    Kn = cv.blender_intrinsics(lens, 36.0, 24.0, "AUTO", 128, 128)
    assert np.allclose(Kn, Camera.portrait().intrinsics[0].double().numpy(), atol=1e-6)
    assert abs(lens - 171.28) < 0.05


def test_scaled_rig_is_camera_moved_closer():
    c2w = cv.orbit_camera_cv(1.0, 1.4, 2.0, (0, 0.1, 0))
    M = cv.cv_to_blender_camera(c2w)
    rig = np.diag([2.0, 2.0, 2.0, 1.0])
    out = cv.blender_camera_to_cv(M, rig)
    assert np.allclose(out[:3, :3], c2w[:3, :3])
    assert np.allclose(out[:3, 3], c2w[:3, 3] / 2.0)


def _project(K, p, w, h):
    u = K @ (p / p[2])
    return u[0] * w, u[1] * h


@pytest.mark.parametrize("fit", ["AUTO", "HORIZONTAL", "VERTICAL"])
def test_intrinsics_sensor_fit_and_square_plan(fit):
    w, h = 160, 96
    Kn = cv.blender_intrinsics(50.0, 36.0, 24.0, fit, w, h, shift_x=0.1, shift_y=-0.05)
    fitted = w if fit in ("AUTO", "HORIZONTAL") else h
    sensor = 24.0 if fit == "VERTICAL" else 36.0
    assert np.isclose(Kn[0, 0] * w, 50.0 / sensor * fitted)
    assert np.isclose(Kn[0, 0] * w, Kn[1, 1] * h)  # square pixels
    Ks, size, (r0, c0) = cv.square_render_plan(Kn, w, h)
    assert size == 160 and (r0, c0) == (32, 0)
    for p in RNG.normal(size=(5, 3)) * 0.2 + [0, 0, 3]:
        x, y = _project(Kn, p, w, h)
        xs, ys = _project(Ks, p, size, size)
        assert np.allclose([xs - c0, ys - r0], [x, y])


def test_resize_and_colour():
    img = RNG.uniform(size=(8, 8, 4)).astype(np.float32)
    assert np.allclose(cv.resize_bilinear(img, 8, 8), img)
    assert np.allclose(cv.resize_bilinear(img, 4, 4), img.reshape(4, 2, 4, 2, 4).mean((1, 3)), atol=1e-6)
    const = np.full((5, 7, 3), 0.25, np.float32)
    assert np.allclose(cv.resize_bilinear(const, 11, 3), 0.25)
    up = cv.resize_bilinear(img, 16, 16)
    assert up.shape == (16, 16, 4) and up.min() >= img.min() - 1e-6 and up.max() <= img.max() + 1e-6
    x = np.linspace(0, 1, 101, dtype=np.float32)
    assert np.allclose(cv.linear_to_srgb(cv.srgb_to_linear(x)), x, atol=1e-6)
    assert np.isclose(cv.srgb_to_linear(np.float32(0.5)), 0.21404, atol=1e-4)
    assert cv.srgb_to_linear(np.float32(1.0)) == 1.0


def test_official_keyframes_match_portrait_core(keyframes_dir):
    from portrait_core.geometry import keyframes as kf

    for name in ("pose.npy", "headpose.npy", "shoulderpose.npy", "real_video_sample1/joint_eulers.npy"):
        e = np.load(keyframes_dir / name)
        assert np.allclose(cv.official_keyframes_to_pose_code(e), kf.euler_zyx_to_pose(e), atol=1e-7)
    rest = _random_rotations(6)
    e = np.load(keyframes_dir / "pose.npy")
    q = cv.official_keyframes_to_bone_quaternions(e, rest)
    assert q.shape == (4, 6, 4) and ((q[1:] * q[:-1]).sum(-1) >= 0).all()
    assert np.abs(cv.bone_quaternions_to_pose_code(q, rest) - kf.euler_zyx_to_pose(e)).max() < 1e-6
    with pytest.raises(ValueError, match=r"\[N, 6, 3\]"):
        cv.official_keyframes_to_pose_code(np.zeros((3, 5, 3)))
    assert cv.official_keyframes_to_pose_code(np.zeros((6, 3))).shape == (6, 3)


def test_interpolate_keyframes():
    v = np.array([[0.0], [1.0], [3.0]])
    out = cv.interpolate_keyframes(v, 4)
    assert out.shape == (9, 1) and np.allclose(out[[0, 4, 8], 0], [0, 1, 3]) and np.isclose(out[2, 0], 0.5)
    loop = cv.interpolate_keyframes(v, 2, loop=True)
    assert loop.shape == (6, 1) and np.allclose(loop[:, 0], [0, 0.5, 1, 2, 3, 1.5])


def test_constants_match_portrait_core():
    from portrait_core import conventions as C
    from portrait_core.face import EXPRESSION_NAMES

    assert K.SMPL_JOINT_NAMES == C.SMPL_JOINT_NAMES and K.SMPL_PARENTS == C.SMPL_PARENTS
    assert K.POSE_JOINTS == C.POSE_JOINTS and K.POSE_BONES == C.POSE_JOINT_NAMES
    assert K.RIG_JOINTS == C.UPPER_BODY_CHAIN
    assert K.EXPRESSION_SLIDERS == dict(EXPRESSION_NAMES)
    assert K.EXPRESSION_DIM == C.EXPRESSION_DIM and K.BODY_SHAPE_DIM == C.BODY_SHAPE_DIM
    assert np.allclose(K.FACE_CENTRE, C.FACE_CENTRE) and np.allclose(K.PORTRAIT_LOOK_AT, C.PORTRAIT_LOOK_AT)
    assert np.isclose(K.PORTRAIT_RADIUS, C.PORTRAIT_RADIUS) and np.isclose(K.FACE_RADIUS, C.FACE_RADIUS)
    assert K.PORTRAIT_FOV_DEG == C.PORTRAIT_FOV_DEG and K.FACE_FOV_DEG == C.FACE_FOV_DEG


def test_presets_are_well_formed():
    for name in presets.PRESET_NAMES:
        p = presets.build_preset(name, 1.0)
        assert p.frames == sorted(p.frames)
        if p.pose is not None:
            assert p.pose.shape == (len(p.frames), 6, 3) and np.allclose(p.pose[0], 0) and np.allclose(p.pose[-1], 0)
        for slider, values in p.sliders.items():
            assert slider in K.EXPRESSION_SLIDERS and len(values) == len(p.frames)
    assert np.allclose(presets.build_preset("NOD", 2.0).pose, 2.0 * presets.build_preset("NOD", 1.0).pose)
    with pytest.raises(ValueError, match="unknown preset"):
        presets.build_preset("DANCE")


def test_protocol_roundtrip_with_the_worker_framing():
    from portrait_core import serve

    arrays = {"a": RNG.normal(size=(2, 3)).astype(np.float32), "b": np.arange(5, dtype=np.uint16),
              "c": np.zeros((0, 3), np.int64)}
    for write, read in ((protocol.write_message, serve.read_message), (serve.write_message, protocol.read_message)):
        buf = io.BytesIO()
        write(buf, {"op": "x", "n": 3}, arrays)
        write(buf, {"ok": True})
        buf.seek(0)
        h, out = read(buf)
        assert h == {"op": "x", "n": 3}
        assert set(out) == set(arrays) and all(np.array_equal(out[k], arrays[k]) and out[k].dtype == arrays[k].dtype
                                               for k in arrays)
        assert read(buf)[0] == {"ok": True}
        with pytest.raises(EOFError):
            read(buf)
    with pytest.raises(protocol.ProtocolError, match="printed"):
        protocol.read_message(io.BytesIO(b"hello world\n"))
    with pytest.raises(TypeError):
        protocol.write_message(io.BytesIO(), {}, {"x": np.array(["s"])})
