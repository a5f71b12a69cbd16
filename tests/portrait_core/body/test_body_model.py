"""BodyModel: canonical pose, pose code, bone/vertex transforms, (inverse) LBS, face placement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from portrait_core.body.model import BodyModel, nearest_index
from portrait_core.conventions import FACE_CENTRE
from portrait_core.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle, transform_points


def _head_pose(angle_deg: float, axis=(1.0, 0.0, 0.0), batch: int = 1) -> torch.Tensor:
    pose = torch.zeros(batch, 6, 3)
    pose[:, 3] = torch.tensor(axis) * math.radians(angle_deg)
    return pose


def test_zero_pose_gives_identity_transforms(body):
    betas = torch.randn(2, 10, generator=torch.Generator().manual_seed(0))
    state = body.posed(betas, torch.zeros(2, 6, 3))
    eye = torch.eye(4)
    assert torch.equal(state.bone_transforms, eye.expand(2, 24, 4, 4))  # exactly
    assert torch.equal(state.vertex_transforms, eye.expand(2, body.num_vertices, 4, 4))
    pose = torch.zeros(1, 6, 3, requires_grad=True)  # gradients exist at the zero pose (pose fitting starts there)
    head = body.head_mask
    pts = body.canonical(None).vertices[:, head]
    (transform_points(body.posed(None, pose).vertex_transforms[:, head], pts) - 1.0).square().sum().backward()
    assert pose.grad.abs().sum() > 0
    canon = body.canonical(betas)
    assert (state.vertices - canon.vertices).abs().max() < 1e-6
    assert (canon.vertex_transforms == eye).all()


def test_canonical_frame_origin_and_head_joint(body):
    state = body.canonical(torch.randn(3, 10))
    assert state.joints[:, 12].abs().max() < 1e-6  # origin at the canonical neck joint for every betas
    j15 = body.canonical(None).joints[0, 15]
    assert torch.allclose(j15, torch.tensor([0.0, 0.065, 0.03]), atol=2e-3)


def test_head_rotation_30_degrees(body):
    W = body.lbs_weights
    canon = body.canonical(None)
    state = body.posed(None, _head_pose(30.0))
    head = W[:, 15] > 1 - 1e-6
    chest = W[:, [6, 9]].sum(1) > 1 - 1e-6
    assert head.sum() > 200 and chest.sum() > 200
    j15 = canon.joints[0, 15]
    a = canon.vertices[0, head] - j15
    b = state.vertices[0, head] - j15
    cosang = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    # rotation about +X: the angle between the yz projections is 30 degrees, x unchanged
    top = a[:, 1].argmax()
    ang = math.degrees(math.atan2(b[top, 2], b[top, 1]) - math.atan2(a[top, 2], a[top, 1]))
    assert abs(ang - 30.0) < 0.01
    R = axis_angle_to_matrix(torch.tensor([math.radians(30), 0, 0]))
    assert (b - a @ R.T).abs().max() < 1e-5
    assert cosang.min() > math.cos(math.radians(30.01))
    # chest and all joints but the head's descendants stay still
    assert (state.vertices[0, chest] - canon.vertices[0, chest]).abs().max() < 1e-6
    keep = [j for j in range(24) if j != 15]
    assert (state.joints[0, keep] - canon.joints[0, keep]).abs().max() < 1e-6
    assert (state.joints[0, 0] - canon.joints[0, 0]).abs().max() < 1e-6


def test_bone_transforms_follow_the_documented_rule(body):
    """G_j = A_j(R(pose) @ R_adjust) @ A_j(R_adjust)^-1 for every joint (A = rest -> state skinning transforms)."""
    from portrait_core.body.model import invert_rigid, skinning_transforms

    g = torch.Generator().manual_seed(7)
    pose, betas = 0.5 * torch.randn(3, 6, 3, generator=g), torch.randn(3, 10, generator=g)
    _, J = body.rest(betas)
    adjust = body.adjust_rotations.expand(3, 24, 3, 3).clone()
    local = adjust.clone()
    local[:, 12:18] = axis_angle_to_matrix(pose) @ adjust[:, 12:18]
    A_loc, J_posed = skinning_transforms(local, J, body.parents)
    A_adj, _ = skinning_transforms(adjust, J, body.parents)
    st = body.posed(betas, pose)
    assert (st.bone_transforms - A_loc @ invert_rigid(A_adj)).abs().max() < 1e-5
    assert (st.joints - J_posed).abs().max() < 1e-5


def test_pose_code_rule_matches_smplx_forward(body, synthetic_data):
    """Posed vertices equal smplx.SMPL with the local rotations R(pose) @ R_adjust (converted to axis-angle)."""
    import smplx

    from portrait_core.body.io import smplx_struct
    from portrait_core.body.synthetic import synthetic_vertex_ids

    g = torch.Generator().manual_seed(1)
    pose, betas = 0.3 * torch.randn(2, 6, 3, generator=g), torch.randn(2, 10, generator=g)
    layer = smplx.SMPL(
        model_path="",
        data_struct=smplx_struct(synthetic_data),
        vertex_ids=synthetic_vertex_ids(synthetic_data),
        use_hands=False,
        use_feet_keypoints=False,
        batch_size=2,
    )
    adjust = body.adjust_rotations.clone().expand(2, 24, 3, 3).clone()
    adjust[:, 12:18] = axis_angle_to_matrix(pose) @ body.adjust_rotations[12:18]
    aa = matrix_to_axis_angle(adjust)
    with torch.no_grad():
        out = layer(betas=betas, global_orient=aa[:, 0], body_pose=aa[:, 1:].reshape(2, -1))
        rest = layer(betas=betas)
    ref = out.vertices - rest.joints[:, 12:13]
    assert (body.posed(betas, pose).vertices - ref).abs().max() < 1e-5


def test_vertex_transforms_map_canonical_to_posed(body):
    """T_v @ canonical vertex = posed vertex for vertices driven by a single bone (and close elsewhere)."""
    pose = 0.4 * torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(2))
    st = body.posed(None, pose)
    moved = transform_points(st.vertex_transforms, st.canonical_vertices)
    rigid = body.lbs_weights.max(1).values > 1 - 1e-6
    assert (moved[0, rigid] - st.vertices[0, rigid]).abs().max() < 1e-5
    assert (moved - st.vertices).norm(dim=-1).median() < 1e-4


def _round_trip_error(body, pose, betas, noise, mask, seed):
    g = torch.Generator().manual_seed(seed)
    st = body.posed(betas, pose)
    base = st.canonical_vertices[:, mask]
    pts = base + noise * torch.randn(base.shape, generator=g)
    observed = transform_points(body.forward_lbs(st, pts), pts)
    back = transform_points(body.inverse_lbs(st, observed), observed)
    return (back - pts).norm(dim=-1).flatten()


def test_lbs_round_trip_near_the_body(body):
    g = torch.Generator().manual_seed(3)
    pose, betas = 0.15 * torch.randn(2, 6, 3, generator=g), torch.randn(2, 10, generator=g)
    err = _round_trip_error(body, pose, betas, 0.004, body.upper_body_mask, 0)
    assert err.median() < 1e-6
    assert (err < 1e-4).float().mean() > 0.95  # nearest-vertex skinning: a few points near part seams differ
    # head-only motion: points within a few mm of the rigid head (away from the neck seam) come back exactly
    v = body.canonical(None).vertices[0]
    rigid = body.lbs_weights[:, 15] > 1 - 1e-6
    inner = rigid.clone()
    inner[rigid] = torch.cdist(v[rigid], v[~rigid]).min(1).values > 0.015
    assert inner.sum() > 500
    for seed in range(3):
        err = _round_trip_error(body, _head_pose(30.0, (1.0, 0.5, 0.2)), None, 0.002, inner, seed)
        assert err.max() < 1e-5


def test_inverse_lbs_is_differentiable_and_chunking_is_exact(body):
    pose = (0.3 * torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(4))).requires_grad_()
    st = body.posed(None, pose)
    pts = st.vertices[:, :400].detach() + 0.01
    T = body.inverse_lbs(st, pts)
    assert T.shape == (1, 400, 4, 4)
    transform_points(T, pts).sum().backward()
    assert pose.grad is not None and pose.grad.abs().sum() > 0
    targets = st.vertices.detach()
    assert torch.equal(nearest_index(pts, targets, chunk_elems=1000), nearest_index(pts, targets))


def test_inverse_lbs_never_snaps_to_elbows(body):
    assert not body.upper_body_mask[body.lbs_weights[:, [18, 19]].sum(1) > 0.5].any()
    st = body.posed(None, torch.zeros(1, 6, 3))
    _, idx = body.inverse_lbs(st, st.vertices, return_index=True)
    assert body.upper_body_mask[idx].all()


def test_face_transform(body):
    T = body.face_transform(torch.zeros(2, 10))
    assert T.shape == (2, 4, 4)
    assert torch.equal(T[:, :3, 3], torch.tensor([FACE_CENTRE] * 2, dtype=torch.float32))
    assert torch.equal(T[:, :3, :3], torch.eye(3).expand(2, 3, 3))
    # rigid with the head: a head rotation moves the face like the head vertices
    pose = _head_pose(25.0, axis=(0.3, 1.0, 0.0))
    G, _ = body.bone_transforms(None, pose)
    Tp = body.face_transform(None, pose)
    assert torch.allclose(Tp, G[:, 15] @ T[:1], atol=1e-6)
    canon_j15 = body.canonical(None).joints[0, 15]
    d0 = torch.tensor(FACE_CENTRE) - canon_j15
    assert abs((Tp[0, :3, 3] - canon_j15).norm() - d0.norm()) < 1e-6
    assert torch.allclose(body.face_centre(None, pose), Tp[:, :3, 3])
    # bigger head (beta 2) moves the face forward and up, the global size too
    big = torch.zeros(1, 10)
    big[0, 2] = 2.0
    c = body.face_centre(big)[0]
    assert c[2] > FACE_CENTRE[2] + 1e-3 and c[1] > FACE_CENTRE[1]
    # global size (beta 0 = 3 % per unit about the neck) scales the face position with the body
    size = torch.zeros(1, 10)
    size[0, 0] = 2.0
    assert torch.allclose(body.face_centre(size)[0], 1.06 * torch.tensor(FACE_CENTRE), atol=1e-5)


def test_head_centre_follows_head(body):
    c0 = body.head_centre(None)
    assert torch.allclose(c0[0], torch.tensor([0.0, 0.145, 0.025]), atol=0.02)
    c1 = body.head_centre(None, _head_pose(30.0))
    j15 = body.canonical(None).joints[0, 15]
    assert torch.allclose((c1 - j15).norm(dim=-1), (c0 - j15).norm(dim=-1), atol=1e-6)


def test_batched_equals_single(body):
    g = torch.Generator().manual_seed(5)
    betas, pose = torch.randn(3, 10, generator=g), 0.3 * torch.randn(3, 6, 3, generator=g)
    batched = body.posed(betas, pose)
    for i in range(3):
        single = body.posed(betas[i : i + 1], pose[i : i + 1])
        assert (single.vertices[0] - batched.vertices[i]).abs().max() < 1e-6
        assert (single.vertex_transforms[0] - batched.vertex_transforms[i]).abs().max() < 1e-6
    ft = body.face_transform(betas, pose)
    assert ft.shape == (3, 4, 4) and ft.dtype == torch.float32


def test_shape_directions(body):
    def rest(i, value):
        b = torch.zeros(1, 10)
        b[0, i] = value
        return body.canonical(b)

    base = body.canonical(None)
    big = rest(0, 2.0)
    height = lambda s: s.vertices[0, :, 1].max() - s.vertices[0, :, 1].min()
    assert height(big) > height(base) * 1.04  # global size
    wide = rest(1, 2.0)
    width = lambda s: (s.joints[0, 16] - s.joints[0, 17]).norm()
    assert width(wide) > width(base) + 0.02  # shoulder width
    assert (wide.joints[0, 15] - base.joints[0, 15]).abs().max() < 1e-4  # the head joint stays
    head = rest(2, 2.0)
    hw = lambda s: s.vertices[0, body.head_mask, 0].max()
    assert hw(head) > hw(base) * 1.08  # head size
    neck = rest(3, 2.0)
    assert neck.joints[0, 15, 1] > base.joints[0, 15, 1] + 0.005  # neck length


def test_device_and_dtype(body):
    st = body.posed(torch.zeros(1, 10, dtype=torch.float64), torch.zeros(1, 6, 3, dtype=torch.float64))
    assert st.vertices.dtype == torch.float32 and st.vertices.device == body.device
    assert body.faces.dtype == torch.long and body.faces.max() < body.num_vertices
    m2 = BodyModel.synthetic()
    assert all(not p.requires_grad for p in m2.buffers()) and len(list(m2.parameters())) == 0
    assert m2.state_dict() == {}  # body data (possibly licensed SMPL) never goes into checkpoints
    assert np.isclose(float(body.lbs_weights.sum(1).min()), 1.0, atol=1e-5)


@pytest.mark.parametrize("bad", [torch.zeros(1, 5, 3), torch.zeros(1, 6)])
def test_bad_pose_shape(body, bad):
    with pytest.raises(ValueError, match="pose"):
        body.posed(None, bad)
    with pytest.raises(ValueError, match="pose"):
        body.face_transform(None, bad)


def test_nearest_index_max_distance_marks_far_points_in_both_methods():
    from portrait_core.body.model import nearest_index

    gen = torch.Generator().manual_seed(0)
    targets = torch.rand(2, 50, 3, generator=gen)
    points = torch.rand(2, 40, 3, generator=gen) * 3 - 1  # many outside the targets' unit cube
    bound = 0.2
    kd = nearest_index(points, targets, method="kdtree", max_distance=bound)
    cd = nearest_index(points, targets, method="cdist", max_distance=bound)
    dist = torch.cdist(points, targets).min(-1).values
    assert torch.equal(kd == -1, dist > bound) and torch.equal(cd == -1, dist > bound)
    assert (kd == -1).any() and (kd >= 0).any()
    near = kd >= 0
    assert torch.equal(kd[near], cd[near])
    assert torch.equal(nearest_index(points, targets, method="kdtree")[near], kd[near])


def test_nearest_index_kdtree_equals_brute_force_for_grid_nodes_far_from_a_body():
    """The pose grid's case: a lattice of nodes, most far from a compact cloud of vertices (the k-d tree's leaf
    size is tuned for it; the answer must stay the exact nearest vertex)."""
    g = torch.Generator().manual_seed(0)
    axis = torch.linspace(-0.32, 0.32, 16)
    nodes = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
    body = torch.randn(1, 3000, 3, generator=g) * torch.tensor([0.12, 0.2, 0.08])
    kd = nearest_index(nodes, body, method="kdtree")
    brute = nearest_index(nodes, body, method="cdist")
    assert torch.equal(kd, brute)
