"""Torch-free (numpy, float64) rotation conversions for code that must run without torch (keyframe files,
the Blender add-on's conversions). Same conventions as :mod:`portrait_core.geometry.rotations`:

right-handed frames, radians, matrices act on column vectors (``p' = R @ p``), quaternions (w, x, y, z) with
w >= 0 on output, ZYX Euler (e0, e1, e2) means ``R = Rz(e0) @ Ry(e1) @ Rx(e2)`` with e1 in [-pi/2, pi/2].
All functions accept any leading batch shape.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "axis_angle_to_matrix", "matrix_to_axis_angle", "axis_angle_to_quaternion", "quaternion_to_axis_angle",
    "quaternion_to_matrix", "matrix_to_quaternion", "euler_zyx_to_matrix", "matrix_to_euler_zyx",
    "slerp_axis_angle",
]


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def axis_angle_to_quaternion(aa) -> np.ndarray:
    """Axis-angle [..., 3] -> unit quaternion (w, x, y, z) [..., 4]."""
    aa = _f64(aa)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    half = 0.5 * theta
    small = theta < 1e-6
    scale = np.where(small, 0.5 - theta * theta / 48.0, np.sin(half) / np.where(small, 1.0, theta))
    return np.concatenate([np.cos(half), aa * scale], axis=-1)


def quaternion_to_axis_angle(q) -> np.ndarray:
    """Quaternion (w, x, y, z) [..., 4] -> axis-angle [..., 3] with angle in [0, pi]."""
    q = _f64(q)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    q = np.where(q[..., :1] < 0, -q, q)
    w, xyz = q[..., :1], q[..., 1:]
    s = np.linalg.norm(xyz, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, w)
    small = s < 1e-7
    w_safe = np.maximum(w, 1e-300)
    scale = np.where(small, 2.0 / w_safe * (1.0 - s * s / (3.0 * w_safe * w_safe)), angle / np.where(small, 1.0, s))
    return xyz * scale


def quaternion_to_matrix(q) -> np.ndarray:
    """Quaternion (w, x, y, z) [..., 4] (normalised here) -> rotation matrix [..., 3, 3]."""
    q = _f64(q)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    R = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return R.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(R) -> np.ndarray:
    """Rotation matrix [..., 3, 3] -> unit quaternion (w, x, y, z) [..., 4], w >= 0 (largest-pivot method)."""
    R = _f64(R)
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    four = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = np.argmax(four, axis=-1)
    d21, d02, d10 = R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]
    s10, s02, s21 = R[..., 1, 0] + R[..., 0, 1], R[..., 0, 2] + R[..., 2, 0], R[..., 2, 1] + R[..., 1, 2]
    cands = np.stack([
        np.stack([four[..., 0], d21, d02, d10], -1),
        np.stack([d21, four[..., 1], s10, s02], -1),
        np.stack([d02, s10, four[..., 2], s21], -1),
        np.stack([d10, s02, s21, four[..., 3]], -1),
    ], -2)  # [..., 4, 4]; row k = 4 q_k q
    q = np.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def axis_angle_to_matrix(aa) -> np.ndarray:
    """Axis-angle [..., 3] -> rotation matrix [..., 3, 3]."""
    return quaternion_to_matrix(axis_angle_to_quaternion(aa))


def matrix_to_axis_angle(R) -> np.ndarray:
    """Rotation matrix [..., 3, 3] -> axis-angle [..., 3] (angle in [0, pi])."""
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def _rot(axis: int, a: np.ndarray) -> np.ndarray:
    c, s, o, i = np.cos(a), np.sin(a), np.zeros_like(a), np.ones_like(a)
    rows = {
        0: [i, o, o, o, c, -s, o, s, c],
        1: [c, o, s, o, i, o, -s, o, c],
        2: [c, -s, o, s, c, o, o, o, i],
    }[axis]
    return np.stack(rows, -1).reshape(*a.shape, 3, 3)


def euler_zyx_to_matrix(e) -> np.ndarray:
    """ZYX Euler [..., 3] -> ``Rz(e0) @ Ry(e1) @ Rx(e2)`` [..., 3, 3]."""
    e = _f64(e)
    return _rot(2, e[..., 0]) @ _rot(1, e[..., 1]) @ _rot(0, e[..., 2])


def matrix_to_euler_zyx(R) -> np.ndarray:
    """Inverse of :func:`euler_zyx_to_matrix` on the principal branch: e1 in [-pi/2, pi/2], e0, e2 in (-pi, pi].
    At gimbal lock (|e1| = pi/2) e2 = 0."""
    R = _f64(R)
    sb = -R[..., 2, 0]
    cb = np.hypot(R[..., 2, 1], R[..., 2, 2])
    b = np.arctan2(sb, cb)
    regular = cb > 1e-9
    a = np.where(regular, np.arctan2(R[..., 1, 0], R[..., 0, 0]), np.arctan2(-R[..., 0, 1], R[..., 1, 1]))
    c = np.where(regular, np.arctan2(R[..., 2, 1], R[..., 2, 2]), 0.0)
    return np.stack([a, b, c], axis=-1)


def slerp_axis_angle(a, b, t) -> np.ndarray:
    """Geodesic interpolation between rotations given as axis-angle [..., 3]: ``R(t) = R_a exp(t log(R_a^T R_b))``
    (the shortest way round, constant angular speed). ``t`` broadcasts against the leading shape."""
    Ra, Rb = axis_angle_to_matrix(a), axis_angle_to_matrix(b)
    rel = matrix_to_axis_angle(np.swapaxes(Ra, -1, -2) @ Rb)
    t = _f64(t)[..., None]
    return matrix_to_axis_angle(Ra @ axis_angle_to_matrix(rel * t))
