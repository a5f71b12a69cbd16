"""A procedural, deterministic SMPL-format neutral upper body (no licensed data).

The model has exactly the layout of an official SMPL file (the 7 keys smplx reads): 24 joints with the SMPL
kinematic tree, ``v_template`` in the SMPL rest pose (T-pose), metres, +Y up, the subject faces +Z and its left
is +X. Only the head, neck, shoulders, upper arms (to about the elbow) and chest (cut at chest height) exist;
the leg, wrist and hand joints lie outside the mesh and are reproduced by the regressor all the same.

Construction (see docs/body.md):
  * a signed-distance union (smooth-min) of head ellipsoids (cranium, jaw, nose, ears), a neck capsule, a torso
    ellipsoid, a shoulder capsule and two upper-arm capsules, cut flat at chest height and near the elbows;
  * marching cubes on the x >= 0 half of a 12 mm grid, mirrored across x = 0 and welded on the seam, so the mesh
    is exactly left/right symmetric (no decimation);
  * skinning weights: soft-min over distances to bone segments (minus a per-bone radius);
  * 10 shape directions, zero pose directions, and a csc ``J_regressor`` whose rows are affine vertex weights
    that reproduce every joint.

The head is modelled in the *canonical* frame (after the canonical head nod of ``CANONICAL_ADJUST_EULER_ZYX``)
so that the front of the head sits around z = 0.125 m at y = 0.15 m above the canonical neck joint, where the
face model's centroid (``FACE_CENTRE``) is placed.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from portrait_core.conventions import CANONICAL_ADJUST_EULER_ZYX, HEAD, NUM_JOINTS, SMPL_PARENTS

#: Bump when the construction changes (part of the cache file name).
SYNTHETIC_VERSION = 1
GRID_STEP = 0.012  # metres
CHEST_CUT_Y = -0.32  # metres below the neck joint
ARM_CUT_X = 0.45  # metres from the mid-plane
SMOOTH_K = 0.025  # smooth-min radius, metres
WEIGHT_WIDTH = 0.03  # blend width of the skinning weights' soft-min, metres

# --- joints (rest pose, metres, SMPL frame; roughly the SMPL neutral template, symmetrised) -----------------
_LEFT_JOINTS = {  # joint: (x, y, z) for the left side (and the mid-line)
    0: (0.0, -0.223, 0.028),
    1: (0.069, -0.314, 0.022),
    3: (0.0, -0.110, 0.000),
    4: (0.105, -0.695, 0.015),
    6: (0.0, 0.025, 0.012),
    7: (0.090, -1.105, -0.012),
    9: (0.0, 0.078, 0.030),
    10: (0.120, -1.160, 0.120),
    12: (0.0, 0.287, -0.015),
    13: (0.076, 0.188, -0.005),
    15: (0.0, 0.352, 0.015),  # neck + (0, 0.065, 0.03)
    16: (0.171, 0.228, -0.013),
    18: (0.428, 0.217, -0.034),
    20: (0.680, 0.221, -0.034),
    22: (0.769, 0.214, -0.047),
}
_MIRROR = {2: 1, 5: 4, 8: 7, 11: 10, 14: 13, 17: 16, 19: 18, 21: 20, 23: 22}


def synthetic_joints() -> np.ndarray:
    """The 24 rest joints [24, 3] (metres, SMPL frame), exactly mirror symmetric."""
    J = np.zeros((NUM_JOINTS, 3))
    for j, p in _LEFT_JOINTS.items():
        J[j] = p
    for right, left in _MIRROR.items():
        J[right] = J[left] * (-1.0, 1.0, 1.0)
    return J


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _head_nod() -> np.ndarray:
    """Canonical head adjust rotation (ZYX Euler of CANONICAL_ADJUST_EULER_ZYX[HEAD])."""
    e0, e1, e2 = CANONICAL_ADJUST_EULER_ZYX.get(HEAD, (0.0, 0.0, 0.0))
    cz, sz, cy, sy = np.cos(e0), np.sin(e0), np.cos(e1), np.sin(e1)
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1.0]])
    Ry = np.array([[cy, 0, sy], [0, 1.0, 0], [-sy, 0, cy]])
    return Rz @ Ry @ _rot_x(e2)


# --- signed distance primitives (numpy, points [..., 3]) ---------------------------------------------------
def _sd_ellipsoid(p: np.ndarray, c, r) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid (first-order, exact on the surface)."""
    r = np.asarray(r, float)
    q = (p - np.asarray(c, float)) / r
    k0 = np.linalg.norm(q, axis=-1)
    k1 = np.linalg.norm(q / r, axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def _seg_dist(p: np.ndarray, a, b) -> np.ndarray:
    """Distance from points [..., 3] to the segment a-b."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def _sd_capsule(p, a, b, ra, rb=None) -> np.ndarray:
    """Capsule from a to b with radius tapering linearly from ra to rb."""
    rb = ra if rb is None else rb
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip(((p - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    d = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)
    return d - (ra + (rb - ra) * t)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (union with a fillet of about k)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _head_local(p: np.ndarray, J: np.ndarray) -> np.ndarray:
    """Rest-pose points -> canonical head coordinates relative to the neck joint (head nod applied at J15)."""
    R = _head_nod()
    return (p - J[15]) @ R.T + (J[15] - J[12])


def _head_sdf(p: np.ndarray, J: np.ndarray) -> np.ndarray:
    """Head parts in canonical coordinates relative to the neck (metres)."""
    h = _head_local(p, J)
    hx = np.abs(h[..., :1])
    hs = np.concatenate([hx, h[..., 1:]], -1)
    d = _sd_ellipsoid(hs, (0, 0.145, 0.025), (0.078, 0.117, 0.100))  # cranium; front z = 0.125 at y = 0.145
    d = _smin(d, _sd_ellipsoid(hs, (0, 0.135, 0.075), (0.070, 0.070, 0.052)), 0.015)  # flatter face front
    d = _smin(d, _sd_ellipsoid(hs, (0, 0.080, 0.058), (0.056, 0.052, 0.062)), 0.02)  # jaw and chin
    d = _smin(d, _sd_ellipsoid(hs, (0, 0.142, 0.118), (0.012, 0.024, 0.018)), 0.008)  # nose (inside the 3DMM nose)
    d = _smin(d, _sd_ellipsoid(hs, (0.079, 0.135, 0.020), (0.014, 0.030, 0.020)), 0.006)  # ears
    return d


def _body_sdf(p: np.ndarray, J: np.ndarray) -> np.ndarray:
    """Signed distance (metres, negative inside) of the whole upper body at rest-pose points [..., 3]."""
    n = J[12]
    px = np.abs(p[..., :1])
    q = np.concatenate([px, p[..., 1:]], -1)  # symmetric by construction
    rel = q - n
    neck = _sd_capsule(rel, (0, -0.06, -0.005), (0, 0.10, 0.012), 0.056, 0.052)
    torso = _sd_ellipsoid(rel, (0, -0.24, 0.012), (0.178, 0.275, 0.112))
    shoulders = _sd_capsule(rel, (0.0, -0.075, -0.004), (J[16, 0] - 0.01, J[16, 1] - n[1] - 0.012, 0.0), 0.07, 0.058)
    elbow = J[18] - n
    arm = _sd_capsule(rel, (J[16, 0], J[16, 1] - n[1], J[16, 2] - n[2]), tuple(elbow + (0.05, 0, 0)), 0.052, 0.040)
    d = _smin(torso, shoulders, SMOOTH_K)
    d = _smin(d, arm, SMOOTH_K)
    d = _smin(d, neck, SMOOTH_K)
    d = _smin(d, _head_sdf(p, J), 0.018)
    d = np.maximum(d, CHEST_CUT_Y - rel[..., 1])  # flat chest cut
    d = np.maximum(d, px[..., 0] - ARM_CUT_X)  # flat cut near the elbows
    return d


# --- mesh ------------------------------------------------------------------------------------------------
def _half_mesh(J: np.ndarray):
    import mcubes

    h = GRID_STEP
    n = J[12]
    xs = np.arange(0.0, ARM_CUT_X + 3 * h, h)
    ys = n[1] + CHEST_CUT_Y - 2 * h + h * np.arange(int(np.ceil((0.32 + 0.30 + 4 * h) / h)) + 1)
    zs = n[2] - 0.17 + h * np.arange(int(np.ceil(0.37 / h)) + 1)
    P = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), -1)
    d = _body_sdf(P, J)
    # PyMCubes: vertices in index coordinates; we extract the level set of -d so the inside is positive
    v, f = mcubes.marching_cubes(-d, 0.0)
    v = np.stack([xs[0] + v[:, 0] * h, ys[0] + v[:, 1] * h, zs[0] + v[:, 2] * h], -1)
    return v, f.astype(np.int64)


def _mirror_weld(v: np.ndarray, f: np.ndarray):
    """Mirror a half mesh (x >= 0, open on x = 0) across x = 0 and weld the seam. Returns (v, f, mirror_index)."""
    on_seam = np.abs(v[:, 0]) < 1e-9
    v = v.copy()
    v[on_seam, 0] = 0.0
    n = len(v)
    off = np.where(~on_seam)[0]
    mirror_of = np.arange(n)
    mirror_of[off] = n + np.arange(len(off))
    vm = v[off] * (-1.0, 1.0, 1.0)
    V = np.concatenate([v, vm], 0)
    fm = mirror_of[f][:, ::-1]  # mirroring flips the winding
    F = np.concatenate([f, fm], 0)
    mirror = np.concatenate([mirror_of, off])  # vertex i <-> mirror[i]
    return V, F, mirror


def _orient_outward(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    signed_volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    return f if signed_volume > 0 else f[:, ::-1].copy()


# --- skinning -----------------------------------------------------------------------------------------------
def _part_sdfs(p: np.ndarray, J: np.ndarray) -> dict[str, np.ndarray]:
    """Signed distances to the body parts (the primitives of :func:`_body_sdf`), rest-pose points [..., 3]."""
    n = J[12]
    q = np.concatenate([np.abs(p[..., :1]), p[..., 1:]], -1)
    rel = q - n
    elbow = J[18] - n
    return {
        "head": _head_sdf(p, J),
        "neck": _sd_capsule(rel, (0, -0.06, -0.005), (0, 0.10, 0.012), 0.056, 0.052),
        "torso": np.minimum(
            _sd_ellipsoid(rel, (0, -0.24, 0.012), (0.178, 0.275, 0.112)),
            _sd_capsule(rel, (0.0, -0.075, -0.004), (J[16, 0] - 0.01, J[16, 1] - n[1] - 0.012, 0.0), 0.07, 0.058),
        ),
        "arm": _sd_capsule(
            rel, (J[16, 0], J[16, 1] - n[1], J[16, 2] - n[2]), tuple(elbow + (0.05, 0, 0)), 0.052, 0.040
        ),
    }


def _softmin(D: np.ndarray, width: float) -> np.ndarray:
    """Soft-min weights over the last axis with compact support: (1 - t)^3, t = (d - d_min) / width, clipped at 0.

    Entries more than ``width`` above the minimum get exactly zero weight, so single-bone regions are rigid.
    """
    t = np.clip((D - D.min(-1, keepdims=True)) / width, 0.0, 1.0)
    E = (1.0 - t) ** 3
    return E / E.sum(-1, keepdims=True)


def _skin_weights(v: np.ndarray, J: np.ndarray) -> np.ndarray:
    """Soft part membership (head -> J15, neck -> J12, torso -> spine2/spine3/collars, arm -> shoulder/elbow),
    split inside the torso and the arm by a soft-min over distances to the bone segments."""
    W = np.zeros((len(v), NUM_JOINTS))
    parts = _part_sdfs(v, J)
    names = ("head", "neck", "torso", "arm")
    M = _softmin(np.stack([parts[k] for k in names], -1), WEIGHT_WIDTH)
    W[:, 15] += M[:, 0]
    W[:, 12] += M[:, 1]
    # both sides' bones in one soft-min: the joints are exact mirror images, so the weights are mirror symmetric
    torso_j = (6, 9, 13, 14)
    torso_d = np.stack(
        [_seg_dist(v, J[6], J[9]), _seg_dist(v, J[9], J[12]), _seg_dist(v, J[13], J[16]), _seg_dist(v, J[14], J[17])],
        -1,
    )
    arm_j = (16, 17, 18, 19)
    arm_d = np.stack(
        [
            _seg_dist(v, J[16], J[18]),
            _seg_dist(v, J[17], J[19]),
            _seg_dist(v, J[18], J[20]),
            _seg_dist(v, J[19], J[21]),
        ],
        -1,
    )
    W[:, torso_j] += M[:, 2:3] * _softmin(torso_d, 2 * WEIGHT_WIDTH)
    W[:, arm_j] += M[:, 3:4] * _softmin(arm_d, WEIGHT_WIDTH)
    return W / W.sum(-1, keepdims=True)


# --- joint regressor ----------------------------------------------------------------------------------------
def _affine_weights(P: np.ndarray, x: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Weighted minimum-norm affine weights w (sum 1) with P^T w = x; prior scales each weight's freedom."""
    A = np.concatenate([P.T, np.ones((1, len(P)))], 0)  # [4, K]
    b = np.concatenate([x, [1.0]])
    lam = np.linalg.lstsq((A * prior) @ A.T, b, rcond=None)[0]
    return prior * (A.T @ lam)


def _joint_regressor(v: np.ndarray, J: np.ndarray, mirror: np.ndarray, k: int = 192) -> sp.csc_matrix:
    """Rows of affine vertex weights reproducing each joint exactly; mirror symmetric (right rows mirror left)."""
    rows, cols, vals = [], [], []
    n = J[12]
    # extreme anchors (head top, chest-cut corners, arm ends, front, back) for joints outside the mesh
    anchors = np.array(
        [v[:, 1].argmax(), v[:, 1].argmin(), v[:, 0].argmax(), v[:, 2].argmax(), v[:, 2].argmin()]
        + [int(np.argmin(np.linalg.norm(v - (0.17, n[1] + CHEST_CUT_Y, z), axis=1))) for z in (-0.09, 0.11)]
    )
    anchors = np.unique(np.concatenate([anchors, mirror[anchors]]))
    right_of = dict(_MIRROR)
    solved: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for j in range(NUM_JOINTS):
        if j in right_of:
            idx, w = solved[right_of[j]]
            idx = mirror[idx]
        else:
            rel = J[j] - n
            outside = rel[1] < CHEST_CUT_Y + 0.02 or abs(J[j, 0]) > ARM_CUT_X - 0.01
            d = np.linalg.norm(v - J[j], axis=1)
            idx = np.argsort(d, kind="stable")[:k]
            if J[j, 0] == 0.0:  # mid-line joint: a mirror-closed vertex set gives symmetric min-norm weights
                idx = np.unique(np.concatenate([idx, mirror[idx]]))
            w = None if outside else _affine_weights(v[idx], J[j], np.ones(len(idx)))
            if w is None or np.abs(v[idx].T @ w - J[j]).max() > 1e-9:  # not in the affine hull: add anchors
                extra = anchors if J[j, 0] == 0.0 else anchors[v[anchors, 0] >= 0]
                idx = np.unique(np.concatenate([idx, extra]))
                w = _affine_weights(v[idx], J[j], np.ones(len(idx)))
            solved[j] = (idx, w)
        rows += [j] * len(idx)
        cols += idx.tolist()
        vals += w.tolist()
    return sp.csc_matrix((vals, (rows, cols)), shape=(NUM_JOINTS, len(v)))


# --- shape directions ---------------------------------------------------------------------------------------
def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _shape_dirs(v: np.ndarray, J: np.ndarray) -> np.ndarray:
    """[V, 3, 10] displacements (metres per unit beta); all fields are mirror-equivariant."""
    n = J[12]
    rel = v - n
    x, y, z = rel[:, 0], rel[:, 1], rel[:, 2]
    S = np.zeros((len(v), 3, 10))
    head_w = _sigmoid((y - 0.06) / 0.012)  # 1 on the head, 0 below the jaw line
    below_neck = _sigmoid((-0.02 - y) / 0.015)
    # 0: global size (3 % per unit, about the neck joint)
    S[:, :, 0] = 0.03 * rel
    # 1: shoulder width (x outwards, growing with |x| below the neck)
    S[:, 0, 1] = 0.025 * np.tanh(x / 0.08) * below_neck
    # 2: head size (5 % per unit about the head centre)
    hc = np.array([0.0, 0.145, 0.025])
    S[:, :, 2] = 0.05 * (rel - hc) * head_w[:, None]
    # 3: neck length (everything above the neck base moves up)
    S[:, 1, 3] = 0.012 * _sigmoid((y + 0.01) / 0.02)
    # 4: chest depth (front of the chest moves forward)
    S[:, 2, 4] = 0.015 * _sigmoid(z / 0.03) * below_neck * np.clip(z / 0.1, 0.0, None)
    # 5-9: smooth low-frequency fields (mirror equivariant: x-components odd in x, y/z even)
    odd = np.tanh(x / 0.05)  # smooth odd factor for x-components
    fields = [
        (0.006 * np.cos(np.pi * y / 0.6) * odd, 0.004 * np.cos(np.pi * x / 0.9), 0.0 * x),
        (0.0 * x, 0.005 * np.sin(np.pi * y / 0.6), 0.005 * np.cos(np.pi * x / 0.5)),
        (0.006 * np.sin(np.pi * x / 0.9), 0.0 * x, 0.004 * np.sin(np.pi * y / 0.6)),
        (0.004 * np.sin(2 * np.pi * x / 0.9) * np.cos(np.pi * z / 0.4), 0.004 * np.cos(np.pi * z / 0.3), 0.0 * x),
        (0.0 * x, 0.003 * np.cos(np.pi * x / 0.45) * np.sin(np.pi * y / 0.4), 0.005 * np.cos(np.pi * y / 0.3)),
    ]
    for i, comps in enumerate(fields):
        S[:, :, 5 + i] = np.stack(comps, -1)
    return S


# --- public ---------------------------------------------------------------------------------------------------
def _build() -> tuple[dict[str, np.ndarray], np.ndarray]:
    J = synthetic_joints()
    hv, hf = _half_mesh(J)
    v, f, mirror = _mirror_weld(hv, hf)
    f = _orient_outward(v, f)
    W = _skin_weights(v, J)
    data = {
        "v_template": v,
        "shapedirs": _shape_dirs(v, J),
        "posedirs": np.zeros((len(v), 3, 9 * (NUM_JOINTS - 1))),
        "J_regressor": _joint_regressor(v, J, mirror),
        "weights": W,
        "kintree_table": np.stack(
            [np.array([4294967295] + list(SMPL_PARENTS[1:]), dtype=np.int64), np.arange(NUM_JOINTS)]
        ),
        "f": f.astype(np.uint32),
    }
    return data, mirror


def build_synthetic_smpl(cache: bool = True) -> dict[str, np.ndarray]:
    """The synthetic SMPL-format model: the 7 smplx keys plus ``J`` (rest joints) and ``mirror_index``.

    Deterministic; cached as a compressed npz (float32, posedirs omitted) in the user cache dir with a checksum
    of its arrays. Returns float64 ``v_template``/``shapedirs``/``weights``, zero ``posedirs`` (V, 3, 207),
    ``J_regressor`` as ``scipy.sparse.csc_matrix`` (24, V), ``kintree_table`` (2, 24), ``f`` uint32 (F, 3).
    """
    path = _cache_path()
    if cache and path.exists():
        try:
            return _read_cache(path)
        except (ValueError, OSError, KeyError, EOFError):  # corrupt or stale cache: rebuild
            pass
    data, mirror = _build()
    data["J"] = synthetic_joints()
    data["mirror_index"] = mirror
    if cache:
        try:
            _write_cache(path, data)
            return _read_cache(path)
        except OSError:
            pass
    return data


def _cache_path() -> Path:
    root = os.environ.get("BUSTO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "busto"
    )
    src = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]  # any change to the recipe rebuilds
    return Path(root) / f"synthetic_smpl_v{SYNTHETIC_VERSION}_{src}.npz"


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def _write_cache(path: Path, data: dict) -> None:
    Jr = data["J_regressor"].tocoo()
    arrays = {
        "v_template": data["v_template"].astype(np.float32),
        "shapedirs": data["shapedirs"].astype(np.float32),
        "weights": data["weights"].astype(np.float32),
        "jreg_row": Jr.row.astype(np.int32),
        "jreg_col": Jr.col.astype(np.int32),
        "jreg_val": Jr.data.astype(np.float64),
        "kintree_table": data["kintree_table"],
        "f": data["f"],
        "J": data["J"],
        "mirror_index": data["mirror_index"].astype(np.int64),
    }
    from portrait_core.atomic import atomic_path

    with atomic_path(path, suffix=".tmp.npz") as tmp:  # np.savez adds .npz unless the name ends with it
        np.savez_compressed(tmp, checksum=np.array(_digest(arrays)), **arrays)


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "checksum"}
        checksum = str(z["checksum"])
    if _digest(arrays) != checksum:
        raise ValueError(f"{path}: checksum mismatch")
    V = len(arrays["v_template"])
    return {
        "v_template": arrays["v_template"].astype(np.float64),
        "shapedirs": arrays["shapedirs"].astype(np.float64),
        "posedirs": np.zeros((V, 3, 9 * (NUM_JOINTS - 1))),
        "J_regressor": sp.csc_matrix(
            (arrays["jreg_val"], (arrays["jreg_row"], arrays["jreg_col"])), shape=(NUM_JOINTS, V)
        ),
        "weights": arrays["weights"].astype(np.float64),
        "kintree_table": arrays["kintree_table"],
        "f": arrays["f"],
        "J": arrays["J"],
        "mirror_index": arrays["mirror_index"],
    }


SMPL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


def write_synthetic_pkl(path: str | os.PathLike, data: dict | None = None) -> Path:
    """Write the synthetic model as a pickle in the official SMPL layout (protocol 2, float64, csc regressor)."""
    data = build_synthetic_smpl() if data is None else data
    out = {k: data[k] for k in SMPL_KEYS}
    out["J"] = data.get("J", synthetic_joints())
    out["bs_type"] = "lrotmin"
    out["bs_style"] = "lbs"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(out, fh, protocol=2)
    return path


def synthetic_vertex_ids(data: dict) -> dict[str, int]:
    """smplx ``vertex_ids`` (nose, eyes, ears) for a non-6890 mesh: the nearest vertices to canonical landmarks."""
    v = np.asarray(data["v_template"])
    J = np.asarray(data.get("J", synthetic_joints()))
    R = _head_nod()

    def near(p_canon_rel_neck):
        p = J[15] + (J[12] + np.asarray(p_canon_rel_neck) - J[15]) @ R
        return int(np.argmin(np.linalg.norm(v - p, axis=1)))

    return {
        "nose": near((0, 0.142, 0.136)),
        "leye": near((0.032, 0.165, 0.11)),
        "reye": near((-0.032, 0.165, 0.11)),
        "lear": near((0.093, 0.135, 0.02)),
        "rear": near((-0.093, 0.135, 0.02)),
    }
