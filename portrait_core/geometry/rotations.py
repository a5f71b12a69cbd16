"""Rotation conversions on torch tensors with any leading batch shape.

Conventions: right-handed frames, angles in radians, rotation matrices act on column vectors
(``p' = R @ p``), quaternions are (w, x, y, z) with w first, ZYX Euler angles (e0, e1, e2) mean
``R = Rz(e0) @ Ry(e1) @ Rx(e2)`` (the official AniPortraitGAN keyframe format).
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-8


def skew(v: Tensor) -> Tensor:
    """[..., 3] -> [..., 3, 3] cross-product matrix, ``skew(a) @ b == a x b``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*v.shape[:-1], 3, 3)


def axis_angle_to_matrix(aa: Tensor) -> Tensor:
    """Axis-angle [..., 3] (direction = axis, norm = angle) -> rotation matrix [..., 3, 3].

    Uses a Taylor expansion near zero so gradients stay finite at the identity.
    """
    theta2 = (aa * aa).sum(-1, keepdim=True).unsqueeze(-1)  # [..., 1, 1]
    theta = torch.sqrt(theta2.clamp_min(_EPS * _EPS))
    small = theta2 < 1e-6
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(_EPS))
    k = skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """Rotation matrix [..., 3, 3] -> unit quaternion (w, x, y, z) [..., 4] with w >= 0."""
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # four candidate (squared, scaled) magnitudes; pick the largest for numerical stability
    q_abs = torch.sqrt(
        torch.stack(
            [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
        ).clamp_min(0.0)
        + 1e-12
    )
    w_c = torch.stack([q_abs[..., 0] ** 2, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1)
    x_c = torch.stack([m[..., 2, 1] - m[..., 1, 2], q_abs[..., 1] ** 2, m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1)
    y_c = torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], q_abs[..., 2] ** 2, m[..., 2, 1] + m[..., 1, 2]], -1)
    z_c = torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 2, 0] + m[..., 0, 2], m[..., 2, 1] + m[..., 1, 2], q_abs[..., 3] ** 2], -1)
    cands = torch.stack([w_c, x_c, y_c, z_c], dim=-2) / (2.0 * q_abs[..., None].clamp_min(0.1))
    best = q_abs.argmax(dim=-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Quaternion (w, x, y, z) [..., 4] (normalised here) -> rotation matrix [..., 3, 3]."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(*q.shape[:-1], 3, 3)


def quaternion_to_axis_angle(q: Tensor) -> Tensor:
    """Quaternion (w, x, y, z) [..., 4] -> axis-angle [..., 3] with angle in [0, pi]."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    q = torch.where(q[..., :1] < 0, -q, q)
    xyz = q[..., 1:]
    s = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, q[..., :1])
    # angle / sin(angle/2) = 2 atan2(s, w) / s -> (2 / w) (1 - s^2 / (3 w^2)) as s -> 0
    w = q[..., :1].clamp_min(_EPS)
    scale = torch.where(s < 1e-6, 2.0 / w * (1 - s * s / (3 * w * w)), angle / s.clamp_min(_EPS))
    return xyz * scale


def axis_angle_to_quaternion(aa: Tensor) -> Tensor:
    """Axis-angle [..., 3] -> quaternion (w, x, y, z) [..., 4]."""
    theta = aa.norm(dim=-1, keepdim=True)
    half = 0.5 * theta
    scale = torch.where(theta < 1e-6, 0.5 - theta * theta / 48, torch.sin(half) / theta.clamp_min(_EPS))
    return torch.cat([torch.cos(half), aa * scale], dim=-1)


def matrix_to_axis_angle(R: Tensor) -> Tensor:
    """Rotation matrix [..., 3, 3] -> axis-angle [..., 3] (angle in [0, pi])."""
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def _rot_x(a: Tensor) -> Tensor:
    c, s, o, i = torch.cos(a), torch.sin(a), torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([i, o, o, o, c, -s, o, s, c], -1).reshape(*a.shape, 3, 3)


def _rot_y(a: Tensor) -> Tensor:
    c, s, o, i = torch.cos(a), torch.sin(a), torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([c, o, s, o, i, o, -s, o, c], -1).reshape(*a.shape, 3, 3)


def _rot_z(a: Tensor) -> Tensor:
    c, s, o, i = torch.cos(a), torch.sin(a), torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([c, -s, o, s, c, o, o, o, i], -1).reshape(*a.shape, 3, 3)


def rotation_about_axis(axis: str, angle: Tensor | float) -> Tensor:
    """Elementary rotation about 'x', 'y' or 'z' by ``angle`` radians -> [..., 3, 3]."""
    a = torch.as_tensor(angle, dtype=torch.get_default_dtype() if not torch.is_tensor(angle) else angle.dtype)
    return {"x": _rot_x, "y": _rot_y, "z": _rot_z}[axis](a)


def euler_zyx_to_matrix(e: Tensor) -> Tensor:
    """ZYX Euler [..., 3] -> ``Rz(e0) @ Ry(e1) @ Rx(e2)`` [..., 3, 3] (official keyframe convention)."""
    return _rot_z(e[..., 0]) @ _rot_y(e[..., 1]) @ _rot_x(e[..., 2])


def matrix_to_euler_zyx(R: Tensor) -> Tensor:
    """Inverse of :func:`euler_zyx_to_matrix`; e1 in [-pi/2, pi/2]. Gimbal lock at |e1| = pi/2 sets e2 = 0."""
    # R = Rz(a) Ry(b) Rx(c): R[2,0] = -sin b, R[2,1] = cos b sin c, R[2,2] = cos b cos c,
    # R[1,0] = sin a cos b, R[0,0] = cos a cos b
    # b from atan2 (not asin): accurate near +-pi/2 and with a finite gradient there
    sb = -R[..., 2, 0]
    cb = torch.sqrt(R[..., 2, 1] ** 2 + R[..., 2, 2] ** 2)
    b = torch.atan2(sb, cb)
    regular = cb > 1e-6
    a = torch.where(regular, torch.atan2(R[..., 1, 0], R[..., 0, 0]), torch.atan2(-R[..., 0, 1], R[..., 1, 1]))
    c = torch.where(regular, torch.atan2(R[..., 2, 1], R[..., 2, 2]), torch.zeros_like(b))
    return torch.stack([a, b, c], dim=-1)


def rotation_6d_to_matrix(d6: Tensor) -> Tensor:
    """Continuous 6D representation [..., 6] (two columns) -> rotation matrix via Gram-Schmidt."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(R: Tensor) -> Tensor:
    """Rotation matrix [..., 3, 3] -> 6D representation [..., 6]: the first two columns, concatenated."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def rigid_transform(R: Tensor, t: Tensor) -> Tensor:
    """Rotation [..., 3, 3] and translation [..., 3] -> homogeneous transform [..., 4, 4]."""
    top = torch.cat([R, t[..., None]], dim=-1)
    bottom = torch.zeros(*R.shape[:-2], 1, 4, dtype=R.dtype, device=R.device)
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], dim=-2)


def transform_points(T: Tensor, p: Tensor) -> Tensor:
    """Apply homogeneous transforms [..., 4, 4] to points [..., 3] (broadcasting over leading dims)."""
    return (T[..., :3, :3] @ p[..., None]).squeeze(-1) + T[..., :3, 3]
