"""Constants shared by the add-on's modules (no bpy). The values mirror ``portrait_core.conventions`` and
``portrait_core.face.EXPRESSION_NAMES``; tests/blender_addon/test_convert.py checks that they agree, because the
add-on must register in a Blender that cannot import portrait_core (no torch)."""

from __future__ import annotations

ENGINE_ID = "BUSTO_NEURAL"
ENGINE_LABEL = "Busto Neural"

EXPRESSION_DIM = 64
BODY_SHAPE_DIM = 10

#: SMPL joint names by id (portrait_core.conventions.SMPL_JOINT_NAMES).
SMPL_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
#: Pose-code joints in pose-code order (neck, left collar, right collar, head, left shoulder, right shoulder).
POSE_JOINTS = (12, 13, 14, 15, 16, 17)
POSE_BONES = tuple(SMPL_JOINT_NAMES[j] for j in POSE_JOINTS)
#: The skeleton built in Blender (portrait_core.conventions.UPPER_BODY_CHAIN), parents before children.
RIG_JOINTS = (0, 3, 6, 9, 12, 13, 14, 15, 16, 17, 18, 19)

#: Named expression sliders -> expression component (portrait_core.face.EXPRESSION_NAMES). They name directions of
#: Busto's synthetic 3DMM; with the real BFM09 basis they are its leading PCA components.
EXPRESSION_SLIDERS = {
    "jaw_open": 0,
    "smile": 1,
    "brow_raise": 2,
    "blink": 3,
    "pucker": 4,
    "frown": 5,
    "brow_furrow": 6,
    "cheek_puff": 7,
}

#: Canonical face centre (metres, canonical frame) and face-camera numbers (portrait_core.conventions).
FACE_CENTRE = (0.0, 2.2314079 * 0.067489409707008, 2.2314079 * 0.050608165033568)
UNIT_METRES = 2.2314079 * 0.52767998683149
PORTRAIT_RADIUS = UNIT_METRES / 0.52767998683149
PORTRAIT_LOOK_AT = (0.0, FACE_CENTRE[1] - 0.018308 * UNIT_METRES, FACE_CENTRE[2] - 0.095907 * UNIT_METRES)
PORTRAIT_FOV_DEG = 12.0
FACE_RADIUS = UNIT_METRES
FACE_FOV_DEG = 12.0
