"""Rig: skeleton of the body's canonical joints, skin weights, pose -> joint rotations, LBS vs the body model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from portrait_core.conventions import SMPL_JOINT_NAMES, SMPL_PARENTS, UPPER_BODY_CHAIN
from portrait_core.export.rig import (
    body_local_rotations,
    build_rig_from_arrays,
    fold_weights,
    morph_basis,
    morph_weights,
    morphs_from_displacement,
)


def test_skeleton_is_the_canonical_upper_body_chain(body, body_rig):
    rig = body_rig
    assert rig.joint_ids == UPPER_BODY_CHAIN
    assert rig.joint_names == tuple(SMPL_JOINT_NAMES[j] for j in UPPER_BODY_CHAIN)
    for j, jid in enumerate(rig.joint_ids):
        p = SMPL_PARENTS[jid]
        assert rig.parents[j] == (rig.joint_ids.index(p) if p >= 0 else -1)
    J = body.canonical().joints[0].double().numpy()
    assert np.allclose(rig.joint_positions, J[list(UPPER_BODY_CHAIN)], atol=1e-6)
    assert np.allclose(rig.joint_positions[rig.index("neck")], 0.0, atol=1e-6)  # canonical origin = J12
    # inverse bind = inverse of the rest (canonical) joint transform
    rest = rig.global_transforms(np.tile(np.eye(3), (rig.num_joints, 1, 1)))
    assert np.allclose(rest @ rig.inverse_bind_matrices, np.eye(4), atol=1e-9)


def test_skin_weights_are_top4_normalised(body_rig, body_mesh):
    rig = body_rig
    V = body_mesh.num_vertices
    assert rig.joints.shape == (V, 4) and rig.joints.dtype == np.uint16
    assert rig.weights.shape == (V, 4) and rig.weights.dtype == np.float32
    assert np.allclose(rig.weights.sum(1), 1.0, atol=1e-6)
    assert rig.weights.min() >= 0 and rig.joints.max() < rig.num_joints
    head = body_mesh.vertices[:, 1] > 0.15  # top of the head: rigid with the head joint
    assert np.all(rig.joints[head, 0] == rig.index("head")) and rig.weights[head, 0].min() > 0.99


def test_pose_code_to_local_rotations_matches_body_bones(body, body_rig, test_pose):
    state = body.posed(None, torch.tensor(test_pose, dtype=torch.float32)[None])
    Q_body = body_local_rotations(body_rig, state.bone_transforms[0])
    Q = body_rig.local_rotations(test_pose)
    assert np.abs(Q - Q_body).max() < 1e-5
    S = body_rig.skin_matrices(Q)
    G = state.bone_transforms[0].double().numpy()[list(body_rig.joint_ids)]
    assert np.abs(S - G).max() < 1e-5  # skin matrices = the body's canonical->posed bone transforms


def test_rig_lbs_reproduces_the_body_deformation(body, body_rig, body_mesh, test_pose):
    """Posing the rig ~ the generator's pose deformation (the body's nearest-vertex forward LBS)."""
    v = body_mesh.vertices
    posed = body_rig.pose_mesh(v, test_pose)
    state = body.posed(None, torch.tensor(test_pose, dtype=torch.float32)[None])
    T = body.forward_lbs(state, torch.from_numpy(v)[None])[0].double().numpy()
    ref = np.einsum("vij,vj->vi", T[:, :3, :3], v) + T[:, :3, 3]
    err = np.linalg.norm(posed - ref, axis=1)
    moved = np.linalg.norm(ref - v, axis=1)
    print(f"rig vs body LBS: mean {1e3 * err.mean():.2f} mm, p95 {1e3 * np.percentile(err, 95):.2f} mm, "
          f"max {1e3 * err.max():.1f} mm (max displacement {1e3 * moved.max():.0f} mm)")
    assert moved.max() > 0.05
    assert err.mean() < 2e-3 and np.percentile(err, 95) < 5e-3
    head = body_mesh.vertices[:, 1] > 0.15
    assert err[head].max() < 1e-4  # rigid parts are exact


def test_fold_weights_is_exact_for_pose_code_poses():
    W = np.random.default_rng(0).dirichlet(np.ones(24), size=5)
    F = fold_weights(W, UPPER_BODY_CHAIN)
    assert np.allclose(F.sum(1), 1.0)
    col = {j: i for i, j in enumerate(UPPER_BODY_CHAIN)}
    # left wrist (20) and hand (22) go to the left elbow (18); hips/knees to the pelvis (0)
    assert np.allclose(F[:, col[18]], W[:, [18, 20, 22]].sum(1))
    assert np.allclose(F[:, col[0]], W[:, [0, 1, 2, 4, 5, 7, 8, 10, 11]].sum(1))


def test_rig_checks_its_joint_list():
    J = np.zeros((24, 3))
    with pytest.raises(ValueError, match="needs its parent"):
        build_rig_from_arrays(np.zeros((3, 3)), np.array([[0, 1, 2]]), J, np.zeros((1, 3)), np.ones((1, 24)) / 24,
                              joint_ids=(0, 12))


def test_morph_basis_names_and_weights():
    names, E = morph_basis(3, scale=2.0)
    assert names == ["jaw_open", "smile", "brow_raise"] and E.shape == (3, 64)
    names, E = morph_basis(["blink", 20], scale=1.5)
    assert names == ["blink", "expr_20"] and E[0, 3] == 1.5 and E[1, 20] == 1.5
    e = np.random.default_rng(1).normal(size=(7, 64))
    w = morph_weights(e, E)
    assert np.allclose(w, e[:, [3, 20]] / 1.5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown expression"):
        morph_basis(["grin"])


def test_morphs_from_displacement_are_deltas():
    v = np.random.default_rng(2).normal(size=(50, 3)).astype(np.float32)
    names, E = morph_basis(2, scale=2.0)
    fn = lambda p, e: p * e[:3].sum() * 0.01  # noqa: E731  a linear toy deformation
    m = morphs_from_displacement(fn, v, names, E)
    assert list(m) == names
    assert np.allclose(m["jaw_open"], v * 0.02, atol=1e-7)


def test_surface_weights_interpolate_the_body(body):
    from portrait_core.export.rig import closest_point_barycentric, surface_weights

    rng = np.random.default_rng(3)
    a, b, c = rng.normal(size=(3, 500, 3))
    p = rng.normal(size=(500, 3)) * 2
    bary, d2 = closest_point_barycentric(p, a, b, c)
    u, v = np.meshgrid(np.linspace(0, 1, 120), np.linspace(0, 1, 120))
    keep = u + v <= 1
    u, v = u[keep], v[keep]
    grid = a[:, None] * (1 - u - v)[None, :, None] + b[:, None] * u[None, :, None] + c[:, None] * v[None, :, None]
    brute = ((grid - p[:, None]) ** 2).sum(-1).min(1)
    assert np.all(d2 <= brute + 1e-12) and np.allclose(bary.sum(1), 1) and bary.min() >= -1e-12
    V = body.canonical().vertices[0].double().numpy()
    F = body.faces.numpy()
    W = body.lbs_weights.double().numpy()
    mid = V[F[:50]].mean(1)  # triangle centroids: the weights are the mean of the corners'
    assert np.allclose(surface_weights(V[:200], V, F, W), W[:200], atol=1e-9)
    assert np.allclose(surface_weights(mid, V, F, W), W[F[:50]].mean(1), atol=1e-9)
