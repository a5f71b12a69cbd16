"""Left-right mirroring of labels, matching a horizontally flipped image (x -> -x in the SMPL/canonical frame).

* camera (25 floats): ``Camera.mirror`` — cam2world' = S cam2world S with S = diag(-1, 1, 1, 1), cx -> 1 - cx
  (3DPortraitGAN's flip rule);
* pose [6, 3] axis-angle: a rotation mirrors as S R S, i.e. the axis-angle (x, y, z) -> (x, -y, -z); and the
  left/right joints swap (13 <-> 14 collars, 16 <-> 17 shoulders). The canonical adjust rotations of 16/17 are
  mirror images of each other, so the canonical-relative code mirrors by the same rule;
* expression [64] / identity [80]: a linear map M with mirror(face(c)) ~= face(M c), computed from the 3DMM basis:
  mirror each basis field (x -> -x on the offsets, vertex i takes the field of its mirror vertex, found by nearest
  neighbour on the mean shape) and least-squares fit M. For the synthetic 3DMM (symmetric by construction) M is a
  signed permutation up to rounding; for BFM09 (PCA modes, not exactly symmetric) it is the best linear
  approximation, and the residual is reported by :func:`mirror_matrices`.
* body shape (SMPL betas): unchanged (the SMPL shape space is treated as symmetric).
"""

from __future__ import annotations

import numpy as np

#: pose-code row permutation under mirroring (neck, L-collar, R-collar, head, L-shoulder, R-shoulder)
POSE_ROW_SWAP = (0, 2, 1, 3, 5, 4)
#: iBUG-68 landmark index of the mirror partner (for projected-landmark checks of mirrored labels)
IBUG68_MIRROR = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 16, -1))  # brows
    + [27, 28, 29, 30]  # nose bridge
    + [35, 34, 33, 32, 31]  # nose base
    + [45, 44, 43, 42, 47, 46]  # right eye <- left eye
    + [39, 38, 37, 36, 41, 40]  # left eye <- right eye
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65]  # inner lips
)


def mirror_pose(pose: np.ndarray) -> np.ndarray:
    """[..., 6, 3] canonical-relative axis-angle -> mirrored (negate y, z; swap 13<->14 and 16<->17)."""
    p = np.asarray(pose)
    out = p[..., list(POSE_ROW_SWAP), :].copy()
    out[..., 1:] *= -1
    return out


def mirror_camera25(label: np.ndarray) -> np.ndarray:
    """[..., 25] camera label -> mirrored: negate cam2world entries (0,1), (0,2), (0,3), (1,0), (2,0); cx -> 1 - cx.

    Same rule as ``Camera.mirror`` (numpy, no torch; tests check they agree).
    """
    lab = np.array(label, dtype=np.float64, copy=True)
    for r, c in ((0, 1), (0, 2), (0, 3), (1, 0), (2, 0)):
        lab[..., r * 4 + c] *= -1
    lab[..., 16 + 1] *= -1  # skew
    lab[..., 16 + 2] = lab[..., 16 + 8] - lab[..., 16 + 2]  # cx -> 1 - cx (K[2,2] = 1)
    return lab


def _mirror_basis(mean: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, float]:
    """mean [N, 3], basis [N, 3, K] -> least-squares M [K, K] with mirror(basis) ~= basis @ M, and the relative
    residual of the fit."""
    from scipy.spatial import cKDTree

    mirrored_mean = mean * np.array([-1.0, 1.0, 1.0])
    _, partner = cKDTree(mean).query(mirrored_mean)
    mb = basis[partner] * np.array([-1.0, 1.0, 1.0])[None, :, None]
    A = basis.reshape(-1, basis.shape[-1])
    B = mb.reshape(-1, basis.shape[-1])
    M, *_ = np.linalg.lstsq(A, B, rcond=None)
    resid = float(np.linalg.norm(A @ M - B) / max(np.linalg.norm(B), 1e-12))
    return M, resid


def mirror_matrices(face_model) -> dict[str, np.ndarray | float]:
    """{'expression': [64, 64], 'identity': [80, 80], 'expression_residual', 'identity_residual'} for a FaceModel.

    Coefficients mirror as ``c' = M @ c`` (M = lstsq solution transposed into column-vector form).
    """
    import torch

    with torch.no_grad():
        mean = face_model.mean_shape.double().numpy()
        N = mean.shape[0]
        ex = face_model.ex_base.double().numpy().reshape(N, 3, -1)
        idb = face_model.id_base.double().numpy().reshape(N, 3, -1)
    Me, re = _mirror_basis(mean, ex)
    Mi, ri = _mirror_basis(mean, idb)
    # basis @ c mirrored = mirror(basis) @ c = basis @ (M c)  -> coefficient map is M (K x K) acting on c
    return {"expression": Me, "identity": Mi, "expression_residual": re, "identity_residual": ri}
