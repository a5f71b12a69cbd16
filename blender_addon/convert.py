"""Pure-numpy conversions between Busto's canonical (SMPL) frame and Blender. No bpy, no torch.

Frames (docs/CONVENTIONS.md, blender-notes §8):

* SMPL / canonical: right-handed, +Y up, the subject faces +Z, the subject's left is +X, metres. The canonical
  frame's origin is the identity's canonical neck joint (SMPL joint 12).
* Blender: right-handed, +Z up, characters face -Y. ``p_B = C p_S`` with ``C = Rx(+90°)``:
  (x, y, z)_S -> (x, -z, y)_B. World rotations conjugate: ``R_B = C R_S Cᵀ``.
* A Busto rig's *armature space* is Blender-axis canonical space: an armature-local point ``a`` is the canonical
  point ``Cᵀ a`` (the armature object's origin is the canonical neck joint). The rest pose is the canonical pose.
* A pose bone with rest orientation ``R_rest`` (``bone.matrix_local`` 3×3, bone -> armature) gets
  ``q = quat(R_restᵀ · C R_S Cᵀ · R_rest)`` for a pose-code rotation ``R_S``; the inverse recovers the pose code.
  This holds because the canonical rotation of every pose joint's parent (joints 9, 9, 9, 12, 13, 14) is the
  identity, so a pose-code rotation acts in world-aligned axes at the joint.
* Cameras: Blender cameras look down local -Z with +Y up. With ``W = diag(Cᵀ, 1)`` and ``F = diag(1, -1, -1, 1)``,
  the generator's OpenCV cam2world is ``W · M · F`` where ``M`` is the camera's matrix in armature space
  (``rig.matrix_world⁻¹ · camera.matrix_world``).
* Intrinsics are normalised by image size: ``[[fx/W, 0, cx/W], [0, fy/H, cy/H], [0, 0, 1]]``; pixel (i, j) has its
  centre at ((j + 0.5)/W, (i + 0.5)/H); images are top-down (row 0 at the top). Blender images are bottom-up.

Quaternions are (w, x, y, z), w first, as in Blender's ``rotation_quaternion``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "C", "W", "F",
    "smpl_to_blender_points", "blender_to_smpl_points", "smpl_to_blender_rotation", "blender_to_smpl_rotation",
    "axis_angle_to_matrix", "matrix_to_axis_angle", "matrix_to_quaternion", "quaternion_to_matrix",
    "euler_zyx_to_matrix", "matrix_to_euler_zyx", "continuous_quaternions",
    "pose_code_to_bone_quaternions", "bone_quaternions_to_pose_code",
    "blender_camera_to_cv", "cv_to_blender_camera", "blender_intrinsics", "orbit_camera_cv",
    "projection_to_intrinsics", "lens_for_fov", "bone_matrices_to_pose_code",
    "square_render_plan", "resize_bilinear", "srgb_to_linear", "linear_to_srgb",
    "official_keyframes_to_pose_code", "interpolate_keyframes", "official_keyframes_to_bone_quaternions",
]

#: SMPL (Y-up) -> Blender (Z-up) change of basis, Rx(+90°).
C = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
#: Blender world -> SMPL world, homogeneous.
W = np.eye(4)
W[:3, :3] = C.T
#: OpenGL/Blender camera axes (x right, y up, looking down -z) <-> OpenCV axes (x right, y down, z forward).
F = np.diag([1.0, -1.0, -1.0, 1.0])

_EPS = 1e-12


# --------------------------------------------------------------------------------------------- points / frames
def smpl_to_blender_points(p: np.ndarray) -> np.ndarray:
    """[..., 3] SMPL-axis points -> Blender axes: (x, y, z) -> (x, -z, y)."""
    p = np.asarray(p, dtype=np.float64)
    return p @ C.T


def blender_to_smpl_points(p: np.ndarray) -> np.ndarray:
    """[..., 3] Blender-axis points -> SMPL axes: (x, y, z) -> (x, z, -y)."""
    p = np.asarray(p, dtype=np.float64)
    return p @ C


def smpl_to_blender_rotation(R: np.ndarray) -> np.ndarray:
    """[..., 3, 3] rotation in SMPL axes -> the same rotation in Blender axes, ``C R Cᵀ``."""
    return C @ np.asarray(R, dtype=np.float64) @ C.T


def blender_to_smpl_rotation(R: np.ndarray) -> np.ndarray:
    """Inverse of :func:`smpl_to_blender_rotation`, ``Cᵀ R C``."""
    return C.T @ np.asarray(R, dtype=np.float64) @ C


# --------------------------------------------------------------------------------------------- rotations
def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """Axis-angle [..., 3] (direction = axis, norm = angle, radians) -> rotation matrix [..., 3, 3] (Rodrigues)."""
    aa = np.asarray(aa, dtype=np.float64)
    theta = np.linalg.norm(aa, axis=-1)[..., None, None]
    x, y, z = aa[..., 0], aa[..., 1], aa[..., 2]
    o = np.zeros_like(x)
    K = np.stack([o, -z, y, z, o, -x, -y, x, o], axis=-1).reshape(*aa.shape[:-1], 3, 3)
    small = theta < 1e-6
    t = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta**2 / 6.0, np.sin(t) / t)
    b = np.where(small, 0.5 - theta**2 / 24.0, (1.0 - np.cos(t)) / (t * t))
    return np.eye(3) + a * K + b * (K @ K)


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrix [..., 3, 3] -> unit quaternion (w, x, y, z) [..., 4] with w >= 0 (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    cand = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = np.argmax(cand, axis=-1)
    s = np.sqrt(np.maximum(np.take_along_axis(cand, best[..., None], -1)[..., 0], _EPS)) * 2.0  # 4 * |component|
    r21, r12 = R[..., 2, 1], R[..., 1, 2]
    r02, r20 = R[..., 0, 2], R[..., 2, 0]
    r10, r01 = R[..., 1, 0], R[..., 0, 1]
    q = np.stack([
        np.stack([s / 4, (r21 - r12) / s, (r02 - r20) / s, (r10 - r01) / s], -1),
        np.stack([(r21 - r12) / s, s / 4, (r01 + r10) / s, (r02 + r20) / s], -1),
        np.stack([(r02 - r20) / s, (r01 + r10) / s, s / 4, (r12 + r21) / s], -1),
        np.stack([(r10 - r01) / s, (r02 + r20) / s, (r12 + r21) / s, s / 4], -1),
    ], -2)
    q = np.take_along_axis(q, best[..., None, None].repeat(4, -1), -2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Quaternion (w, x, y, z) [..., 4] (normalised here) -> rotation matrix [..., 3, 3]."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), _EPS)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_axis_angle(R: np.ndarray) -> np.ndarray:
    """Rotation matrix [..., 3, 3] -> axis-angle [..., 3] with angle in [0, π]."""
    q = matrix_to_quaternion(R)  # w >= 0, so the angle is in [0, pi]
    v = q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., :1])
    # angle / sin(angle / 2), with its limit 2 at zero
    factor = np.where(s < 1e-8, 2.0 / np.maximum(q[..., :1], _EPS), angle / np.maximum(s, _EPS))
    return v * factor


def _rot(axis: int, a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, i = np.zeros_like(a), np.ones_like(a)
    if axis == 0:
        m = [i, o, o, o, c, -s, o, s, c]
    elif axis == 1:
        m = [c, o, s, o, i, o, -s, o, c]
    else:
        m = [c, -s, o, s, c, o, o, o, i]
    return np.stack(m, -1).reshape(*a.shape, 3, 3)


def euler_zyx_to_matrix(e: np.ndarray) -> np.ndarray:
    """ZYX Euler [..., 3] (e0, e1, e2) -> ``Rz(e0) @ Ry(e1) @ Rx(e2)`` (the official AniPortraitGAN format)."""
    e = np.asarray(e, dtype=np.float64)
    return _rot(2, e[..., 0]) @ _rot(1, e[..., 1]) @ _rot(0, e[..., 2])


def matrix_to_euler_zyx(R: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_zyx_to_matrix` with e1 in [-π/2, π/2]."""
    R = np.asarray(R, dtype=np.float64)
    e1 = np.arcsin(np.clip(-R[..., 2, 0], -1.0, 1.0))
    e0 = np.arctan2(R[..., 1, 0], R[..., 0, 0])
    e2 = np.arctan2(R[..., 2, 1], R[..., 2, 2])
    return np.stack([e0, e1, e2], -1)


def continuous_quaternions(q: np.ndarray, axis: int = 0) -> np.ndarray:
    """Flip signs along ``axis`` (time) so consecutive quaternions have a non-negative dot product.

    Blender interpolates quaternion F-curves per channel, so keys must not jump between q and -q.
    """
    q = np.array(q, dtype=np.float64, copy=True)
    q = np.moveaxis(q, axis, 0)
    for t in range(1, q.shape[0]):
        flip = (q[t] * q[t - 1]).sum(-1, keepdims=True) < 0
        q[t] = np.where(flip, -q[t], q[t])
    return np.moveaxis(q, 0, axis)


# --------------------------------------------------------------------------------------------- bones <-> pose code
def pose_code_to_bone_quaternions(pose: np.ndarray, rest_rotations: np.ndarray) -> np.ndarray:
    """Pose code axis-angle [..., J, 3] (SMPL axes, canonical-relative) -> bone quaternions [..., J, 4].

    ``rest_rotations`` [J, 3, 3] are the bones' rest orientations in armature space
    (``bone.matrix_local.to_3x3()``). ``q = quat(R_restᵀ · C R Cᵀ · R_rest)``.
    """
    R_rest = np.asarray(rest_rotations, dtype=np.float64)
    R = axis_angle_to_matrix(pose)
    local = np.swapaxes(R_rest, -1, -2) @ smpl_to_blender_rotation(R) @ R_rest
    return matrix_to_quaternion(local)


def bone_quaternions_to_pose_code(quats: np.ndarray, rest_rotations: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pose_code_to_bone_quaternions`: bone quaternions [..., J, 4] -> axis-angle [..., J, 3]."""
    R_rest = np.asarray(rest_rotations, dtype=np.float64)
    basis = quaternion_to_matrix(quats)
    R_b = R_rest @ basis @ np.swapaxes(R_rest, -1, -2)
    return matrix_to_axis_angle(blender_to_smpl_rotation(R_b))


def bone_matrices_to_pose_code(basis: np.ndarray, rest_rotations: np.ndarray) -> np.ndarray:
    """Pose-bone ``matrix_basis`` [..., J, 4, 4] or [..., J, 3, 3] -> pose code [..., J, 3] (rotation part only)."""
    basis = np.asarray(basis, dtype=np.float64)[..., :3, :3]
    # matrix_basis may carry scale; orthonormalise via the quaternion of the normalised columns
    basis = basis / np.maximum(np.linalg.norm(basis, axis=-2, keepdims=True), _EPS)
    R_rest = np.asarray(rest_rotations, dtype=np.float64)
    R_b = R_rest @ basis @ np.swapaxes(R_rest, -1, -2)
    return matrix_to_axis_angle(blender_to_smpl_rotation(R_b))


# --------------------------------------------------------------------------------------------- cameras
def _orthonormal(M: np.ndarray) -> np.ndarray:
    """Remove scale from the 3×3 part of a 4×4 affine (keeps translation)."""
    M = np.array(M, dtype=np.float64, copy=True)
    R = M[..., :3, :3]
    M[..., :3, :3] = R / np.maximum(np.linalg.norm(R, axis=-2, keepdims=True), _EPS)
    return M


def blender_camera_to_cv(camera_world: np.ndarray, rig_world: np.ndarray | None = None) -> np.ndarray:
    """Blender camera ``matrix_world`` [..., 4, 4] -> OpenCV cam2world [..., 4, 4] in the rig's canonical frame.

    ``rig_world`` is the armature object's ``matrix_world`` (default identity: the rig at the world origin). Any
    rig transform is taken into account (a uniformly scaled rig is equivalent to a camera moved by the inverse
    scale); camera scale is ignored.
    """
    M = _orthonormal(camera_world)
    if rig_world is not None:
        M = np.linalg.inv(np.asarray(rig_world, dtype=np.float64)) @ M
        # a scaled rig leaves scale on the camera axes: renormalise, keep the (rig-space) position
        M = _orthonormal(M)
    return W @ M @ F


def cv_to_blender_camera(cam2world: np.ndarray, rig_world: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`blender_camera_to_cv`: OpenCV cam2world [..., 4, 4] -> Blender camera ``matrix_world``."""
    M = np.linalg.inv(W) @ np.asarray(cam2world, dtype=np.float64) @ F
    if rig_world is not None:
        M = _orthonormal(np.asarray(rig_world, dtype=np.float64) @ M)
    return M


def blender_intrinsics(lens: float, sensor_width: float, sensor_height: float, sensor_fit: str,
                       width: int, height: int, shift_x: float = 0.0, shift_y: float = 0.0,
                       pixel_aspect: float = 1.0) -> np.ndarray:
    """Blender perspective camera data + render size -> normalised OpenCV intrinsics [3, 3].

    ``sensor_fit`` is 'AUTO' (the sensor width spans the larger image dimension), 'HORIZONTAL' (sensor width
    spans the width) or 'VERTICAL' (sensor height spans the height). Shifts are in units of the fitted
    dimension, as in Blender. Only square pixels (``pixel_aspect`` 1) are supported.
    """
    if abs(pixel_aspect - 1.0) > 1e-6:
        raise ValueError(f"non-square pixels are not supported (pixel aspect {pixel_aspect:g})")
    if lens <= 0 or width <= 0 or height <= 0:
        raise ValueError("lens and image size must be positive")
    fit = sensor_fit.upper()
    if fit == "AUTO":
        fit = "HORIZONTAL" if width >= height else "VERTICAL"
        sensor = sensor_width
    else:
        sensor = sensor_width if fit == "HORIZONTAL" else sensor_height
    fitted_px = width if fit == "HORIZONTAL" else height
    f_px = lens / sensor * fitted_px
    cx_px = width / 2.0 - shift_x * fitted_px
    cy_px = height / 2.0 + shift_y * fitted_px
    return np.array([[f_px / width, 0.0, cx_px / width], [0.0, f_px / height, cy_px / height], [0.0, 0.0, 1.0]])


def projection_to_intrinsics(window_matrix: np.ndarray) -> np.ndarray:
    """OpenGL perspective projection (Blender's ``region_3d.window_matrix`` or ``Object.calc_matrix_camera``)
    -> normalised OpenCV intrinsics [3, 3] for the same view. Orthographic projections raise ValueError."""
    P = np.asarray(window_matrix, dtype=np.float64)
    if abs(P[3, 3]) > 1e-9 or abs(P[3, 2] + 1.0) > 1e-6:
        raise ValueError("the view is orthographic; the neural renderer needs a perspective view")
    return np.array([[P[0, 0] / 2.0, 0.0, 0.5 - P[0, 2] / 2.0],
                     [0.0, P[1, 1] / 2.0, 0.5 + P[1, 2] / 2.0],
                     [0.0, 0.0, 1.0]])


def lens_for_fov(fov_deg: float, sensor_width: float = 36.0) -> float:
    """Focal length (mm) giving a full field of view ``fov_deg`` across ``sensor_width`` (square image)."""
    return sensor_width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


def orbit_camera_cv(yaw: float, pitch: float, radius: float, look_at: Sequence[float]) -> np.ndarray:
    """Orbit camera (Busto convention: pitch = polar angle from +Y, yaw = azimuth) -> OpenCV cam2world [4, 4].

    ``origin = look_at + r (sin p cos y, cos p, sin p sin y)``, looking at ``look_at`` with up = +Y; the frontal
    camera (π/2, π/2) sits on +Z looking down -Z. Same closed form as ``portrait_core.geometry.camera``.
    """
    sp, cp, sy, cy = math.sin(pitch), math.cos(pitch), math.sin(yaw), math.cos(yaw)
    back = np.array([sp * cy, cp, sp * sy])
    R = np.stack([np.array([sy, 0.0, -cy]), np.array([cp * cy, -sp, cp * sy]), -back], axis=-1)
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = np.asarray(look_at, dtype=np.float64) + radius * back
    return M


def square_render_plan(K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Fit a (width × height) view into a square render the generator can produce.

    Returns ``(K_square, size, (row0, col0))``: normalised intrinsics for a ``size × size`` image
    (``size = max(width, height)``) whose crop ``[row0:row0+height, col0:col0+width]`` is exactly the requested
    view (same pixel focal length and principal point).
    """
    K = np.asarray(K, dtype=np.float64)
    size = max(width, height)
    col0, row0 = (size - width) // 2, (size - height) // 2
    fx, fy = K[0, 0] * width, K[1, 1] * height
    cx, cy = K[0, 2] * width + col0, K[1, 2] * height + row0
    Ks = np.array([[fx / size, 0.0, cx / size], [0.0, fy / size, cy / size], [0.0, 0.0, 1.0]])
    return Ks, size, (row0, col0)


# --------------------------------------------------------------------------------------------- images
def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize [H, W, C] (top-down) to [height, width, C] with bilinear weights and pixel-centre alignment.

    Downscaling by more than 2× first box-averages by the integer factor, so thin features do not alias away.
    """
    img = np.asarray(img, dtype=np.float32)
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img.copy()
    fy, fx = h // height, w // width
    if fy >= 2 and fx >= 2 and h % fy == 0 and w % fx == 0:
        img = img.reshape(h // fy, fy, w // fx, fx, -1).mean(axis=(1, 3))
        h, w = img.shape[:2]
        if (h, w) == (height, width):
            return img

    def coords(n_out: int, n_in: int):
        x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0, n_in - 1)
        i0 = np.floor(x).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (x - i0).astype(np.float32)

    r0, r1, ry = coords(height, h)
    c0, c1, rx = coords(width, w)
    top = img[r0][:, c0] * (1 - rx)[None, :, None] + img[r0][:, c1] * rx[None, :, None]
    bot = img[r1][:, c0] * (1 - rx)[None, :, None] + img[r1][:, c1] * rx[None, :, None]
    return top * (1 - ry)[:, None, None] + bot * ry[:, None, None]


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear (IEC 61966-2-1 piecewise curve)."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear values in [0, 1] -> sRGB-encoded (inverse of :func:`srgb_to_linear`)."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


# --------------------------------------------------------------------------------------------- keyframes
def official_keyframes_to_pose_code(joint_eulers: np.ndarray) -> np.ndarray:
    """Official AniPortraitGAN keyframes [..., 6, 3] (ZYX Euler per pose joint, canonical-relative) -> pose code
    axis-angle [..., 6, 3]."""
    e = np.asarray(joint_eulers, dtype=np.float64)
    if e.ndim < 2 or e.shape[-2:] != (6, 3):
        raise ValueError(f"official pose keyframes must be [N, 6, 3] (ZYX Eulers of joints 12..17), got {e.shape}")
    return matrix_to_axis_angle(euler_zyx_to_matrix(e))


def interpolate_keyframes(values: np.ndarray, n_interval: int, loop: bool = False) -> np.ndarray:
    """Linearly interpolate keyframes [K, ...] over ``n_interval`` frames each, as the official video script.

    Returns [(K - 1) * n_interval + 1, ...] frames (or ``K * n_interval`` when ``loop`` returns to keyframe 0).
    """
    v = np.asarray(values, dtype=np.float64)
    if n_interval < 1:
        raise ValueError("n_interval must be >= 1")
    if loop:
        v = np.concatenate([v, v[:1]], axis=0)
    k = v.shape[0]
    if k == 1:
        return v.copy()
    t = np.arange((k - 1) * n_interval + 1) / n_interval
    i0 = np.minimum(np.floor(t).astype(np.int64), k - 2)
    a = (t - i0).reshape(-1, *([1] * (v.ndim - 1)))
    out = v[i0] * (1 - a) + v[i0 + 1] * a
    return out[:-1] if loop else out


def official_keyframes_to_bone_quaternions(joint_eulers: np.ndarray, rest_rotations: np.ndarray) -> np.ndarray:
    """Official keyframes [N, 6, 3] -> per-frame, sign-continuous bone quaternions [N, 6, 4] for a rig whose six
    pose bones have rest orientations ``rest_rotations`` [6, 3, 3]."""
    pose = official_keyframes_to_pose_code(joint_eulers)
    return continuous_quaternions(pose_code_to_bone_quaternions(pose, rest_rotations), axis=0)
