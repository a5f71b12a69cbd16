"""Shared constants: joints, canonical pose, camera and normalisation numbers (see docs/CONVENTIONS.md).

World = the SMPL frame: right-handed, +Y up, the subject faces +Z, the subject's left is +X, metres.
Canonical and observed space share that frame with the origin at the identity's canonical neck joint
(SMPL joint 12); the neck joint does not move under the pose code, so observed space keeps that origin.
"""

from __future__ import annotations

import math

# --- SMPL skeleton -------------------------------------------------------------------------------------
NUM_JOINTS = 24
SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)
SMPL_PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

#: The six joints driven by the pose code, in pose-code order (neck, L/R collar, head, L/R shoulder).
POSE_JOINTS: tuple[int, ...] = (12, 13, 14, 15, 16, 17)
POSE_JOINT_NAMES: tuple[str, ...] = tuple(SMPL_JOINT_NAMES[j] for j in POSE_JOINTS)
NECK, LEFT_COLLAR, RIGHT_COLLAR, HEAD, LEFT_SHOULDER, RIGHT_SHOULDER = POSE_JOINTS
#: Joints of the upper-body chain exported as a skeleton (pelvis to head, collars, shoulders, elbows).
UPPER_BODY_CHAIN: tuple[int, ...] = (0, 3, 6, 9, 12, 13, 14, 15, 16, 17, 18, 19)

#: Canonical "mean pose" adjustments, ZYX Euler (R = Rz(e0) Ry(e1) Rx(e2)), radians, per SMPL joint.
#: Joints not listed stay at SMPL rest. The local rotation of a posed joint is R(pose) @ R_adjust.
CANONICAL_ADJUST_EULER_ZYX: dict[int, tuple[float, float, float]] = {
    HEAD: (0.0, 0.0, 0.15536945),
    LEFT_SHOULDER: (-1.05, 0.0, 0.13),
    RIGHT_SHOULDER: (1.05, 0.0, 0.13),
}

# --- Control dimensions ----------------------------------------------------------------------------------
POSE_SHAPE = (6, 3)
EXPRESSION_DIM = 64
IDENTITY_DIM = 80
BODY_SHAPE_DIM = 10
NOISE_DIM = 80

# --- Official AniPortraitGAN normalisation (metres <-> network units) -------------------------------------
#: v_n = ((v - J12) / 2.2314079 - (0, 0.067489409707008, 0.050608165033568)) / 0.52767998683149
OFFICIAL_SCALE_1 = 2.2314079
OFFICIAL_SHIFT = (0.0, 0.067489409707008, 0.050608165033568)
OFFICIAL_FACE_RADIUS = 0.52767998683149
#: One official normalised unit in metres (2.2314079 * 0.52768 = 1.1775 m).
UNIT_METRES = OFFICIAL_SCALE_1 * OFFICIAL_FACE_RADIUS
#: Face centre (the 3DMM origin) in canonical space for mean body shape, metres from the neck joint.
FACE_CENTRE = tuple(OFFICIAL_SCALE_1 * s for s in OFFICIAL_SHIFT)  # (0, 0.1506, 0.1129)

# --- Cameras (metres, canonical frame) -------------------------------------------------------------------
FRONTAL_PITCH = math.pi / 2
FRONTAL_YAW = math.pi / 2
#: Portrait camera: orbits PORTRAIT_LOOK_AT at PORTRAIT_RADIUS with a 12 degree field of view.
PORTRAIT_FOV_DEG = 12.0
PORTRAIT_RADIUS = (1.0 / OFFICIAL_FACE_RADIUS) * UNIT_METRES  # 2.2314 m
_ORIGIN_OFFSET_UNITS = (0.0, -0.018308, -0.095907)
PORTRAIT_LOOK_AT = tuple(FACE_CENTRE[i] + _ORIGIN_OFFSET_UNITS[i] * UNIT_METRES for i in range(3))  # (0, 0.129, 0)
#: Half-depth of the portrait's sampling interval around the look-at point (official r -/+ 0.22 units).
PORTRAIT_DEPTH_HALF_RANGE = 0.22 * UNIT_METRES
#: Face camera: orbits the posed face centre, follows the head, fov 12 degrees, radius 1 unit.
FACE_FOV_DEG = 12.0
FACE_RADIUS = 1.0 * UNIT_METRES
FACE_DEPTH_HALF_RANGE = 0.12 * UNIT_METRES

# --- Images ----------------------------------------------------------------------------------------------
BACKGROUND = 1.0  # white, in [0, 1]
