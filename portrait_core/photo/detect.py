"""Face detection, face-mesh and pose landmarks, and the selfie matte with mediapipe 0.10.21 (the ``photo`` extra).

The models ship inside the mediapipe wheel (nothing is downloaded): face detection (full range, then short range),
the 478-point face mesh (with irises), pose landmarks at complexity 1 (complexity 2 would download a model) and
selfie segmentation (the general 256x256 model). Images are uint8 RGB [H, W, 3]; landmarks come back in the
image's continuous pixel coordinates (pixel j spans [j, j + 1]).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass

import numpy as np

#: mediapipe face-mesh index of each iBUG-68 landmark (jaw 0-16 from the subject's right, brows 17-26, nose
#: 27-35, eyes 36-47 starting at the right eye's outer corner, outer lips 48-59 from the right corner, inner lips
#: 60-67), chosen on the canonical face mesh; mirror pairs map to mirror pairs (tested).
MP_TO_IBUG68: tuple[int, ...] = (
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,  # jaw
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # brows (right outer -> inner, left inner -> outer)
    168, 197, 5, 4, 98, 97, 2, 326, 327,  # nose bridge (top -> tip), base (right -> left)
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,  # outer lips
    78, 81, 13, 311, 308, 402, 14, 178,  # inner lips
)
#: mediapipe pose landmark ids of the subject's left and right shoulder
POSE_LEFT_SHOULDER, POSE_RIGHT_SHOULDER = 11, 12
MIN_VISIBILITY = 0.5


@dataclass
class FaceBox:
    """A detected face: box (x0, y0, x1, y1) in pixels and the detector's score."""

    box: tuple[float, float, float, float]
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def area(self) -> float:
        return max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0)


@contextlib.contextmanager
def _quiet():
    """Silence the C++ log lines mediapipe writes to file descriptor 2 while building and running graphs."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def mediapipe_module():
    """``mediapipe.solutions``, or an ImportError saying how to install it."""
    try:
        with _quiet():
            import mediapipe as mp
    except ImportError as e:
        raise ImportError("prepare needs mediapipe 0.10.21: pip install -c constraints.txt -e '.[photo]' "
                          f"({e})") from None
    return mp.solutions


@functools.lru_cache(maxsize=1)
def _models():
    sol = mediapipe_module()
    with _quiet():
        return {
            "detect_full": sol.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5),
            "detect_short": sol.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5),
            "mesh": sol.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                           min_detection_confidence=0.3),
            "pose": sol.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False,
                                  min_detection_confidence=0.3),
            "selfie": sol.selfie_segmentation.SelfieSegmentation(model_selection=0),
        }


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


def _nms(boxes: list[FaceBox], iou: float = 0.3) -> list[FaceBox]:
    out: list[FaceBox] = []
    for b in sorted(boxes, key=lambda b: -b.score):
        keep = True
        for o in out:
            x0, y0 = max(b.box[0], o.box[0]), max(b.box[1], o.box[1])
            x1, y1 = min(b.box[2], o.box[2]), min(b.box[3], o.box[3])
            inter = max(x1 - x0, 0) * max(y1 - y0, 0)
            if inter / max(b.area + o.area - inter, 1e-9) > iou:
                keep = False
                break
        if keep:
            out.append(b)
    return out


def detect_faces(image: np.ndarray) -> list[FaceBox]:
    """Faces in ``image`` (both detectors, non-maximum suppressed), largest first."""
    H, W = image.shape[:2]
    m = _models()
    boxes = []
    with _quiet():
        for key in ("detect_full", "detect_short"):
            res = m[key].process(_rgb(image))
            for d in res.detections or ():
                bb = d.location_data.relative_bounding_box
                boxes.append(FaceBox((bb.xmin * W, bb.ymin * H, (bb.xmin + bb.width) * W, (bb.ymin + bb.height) * H),
                                     float(d.score[0])))
    return sorted(_nms(boxes), key=lambda b: -b.area)


def face_mesh(image: np.ndarray) -> np.ndarray | None:
    """The 478 face-mesh landmarks [478, 3] of the most prominent face (x, y pixels; z depth in pixels), or None."""
    H, W = image.shape[:2]
    with _quiet():
        res = _models()["mesh"].process(_rgb(image))
    if not res.multi_face_landmarks:
        return None
    pts = res.multi_face_landmarks[0].landmark
    return np.array([(p.x * W, p.y * H, p.z * W) for p in pts], dtype=np.float64)


def pose_landmarks(image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The 33 pose landmarks [33, 3] (x, y pixels; z depth in pixels) and their visibility [33], or None."""
    H, W = image.shape[:2]
    with _quiet():
        res = _models()["pose"].process(_rgb(image))
    if res.pose_landmarks is None:
        return None
    pts = res.pose_landmarks.landmark
    xyz = np.array([(p.x * W, p.y * H, p.z * W) for p in pts], dtype=np.float64)
    return xyz, np.array([p.visibility for p in pts], dtype=np.float64)


def selfie_matte(image: np.ndarray) -> np.ndarray:
    """Foreground probability [H, W] float32 in 0..1 (mediapipe selfie segmentation)."""
    with _quiet():
        res = _models()["selfie"].process(_rgb(image))
    return np.clip(np.asarray(res.segmentation_mask, dtype=np.float32), 0.0, 1.0)
