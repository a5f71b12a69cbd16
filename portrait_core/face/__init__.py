"""3DMM face model: BFM09 (Deep3DFaceRecon ``BFM_model_front.mat`` layout) loader, embedded synthetic 3DMM, FaceModel.

Face frame: metres (BFM decimetres x 0.1), origin at the mean-shape centroid, SMPL axes (+Y up, face toward +Z).
See docs/face.md.
"""

from .io import BFM_KEYS, BFMFormatError, load_bfm_mat, save_bfm_mat, validate_bfm
from .model import FaceModel, project_deep3d
from .synthetic import EXPRESSION_NAMES, build_synthetic_bfm, fingerprint

__all__ = [
    "BFM_KEYS",
    "BFMFormatError",
    "EXPRESSION_NAMES",
    "FaceModel",
    "build_synthetic_bfm",
    "fingerprint",
    "load_bfm_mat",
    "project_deep3d",
    "save_bfm_mat",
    "validate_bfm",
]
