"""Tests for portrait_core.geometry.keyframes (official keyframes, Busto JSON, interpolation, 3DPortraitGAN/360PHQ)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from portrait_core import conventions as C
from portrait_core.geometry import keyframes as K
from portrait_core.geometry import rotations as rot
from portrait_core.geometry import rotations_np as rn
from portrait_core.geometry.camera import Camera

M = np.diag([-1.0, 1.0, 1.0])  # the mirror x -> -x


# (folder relative to the keyframes dir, pose file, expression file used alongside)
OFFICIAL_POSE_CASES = [
    ("real_video_sample1", "joint_eulers.npy", "expression.npy"),
    ("real_video_sample2", "joint_eulers.npy", "expression.npy"),
    (".", "pose.npy", None),
    (".", "headpose.npy", None),
    (".", "shoulderpose.npy", None),
]


def _rel_rotation_angle(R1, R2):
    cos = (np.trace(np.swapaxes(R1, -1, -2) @ R2, axis1=-2, axis2=-1) - 1) / 2
    return np.arccos(np.clip(cos, -1, 1))


# ------------------------------------------------------------------ official keyframes
@pytest.mark.parametrize("sub,pose_file,expr_file", OFFICIAL_POSE_CASES)
def test_official_pose_import_and_exact_reexport(keyframes_dir, tmp_path, sub, pose_file, expr_file):
    folder = keyframes_dir / sub
    euler = np.load(folder / pose_file)
    track = K.load_official_keyframes(folder, pose=pose_file, expression=expr_file)
    assert track.pose.shape == euler.shape and track.pose.dtype == np.float64
    # the pose code is the same rotation as the Euler triple (checked against the torch implementation)
    R_file = rot.euler_zyx_to_matrix(torch.as_tensor(euler, dtype=torch.float64)).numpy()
    R_code = rot.axis_angle_to_matrix(torch.as_tensor(track.pose)).numpy()
    assert np.abs(R_file - R_code).max() < 1e-12
    # re-export reproduces the file's Euler values (principal branch)
    assert np.abs(track.euler_zyx() - euler).max() < 1e-6
    paths = K.save_official_keyframes(track, tmp_path, pose_name=pose_file, dtype=euler.dtype)
    again = np.load(paths["pose"])
    assert again.dtype == euler.dtype and again.shape == euler.shape
    assert np.abs(again - euler).max() <= (1e-6 if euler.dtype == np.float32 else 1e-12)
    if expr_file is not None:
        np.testing.assert_array_equal(np.load(paths["expression"]), np.load(folder / expr_file))
    if (folder / "camera_pose.npy").is_file():
        np.testing.assert_array_equal(np.load(paths["camera"]), np.load(folder / "camera_pose.npy"))
    # the re-exported folder imports back to the same track
    back = K.load_official_keyframes(tmp_path, pose=pose_file)
    assert np.abs(back.pose - track.pose).max() < 1e-6


def test_official_real_video_folder_defaults(keyframes_dir):
    for sub in ("real_video_sample1", "real_video_sample2"):
        track = K.load_official_keyframes(keyframes_dir / sub)
        assert len(track) == 125 and track.camera is not None
        cam = np.load(keyframes_dir / sub / "camera_pose.npy")
        np.testing.assert_array_equal(track.camera, cam.astype(np.float64))
        np.testing.assert_array_equal(track.expression, np.load(keyframes_dir / sub / "expression.npy"))
        # column 0 is the pitch: the orbit camera built from it stays near-frontal and upright
        cams = Camera.orbit(torch.as_tensor(track.camera[:, 1]), torch.as_tensor(track.camera[:, 0]), 2.2,
                            [0.0, 0.0, 0.0], 12.0)
        assert (cams.origin[:, 2] > 2.0).all()
        assert cams.origin[:, 1].abs().max() < 0.05


def test_official_top_folder_needs_a_choice(keyframes_dir):
    with pytest.raises(K.KeyframeError, match=r"counts differ.*expression.npy.*5.*pose.npy.*4"):
        K.load_official_keyframes(keyframes_dir)
    expr_only = K.load_official_keyframes(keyframes_dir, pose=None)
    assert len(expr_only) == 5 and np.all(expr_only.pose == 0) and expr_only.camera is None
    np.testing.assert_array_equal(expr_only.expression[1], np.zeros(64))  # row 1 is neutral


def _write(tmp_path: Path, name: str, arr) -> Path:
    p = tmp_path / name
    np.save(p, arr)
    return p


def test_official_bad_inputs_name_the_file(tmp_path):
    _write(tmp_path, "pose.npy", np.zeros((3, 5, 3)))
    with pytest.raises(K.KeyframeError, match=r"pose.npy.*shape \(N, 6, 3\)"):
        K.load_official_keyframes(tmp_path)
    bad = np.zeros((3, 6, 3))
    bad[1, 2, 0] = np.nan
    _write(tmp_path, "pose.npy", bad)
    with pytest.raises(K.KeyframeError, match=r"pose.npy.*NaN.*\(1, 2, 0\)"):
        K.load_official_keyframes(tmp_path)
    _write(tmp_path, "pose.npy", np.zeros((3, 6, 3)))
    _write(tmp_path, "expression.npy", np.zeros((3, 63)))
    with pytest.raises(K.KeyframeError, match=r"expression.npy.*expression must have shape \(N, 64\)"):
        K.load_official_keyframes(tmp_path)
    _write(tmp_path, "expression.npy", np.zeros((3, 64)))
    _write(tmp_path, "camera_pose.npy", np.array([[-0.2, 1.57]] * 3))  # yaw, pitch swapped and yaw negative
    with pytest.raises(K.KeyframeError, match=r"camera_pose.npy.*pitch"):
        K.load_official_keyframes(tmp_path)
    (tmp_path / "camera_pose.npy").write_bytes(b"not a numpy file")
    with pytest.raises(K.KeyframeError, match=r"camera_pose.npy.*cannot read"):
        K.load_official_keyframes(tmp_path)
    with pytest.raises(K.KeyframeError, match="not found"):
        K.load_official_keyframes(tmp_path, pose="missing.npy")
    with pytest.raises(K.KeyframeError, match="no keyframe files"):
        K.load_official_keyframes(tmp_path / "..", expression=None, pose=None, camera=None)
    with pytest.raises(K.KeyframeError, match="not a folder"):
        K.load_official_keyframes(tmp_path / "nope")


def test_euler_branch_choice_for_large_angles():
    # angles off the principal branch (|e1| > pi/2) import to the same rotation and export on the principal branch
    e = np.array([[0.3, 2.0, -0.4], [3.0, -1.7, 2.9]])
    pose = K.euler_zyx_to_pose(e)
    e2 = K.pose_to_euler_zyx(pose)
    assert np.all(np.abs(e2[:, 1]) <= math.pi / 2)
    assert _rel_rotation_angle(rn.euler_zyx_to_matrix(e), rn.euler_zyx_to_matrix(e2)).max() < 1e-12


def test_numpy_rotations_match_torch():
    g = np.random.default_rng(0)
    aa = g.normal(size=(200, 3))
    aa = aa / np.linalg.norm(aa, axis=-1, keepdims=True) * g.uniform(0, math.pi, size=(200, 1))
    aa[:3] = [[0, 0, 0], [1e-9, 0, 0], [0, math.pi, 0]]
    R_np = rn.axis_angle_to_matrix(aa)
    R_t = rot.axis_angle_to_matrix(torch.as_tensor(aa)).numpy()
    assert np.abs(R_np - R_t).max() < 1e-12
    assert np.abs(rn.matrix_to_axis_angle(R_np)[:-1] - aa[:-1]).max() < 1e-9
    e = rn.matrix_to_euler_zyx(R_np)
    assert np.abs(e - rot.matrix_to_euler_zyx(torch.as_tensor(R_np)).numpy()).max() < 1e-9
    q = rn.matrix_to_quaternion(R_np)
    assert np.abs(q - rot.matrix_to_quaternion(torch.as_tensor(R_np)).numpy()).max() < 1e-9
    assert np.abs(rn.quaternion_to_matrix(q) - R_np).max() < 1e-12


# ------------------------------------------------------------------ Busto JSON
def _random_track(n=5, seed=0, camera=True, frames=True):
    g = np.random.default_rng(seed)
    return K.KeyframeTrack(
        pose=g.normal(scale=0.3, size=(n, 6, 3)),
        expression=g.normal(size=(n, 64)),
        camera=np.stack([np.full(n, math.pi / 2) + g.normal(scale=0.1, size=n), g.uniform(0, 2 * math.pi, n)], -1)
        if camera else None,
        frames=np.cumsum(g.integers(1, 20, n)) if frames else None,
        fps=24.0,
    )


@pytest.mark.parametrize("camera,frames", [(True, True), (False, False), (True, False)])
def test_busto_json_round_trip_is_exact(tmp_path, camera, frames):
    track = _random_track(camera=camera, frames=frames)
    p = K.save_keyframes_json(track, tmp_path / "anim.json")
    back = K.load_keyframes_json(p)
    np.testing.assert_array_equal(back.pose, track.pose)
    np.testing.assert_array_equal(back.expression, track.expression)
    assert (back.camera is None) == (not camera)
    if camera:
        np.testing.assert_array_equal(back.camera, track.camera)
    if frames:
        np.testing.assert_array_equal(back.frames, track.frames)
    else:
        assert back.frames is None
    assert back.fps == 24.0
    doc = json.loads(p.read_text())
    assert doc["format"] == "busto-keyframes" and doc["joints"][3] == "head"
    assert K.load_keyframes(p).pose.shape == (5, 6, 3)


def test_busto_json_defaults_and_errors(tmp_path):
    p = tmp_path / "k.json"

    def write(doc):
        p.write_text(json.dumps(doc))
        return p

    base = {"format": "busto-keyframes", "format_version": 1}
    t = K.load_keyframes_json(write({**base, "keyframes": [{"frame": 0}, {"frame": 10, "expression": [0.5] * 64}]}))
    assert np.all(t.pose == 0) and t.expression[1, 0] == 0.5 and t.fps == 30.0 and t.camera is None
    with pytest.raises(K.KeyframeError, match=r"k.json.*'format'"):
        K.load_keyframes_json(write({"keyframes": []}))
    with pytest.raises(K.KeyframeError, match="format_version"):
        K.load_keyframes_json(write({**base, "format_version": 99, "keyframes": [{}]}))
    with pytest.raises(K.KeyframeError, match="non-empty"):
        K.load_keyframes_json(write({**base, "keyframes": []}))
    with pytest.raises(K.KeyframeError, match=r"k.json.*keyframes\[1\].pose must have shape"):
        K.load_keyframes_json(write({**base, "keyframes": [{}, {"pose": [[0, 0, 0]] * 5}]}))
    with pytest.raises(K.KeyframeError, match=r"keyframes\[0\].expression contains NaN"):
        K.load_keyframes_json(write({**base, "keyframes": [{"expression": [float("nan")] + [0.0] * 63}]}))
    with pytest.raises(K.KeyframeError, match="camera.*all or none"):
        K.load_keyframes_json(write({**base, "keyframes": [{"camera": {"pitch": 1.5, "yaw": 1.5}}, {}]}))
    with pytest.raises(K.KeyframeError, match="strictly increasing"):
        K.load_keyframes_json(write({**base, "keyframes": [{"frame": 5}, {"frame": 5}]}))
    with pytest.raises(K.KeyframeError, match="unknown fields"):
        K.load_keyframes_json(write({**base, "keyframes": [{"rotation": 1}]}))
    p.write_text("{not json")
    with pytest.raises(K.KeyframeError, match="not valid JSON"):
        K.load_keyframes_json(p)
    with pytest.raises(K.KeyframeError, match="not found"):
        K.load_keyframes_json(tmp_path / "missing.json")
    with pytest.raises(K.KeyframeError, match="expected a Busto"):
        K.load_keyframes(tmp_path / "x.txt")


def test_track_validation():
    with pytest.raises(K.KeyframeError, match=r"expression must have shape \(4, 64\)"):
        K.KeyframeTrack(np.zeros((4, 6, 3)), np.zeros((3, 64)))
    with pytest.raises(K.KeyframeError, match="camera"):
        K.KeyframeTrack(np.zeros((4, 6, 3)), np.zeros((4, 64)), camera=np.zeros((4, 3)))
    with pytest.raises(K.KeyframeError, match="fps"):
        K.KeyframeTrack(np.zeros((1, 6, 3)), np.zeros((1, 64)), fps=0)
    tt = K.KeyframeTrack.neutral(3).to_torch(dtype=torch.float32)
    assert tt["pose"].shape == (3, 6, 3) and tt["pose"].dtype == torch.float32 and tt["camera"] is None


# ------------------------------------------------------------------ interpolation
def test_interpolation_euler_mode_matches_the_official_formula(keyframes_dir):
    track = K.load_official_keyframes(keyframes_dir, expression=None)
    n_interval = 7
    out = K.interpolate_keyframes(track, n_interval, loop=True, rotation="euler")
    assert len(out) == 4 * n_interval
    np.testing.assert_array_equal(out.frames, np.arange(4 * n_interval))
    e = np.load(keyframes_dir / "pose.npy").astype(np.float64)
    e = np.concatenate([e, e[:1]])
    expect = []
    for i in range(4):
        for j in range(n_interval):
            k = j / n_interval
            expect.append((1 - k) * e[i] + k * e[i + 1])
    assert np.abs(out.euler_zyx() - np.stack(expect)).max() < 1e-6


def test_interpolation_slerp_endpoints_speed_and_loop():
    track = _random_track(n=3, frames=False)
    n_interval = 8
    out = K.interpolate_keyframes(track, n_interval, loop=True)
    assert len(out) == 3 * n_interval
    R = rn.axis_angle_to_matrix(out.pose)
    Rk = rn.axis_angle_to_matrix(track.pose)
    for i in range(3):
        assert _rel_rotation_angle(R[i * n_interval], Rk[i]).max() < 1e-9
        np.testing.assert_allclose(out.expression[i * n_interval], track.expression[i])
        np.testing.assert_allclose(out.camera[i * n_interval], track.camera[i])
    # constant angular speed within each segment, and the loop segment heads back to keyframe 0
    for i in range(3):
        seg = np.concatenate([R[i * n_interval:(i + 1) * n_interval], Rk[(i + 1) % 3][None]])
        steps = _rel_rotation_angle(seg[:-1], seg[1:])  # [n_interval, 6]
        total = _rel_rotation_angle(Rk[i], Rk[(i + 1) % 3])
        np.testing.assert_allclose(steps, np.broadcast_to(total / n_interval, steps.shape), atol=1e-9)
    # linear expression halfway through the loop segment
    np.testing.assert_allclose(out.expression[2 * n_interval + 4],
                               0.5 * (track.expression[2] + track.expression[0]))
    no_loop = K.interpolate_keyframes(track, n_interval, loop=False, rotation="axis_angle")
    assert len(no_loop) == 2 * n_interval + 1
    np.testing.assert_allclose(no_loop.pose[-1], track.pose[-1])
    np.testing.assert_allclose(no_loop.pose[4], 0.5 * (track.pose[0] + track.pose[1]))
    with pytest.raises(ValueError, match="n_interval"):
        K.interpolate_keyframes(track, 0)
    with pytest.raises(ValueError, match="rotation"):
        K.interpolate_keyframes(track, 2, rotation="nlerp")


def test_interpolation_modes_agree_for_small_official_angles(keyframes_dir):
    track = K.load_official_keyframes(keyframes_dir, expression=None)
    a = rn.axis_angle_to_matrix(K.interpolate_keyframes(track, 10, rotation="slerp").pose)
    b = rn.axis_angle_to_matrix(K.interpolate_keyframes(track, 10, rotation="euler").pose)
    assert _rel_rotation_angle(a, b).max() < 0.02


def test_sample_track():
    track = _random_track(n=4, frames=True)
    at_keys = K.sample_track(track, track.frames)
    np.testing.assert_allclose(rn.axis_angle_to_matrix(at_keys.pose), rn.axis_angle_to_matrix(track.pose), atol=1e-12)
    np.testing.assert_array_equal(at_keys.frames, track.frames)
    mid = 0.5 * (track.frames[1] + track.frames[2])
    s = K.sample_track(track, [mid], rotation="axis_angle")
    np.testing.assert_allclose(s.pose[0], 0.5 * (track.pose[1] + track.pose[2]))
    clamp = K.sample_track(track, [track.frames[0] - 10, track.frames[-1] + 10])
    np.testing.assert_allclose(clamp.expression, track.expression[[0, -1]])
    dense = K.sample_track(track, np.arange(track.frames[0], track.frames[-1] + 1))
    assert len(dense) == track.frames[-1] - track.frames[0] + 1
    with pytest.raises(K.KeyframeError, match="frame numbers"):
        K.sample_track(_random_track(frames=False), [0])


# ------------------------------------------------------------------ 3DPortraitGAN / 360PHQ
def test_3dportraitgan_pose_round_trip_and_canonical_adjust():
    g = np.random.default_rng(3)
    p6 = g.normal(scale=0.3, size=(20, 6))
    pose = K.pose_from_3dportraitgan(p6)
    assert pose.shape == (20, 6, 3)
    np.testing.assert_allclose(K.pose_to_3dportraitgan(pose), p6, atol=1e-12)
    # the head's local rotation R(pose_15) @ R_adjust equals the given rest-relative rotation
    adj = rn.euler_zyx_to_matrix(C.CANONICAL_ADJUST_EULER_ZYX[C.HEAD])
    np.testing.assert_allclose(rn.axis_angle_to_matrix(pose[:, 3]) @ adj, rn.axis_angle_to_matrix(p6[:, 3:]),
                               atol=1e-12)
    np.testing.assert_array_equal(pose[:, 0], p6[:, :3])
    assert np.all(pose[:, [1, 2, 4, 5]] == 0)
    # the SMPL rest head (zero label) is the canonical head un-nodded
    rest_head = K.pose_from_3dportraitgan(np.zeros(6))[3]
    np.testing.assert_allclose(rest_head, [-C.CANONICAL_ADJUST_EULER_ZYX[C.HEAD][2], 0, 0], atol=1e-12)
    # Busto canonical -> 3DPortraitGAN: the head carries the adjust nod
    np.testing.assert_allclose(K.pose_to_3dportraitgan(np.zeros((6, 3)))[3:], [0.15536945, 0, 0], atol=1e-12)
    # shoulders='rest' gives local rotations equal to the SMPL rest (identity)
    rest = K.pose_from_3dportraitgan(np.zeros(6), shoulders="rest")
    adjs = K.canonical_adjust_matrices()
    for k in range(6):
        np.testing.assert_allclose(rn.axis_angle_to_matrix(rest[k]) @ adjs[k], np.eye(3), atol=1e-12)
    with pytest.raises(K.KeyframeError, match=r"\[\.\.\., 6\]"):
        K.pose_from_3dportraitgan(np.zeros(5))
    with pytest.raises(K.KeyframeError, match="NaN"):
        K.pose_from_3dportraitgan(np.full(6, np.nan))


def test_label31_split_join_and_flip_rule():
    cams = Camera.orbit(torch.tensor([0.3, 1.5, 4.0]), torch.tensor([1.4, 1.6, 1.2]), 2.7, [0.0, 0.0649, 0.0], 8.8)
    lab25 = cams.to_label25().double().numpy()
    g = np.random.default_rng(5)
    p6 = g.normal(scale=0.3, size=(3, 6))
    lab = K.join_label31(lab25, p6)
    assert lab.shape == (3, 31)
    c, p = K.split_label31(lab)
    np.testing.assert_array_equal(c, lab25)
    np.testing.assert_array_equal(p, p6)
    flipped = K.flip_label31(lab)
    # the camera part equals Camera.mirror
    np.testing.assert_allclose(flipped[:, :25], cams.mirror().to_label25().double().numpy(), atol=1e-7)
    # the pose part is the mirrored rotation M R M for neck and head
    fp = flipped[:, 25:]
    for s in (slice(0, 3), slice(3, 6)):
        np.testing.assert_allclose(rn.axis_angle_to_matrix(fp[:, s]), M @ rn.axis_angle_to_matrix(p6[:, s]) @ M,
                                   atol=1e-12)
    np.testing.assert_array_equal(K.flip_label31(flipped), lab)
    with pytest.raises(K.KeyframeError, match="31"):
        K.split_label31(np.zeros(30))


def test_mirror_pose_mirrors_the_local_rotations():
    g = np.random.default_rng(7)
    pose = g.normal(scale=0.4, size=(10, 6, 3))
    mp = K.mirror_pose(pose)
    adj = K.canonical_adjust_matrices()
    local = rn.axis_angle_to_matrix(pose) @ adj
    local_m = rn.axis_angle_to_matrix(mp) @ adj
    partner = [0, 2, 1, 3, 5, 4]
    for k in range(6):
        np.testing.assert_allclose(local_m[:, partner[k]], M @ local[:, k] @ M, atol=1e-12)
    np.testing.assert_allclose(K.mirror_pose(mp), pose)
    # consistent with the 6-float flip rule on neck and head
    p6 = K.pose_to_3dportraitgan(pose)
    np.testing.assert_allclose(K.pose_to_3dportraitgan(mp), K.flip_pose6(p6), atol=1e-12)


def test_keyframes_module_imports_without_torch():
    """The Blender add-on runs without torch: keyframes and rotations_np must not import it."""
    import subprocess
    import sys

    code = ("import sys, portrait_core.geometry.keyframes, portrait_core.geometry.rotations_np; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3]).returncode == 0
