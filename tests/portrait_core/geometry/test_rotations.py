"""Tests for portrait_core.geometry.rotations: round trips, edge angles, gradients, batch shapes."""

from __future__ import annotations

import math

import pytest
import torch

from portrait_core.geometry import rotations as rot

D = torch.float64


def _random_axis_angle(n, max_angle=math.pi, seed=0):
    g = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=D), dim=-1)
    angle = torch.rand(n, 1, generator=g, dtype=D) * max_angle
    return axis * angle


def _edge_axis_angles():
    """Near-zero and near-pi angles about assorted axes (and exactly 0 and pi)."""
    axes = torch.nn.functional.normalize(
        torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -2, 3], [-0.3, 0.2, -0.9]], dtype=D), dim=-1)
    angles = torch.tensor([0.0, 1e-12, 1e-8, 1e-6, 1e-4, 1e-2, math.pi - 1e-2, math.pi - 1e-5, math.pi - 1e-8,
                           math.pi], dtype=D)
    return (axes[:, None, :] * angles[None, :, None]).reshape(-1, 3)


def _angle_between(R1, R2):
    cos = ((R1.transpose(-1, -2) @ R2).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.acos(cos.clamp(-1, 1))


def _naive_rodrigues(aa):
    theta = aa.norm(dim=-1, keepdim=True)[..., None]
    k = rot.skew(aa / aa.norm(dim=-1, keepdim=True))
    eye = torch.eye(3, dtype=aa.dtype).expand_as(k)
    return eye + torch.sin(theta) * k + (1 - torch.cos(theta)) * (k @ k)


def _equivalent_axis_angle(a, b, atol):
    """a and b describe the same rotation (at angle pi, a and -a are the same)."""
    direct = (a - b).norm(dim=-1)
    flipped = (a + b).norm(dim=-1)
    at_pi = (a.norm(dim=-1) - math.pi).abs() < 1e-6
    err = torch.where(at_pi, torch.minimum(direct, flipped), direct)
    assert err.max() < atol, err.max()


def test_skew_is_cross_product():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 5, 3, generator=g, dtype=D)
    torch.testing.assert_close((rot.skew(a) @ b[..., None]).squeeze(-1), torch.cross(a, b, dim=-1))


def test_axis_angle_to_matrix_matches_rodrigues_and_is_a_rotation():
    aa = _random_axis_angle(200)
    R = rot.axis_angle_to_matrix(aa)
    torch.testing.assert_close(R, _naive_rodrigues(aa))
    torch.testing.assert_close(R.transpose(-1, -2) @ R, torch.eye(3, dtype=D).expand_as(R))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(200, dtype=D))
    # rotating about z by +90 degrees takes +x to +y (right-handed, column vectors)
    Rz = rot.axis_angle_to_matrix(torch.tensor([0, 0, math.pi / 2], dtype=D))
    torch.testing.assert_close(Rz @ torch.tensor([1.0, 0, 0], dtype=D), torch.tensor([0.0, 1, 0], dtype=D))
    torch.testing.assert_close(rot.axis_angle_to_matrix(torch.zeros(3, dtype=D)), torch.eye(3, dtype=D))


@pytest.mark.parametrize("source", ["random", "edge"])
def test_axis_angle_matrix_quaternion_round_trips(source):
    aa = _random_axis_angle(300) if source == "random" else _edge_axis_angles()
    R = rot.axis_angle_to_matrix(aa)
    aa2 = rot.matrix_to_axis_angle(R)
    _equivalent_axis_angle(aa2, aa, atol=1e-7)
    torch.testing.assert_close(rot.axis_angle_to_matrix(aa2), R)
    q = rot.axis_angle_to_quaternion(aa)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(len(aa), dtype=D))
    torch.testing.assert_close(rot.quaternion_to_matrix(q), R)
    _equivalent_axis_angle(rot.quaternion_to_axis_angle(q), aa, atol=1e-9)
    q2 = rot.matrix_to_quaternion(R)
    assert (q2[:, 0] >= 0).all()
    # same rotation: q2 = +-q
    assert torch.minimum((q2 - q).norm(dim=-1), (q2 + q).norm(dim=-1)).max() < 1e-7
    torch.testing.assert_close(rot.quaternion_to_matrix(q2), R)


def test_axis_angle_angle_range_and_wraparound():
    # angles above pi come back as the equivalent rotation with angle in [0, pi]
    axis = torch.nn.functional.normalize(torch.tensor([0.2, -0.5, 0.8], dtype=D), dim=0)
    for angle in [1.5 * math.pi, 2 * math.pi - 0.1, 3.0 * math.pi - 0.2]:
        aa = axis * angle
        back = rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(aa))
        assert back.norm() <= math.pi + 1e-12
        assert _angle_between(rot.axis_angle_to_matrix(back), rot.axis_angle_to_matrix(aa)) < 1e-7


def test_near_zero_precision_float32():
    aa = torch.tensor([[1e-5, -2e-5, 3e-6], [1e-3, 0, 0], [0, 0, 0]], dtype=torch.float32)
    back = rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(aa))
    assert (back - aa).abs().max() < 1e-6
    qback = rot.quaternion_to_axis_angle(rot.axis_angle_to_quaternion(aa))
    assert (qback - aa).abs().max() < 1e-9


def test_quaternion_conventions():
    q = torch.tensor([math.cos(0.25), 0.0, 0.0, math.sin(0.25)], dtype=D)  # 0.5 rad about +z, w first
    torch.testing.assert_close(rot.quaternion_to_matrix(q), rot.rotation_about_axis("z", torch.tensor(0.5, dtype=D)))
    # not normalised input is normalised; -q is the same rotation
    torch.testing.assert_close(rot.quaternion_to_matrix(3 * q), rot.quaternion_to_matrix(-q))
    torch.testing.assert_close(rot.quaternion_to_axis_angle(-q), torch.tensor([0, 0, 0.5], dtype=D))


def test_euler_zyx_definition_and_elementary_axes():
    e = torch.tensor([0.3, -0.4, 0.5], dtype=D)
    expect = (rot.rotation_about_axis("z", e[0]) @ rot.rotation_about_axis("y", e[1])
              @ rot.rotation_about_axis("x", e[2]))
    torch.testing.assert_close(rot.euler_zyx_to_matrix(e), expect)
    for name, axis in (("x", [1.0, 0, 0]), ("y", [0, 1.0, 0]), ("z", [0, 0, 1.0])):
        torch.testing.assert_close(rot.rotation_about_axis(name, 0.7),
                                   rot.axis_angle_to_matrix(0.7 * torch.tensor(axis)))


def test_euler_zyx_round_trip_principal_branch():
    g = torch.Generator().manual_seed(5)
    n = 500
    e = torch.stack([
        (torch.rand(n, generator=g, dtype=D) * 2 - 1) * math.pi * 0.999,
        (torch.rand(n, generator=g, dtype=D) * 2 - 1) * math.pi / 2 * 0.999,
        (torch.rand(n, generator=g, dtype=D) * 2 - 1) * math.pi * 0.999,
    ], -1)
    back = rot.matrix_to_euler_zyx(rot.euler_zyx_to_matrix(e))
    assert (back - e).abs().max() < 1e-9
    # any matrix: the recovered Eulers are on the principal branch and rebuild the matrix
    R = rot.axis_angle_to_matrix(_random_axis_angle(n, seed=9))
    eb = rot.matrix_to_euler_zyx(R)
    assert (eb[:, 1].abs() <= math.pi / 2 + 1e-12).all()
    torch.testing.assert_close(rot.euler_zyx_to_matrix(eb), R)


def test_euler_zyx_near_and_at_gimbal_lock():
    for b in (math.pi / 2, -math.pi / 2, math.pi / 2 - 1e-7, -math.pi / 2 + 1e-9):
        e = torch.tensor([0.4, b, -0.3], dtype=D)
        R = rot.euler_zyx_to_matrix(e)
        eb = rot.matrix_to_euler_zyx(R)
        # the angles may redistribute at the lock, but the rotation must be the same
        assert _angle_between(rot.euler_zyx_to_matrix(eb), R) < 1e-6
        assert abs(float(eb[1]) - b) < 1e-6


def test_rotation_6d_round_trip_and_gram_schmidt():
    R = rot.axis_angle_to_matrix(_random_axis_angle(100, seed=2))
    d6 = rot.matrix_to_rotation_6d(R)
    assert d6.shape == (100, 6)
    torch.testing.assert_close(rot.rotation_6d_to_matrix(d6), R)
    # arbitrary (non-orthonormal) 6D input still gives a proper rotation, first column along a1
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, 6, generator=g, dtype=D)
    Rx = rot.rotation_6d_to_matrix(x)
    torch.testing.assert_close(Rx.transpose(-1, -2) @ Rx, torch.eye(3, dtype=D).expand_as(Rx))
    torch.testing.assert_close(torch.linalg.det(Rx), torch.ones(50, dtype=D))
    torch.testing.assert_close(Rx[..., 0], torch.nn.functional.normalize(x[:, :3], dim=-1))


def test_batch_shapes_are_preserved():
    aa = _random_axis_angle(24).reshape(2, 3, 4, 3)
    R = rot.axis_angle_to_matrix(aa)
    assert R.shape == (2, 3, 4, 3, 3)
    assert rot.matrix_to_axis_angle(R).shape == (2, 3, 4, 3)
    assert rot.matrix_to_quaternion(R).shape == (2, 3, 4, 4)
    assert rot.quaternion_to_matrix(rot.matrix_to_quaternion(R)).shape == (2, 3, 4, 3, 3)
    assert rot.axis_angle_to_quaternion(aa).shape == (2, 3, 4, 4)
    assert rot.matrix_to_euler_zyx(R).shape == (2, 3, 4, 3)
    assert rot.euler_zyx_to_matrix(rot.matrix_to_euler_zyx(R)).shape == (2, 3, 4, 3, 3)
    assert rot.matrix_to_rotation_6d(R).shape == (2, 3, 4, 6)
    assert rot.rotation_6d_to_matrix(rot.matrix_to_rotation_6d(R)).shape == (2, 3, 4, 3, 3)
    T = rot.rigid_transform(R, aa)
    assert T.shape == (2, 3, 4, 4, 4)
    # unbatched
    assert rot.axis_angle_to_matrix(torch.zeros(3)).shape == (3, 3)
    assert rot.rigid_transform(torch.eye(3), torch.zeros(3)).shape == (4, 4)


def test_rigid_transform_and_transform_points():
    R = rot.axis_angle_to_matrix(_random_axis_angle(7, seed=11))
    t = torch.randn(7, 3, dtype=D, generator=torch.Generator().manual_seed(1))
    T = rot.rigid_transform(R, t)
    torch.testing.assert_close(T[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=D).expand(7, 4))
    p = torch.randn(7, 3, dtype=D, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(rot.transform_points(T, p), (R @ p[..., None]).squeeze(-1) + t)
    # broadcasting one transform over many points
    pts = torch.randn(10, 3, dtype=D)
    torch.testing.assert_close(rot.transform_points(T[0], pts), pts @ R[0].T + t[0])
    # composition
    torch.testing.assert_close(rot.transform_points(T[0] @ T[1], p[2]),
                               rot.transform_points(T[0], rot.transform_points(T[1], p[2])))


def test_gradients_finite_at_zero_and_correct():
    # Jacobian of axis_angle_to_matrix at zero is the skew generator: dR/da_k = skew(e_k)
    for fn, x0 in [
        (rot.axis_angle_to_matrix, torch.zeros(3, dtype=D)),
        (rot.axis_angle_to_quaternion, torch.zeros(3, dtype=D)),
        (rot.quaternion_to_axis_angle, torch.tensor([1.0, 0, 0, 0], dtype=D)),
        (rot.matrix_to_axis_angle, torch.eye(3, dtype=D)),
        (rot.matrix_to_quaternion, torch.eye(3, dtype=D)),
        (rot.matrix_to_euler_zyx, torch.eye(3, dtype=D)),
        (rot.euler_zyx_to_matrix, torch.zeros(3, dtype=D)),
    ]:
        J = torch.autograd.functional.jacobian(fn, x0)
        assert torch.isfinite(J).all(), fn.__name__
    J = torch.autograd.functional.jacobian(rot.axis_angle_to_matrix, torch.zeros(3, dtype=D))
    for k in range(3):
        torch.testing.assert_close(J[..., k], rot.skew(torch.eye(3, dtype=D)[k]))
    # composition log(exp(a)) has identity Jacobian at 0
    J = torch.autograd.functional.jacobian(lambda a: rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(a)),
                                           torch.zeros(3, dtype=D))
    torch.testing.assert_close(J, torch.eye(3, dtype=D))


def test_gradcheck_away_from_singularities():
    aa = torch.tensor([[0.3, -0.2, 0.5], [1e-4, 2e-4, -1e-4], [2.0, 0.5, -1.0]], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(rot.axis_angle_to_matrix, (aa,))
    assert torch.autograd.gradcheck(rot.axis_angle_to_quaternion, (aa,))
    R = rot.axis_angle_to_matrix(aa.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(rot.matrix_to_quaternion, (R,))
    assert torch.autograd.gradcheck(rot.matrix_to_euler_zyx, (R,))
    e = torch.tensor([[0.3, 0.2, -0.1], [1.0, -1.2, 2.0]], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(rot.euler_zyx_to_matrix, (e,))
    d6 = torch.randn(4, 6, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(rot.rotation_6d_to_matrix, (d6,))
