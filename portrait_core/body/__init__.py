"""SMPL-format body model: safe loading (io), the embedded synthetic model (synthetic), BodyModel (model).

See docs/body.md. Positions are metres in the canonical frame (origin at the canonical neck joint J12).
"""

from .io import RestrictedUnpickler, SMPLFileError, load_smpl_file, save_smpl_npz, validate_smpl_dict
from .model import UPPER_BODY_JOINTS, BodyModel, BodyState
from .synthetic import build_synthetic_smpl, write_synthetic_pkl

__all__ = [
    "BodyModel",
    "BodyState",
    "RestrictedUnpickler",
    "SMPLFileError",
    "UPPER_BODY_JOINTS",
    "build_synthetic_smpl",
    "load_smpl_file",
    "save_smpl_npz",
    "validate_smpl_dict",
    "write_synthetic_pkl",
]
