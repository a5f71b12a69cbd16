"""Skeleton, skin weights and pose -> bone rotations for an extracted avatar mesh.

Conventions (docs/CONVENTIONS.md): canonical frame, metres, SMPL axes (+Y up, the subject faces +Z), origin at the
canonical neck joint J12. The skeleton is the SMPL upper-body chain (``UPPER_BODY_CHAIN``: pelvis, spine1-3, neck,
collars, head, shoulders, elbows) with joint heads at the identity's **canonical** joint positions; its rest pose is
the canonical pose, so every joint's rest rotation is the identity and a pose code (``[6,3]`` axis-angle relative to
the canonical pose) maps to joint-local rotations ``Q_j = Rc_p(j) · R(pose_j) · Rc_p(j)ᵀ`` where ``Rc`` is the
canonical pose's global joint rotation (identity for every parent of a pose joint with the default constants, so
then ``Q_j = R(pose_j)``). The skinned result equals the body's canonical→posed bone transforms
``G_j = A_j(R_local) · A_j(R_adjust)⁻¹``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from portrait_core.conventions import (
    CANONICAL_ADJUST_EULER_ZYX,
    NUM_JOINTS,
    POSE_JOINTS,
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
    UPPER_BODY_CHAIN,
)
from portrait_core.geometry.rotations import axis_angle_to_matrix, euler_zyx_to_matrix

#: Influences per vertex in the exported skin (glTF JOINTS_0/WEIGHTS_0 hold 4).
MAX_INFLUENCES = 4
#: Head turn / nod (radians) at which build_rig guarantees that no face folds over (fold_test_poses).
UNFOLD_ANGLE = 0.6


@dataclass
class Rig:
    """An SMPL upper-body skeleton fitted to a mesh.

    joint_ids [J] SMPL joint ids (``UPPER_BODY_CHAIN`` order, parents before children); joint_names [J] SMPL names;
    parents [J] index into this rig (-1 = root); joint_positions [J,3] canonical joint heads (metres, rest pose =
    canonical pose); canonical_rotations [J,3,3] global rotation of each joint in the canonical pose relative to
    SMPL rest; inverse_bind_matrices [J,4,4] (row-major here; the writer transposes for glTF); joints [V,4] uint16
    indices into this rig; weights [V,4] float32 summing to 1.
    """

    joint_ids: tuple[int, ...]
    joint_names: tuple[str, ...]
    parents: np.ndarray
    joint_positions: np.ndarray
    canonical_rotations: np.ndarray
    inverse_bind_matrices: np.ndarray
    joints: np.ndarray
    weights: np.ndarray

    @property
    def num_joints(self) -> int:
        return len(self.joint_ids)

    def index(self, name_or_id: str | int) -> int:
        """Rig index of an SMPL joint given by name or SMPL id."""
        jid = SMPL_JOINT_NAMES.index(name_or_id) if isinstance(name_or_id, str) else int(name_or_id)
        return self.joint_ids.index(jid)

    def local_rotations(self, pose: np.ndarray | torch.Tensor) -> np.ndarray:
        """Pose code [..., 6, 3] (axis-angle, canonical-relative) -> joint-local rotations [..., J, 3, 3]."""
        pose_t = torch.as_tensor(np.asarray(pose, dtype=np.float64))
        if pose_t.shape[-2:] != (len(POSE_JOINTS), 3):
            raise ValueError(f"pose must be [..., 6, 3], got {tuple(pose_t.shape)}")
        R = axis_angle_to_matrix(pose_t).numpy()  # [..., 6, 3, 3]
        out = np.broadcast_to(np.eye(3), (*R.shape[:-3], self.num_joints, 3, 3)).copy()
        for k, jid in enumerate(POSE_JOINTS):
            j = self.joint_ids.index(jid)
            p = self.parents[j]
            Rc = self.canonical_rotations[p] if p >= 0 else np.eye(3)
            out[..., j, :, :] = Rc @ R[..., k, :, :] @ Rc.T
        return out

    def global_transforms(self, local_rotations: np.ndarray) -> np.ndarray:
        """Forward kinematics of the rig: local rotations [..., J, 3, 3] -> joint world transforms [..., J, 4, 4]."""
        lr = np.asarray(local_rotations, dtype=np.float64)
        batch = lr.shape[:-3]
        M = np.zeros((*batch, self.num_joints, 4, 4))
        for j in range(self.num_joints):
            p = self.parents[j]
            local = np.zeros((*batch, 4, 4))
            local[..., :3, :3] = lr[..., j, :, :]
            local[..., :3, 3] = self.joint_positions[j] - (self.joint_positions[p] if p >= 0 else 0.0)
            local[..., 3, 3] = 1.0
            M[..., j, :, :] = M[..., p, :, :] @ local if p >= 0 else local
        return M

    def skin_matrices(self, local_rotations: np.ndarray) -> np.ndarray:
        """Canonical -> posed transform of each joint [..., J, 4, 4] (= world transform x inverse bind)."""
        return self.global_transforms(local_rotations) @ self.inverse_bind_matrices

    def skin(self, vertices: np.ndarray, local_rotations: np.ndarray) -> np.ndarray:
        """Linear blend skinning of canonical vertices [V,3] with the top-4 weights -> [..., V, 3] (metres)."""
        S = self.skin_matrices(local_rotations)  # [..., J, 4, 4]
        Sv = S[..., self.joints, :, :]  # [..., V, 4, 4, 4]
        T = (self.weights[..., None, None] * Sv).sum(-3)  # [..., V, 4, 4]
        v = np.asarray(vertices, dtype=np.float64)
        return np.einsum("...vij,vj->...vi", T[..., :3, :3], v) + T[..., :3, 3]

    def pose_mesh(self, vertices: np.ndarray, pose: np.ndarray | torch.Tensor) -> np.ndarray:
        """Posed positions [..., V, 3] of canonical vertices for a pose code [..., 6, 3] (LBS with this rig)."""
        return self.skin(vertices, self.local_rotations(pose))


def canonical_rotations_from_conventions(joint_ids: Sequence[int] = tuple(range(NUM_JOINTS))) -> np.ndarray:
    """Global rotations [len(joint_ids),3,3] of the canonical pose (``CANONICAL_ADJUST_EULER_ZYX``) per joint."""
    glob = [np.eye(3)] * NUM_JOINTS
    for j in range(NUM_JOINTS):
        e = CANONICAL_ADJUST_EULER_ZYX.get(j)
        local = euler_zyx_to_matrix(torch.tensor(e, dtype=torch.float64)).numpy() if e is not None else np.eye(3)
        p = SMPL_PARENTS[j]
        glob[j] = (glob[p] @ local) if p >= 0 else local
    return np.stack([glob[j] for j in joint_ids])


def fold_weights(lbs_weights: np.ndarray, joint_ids: Sequence[int]) -> np.ndarray:
    """[V,24] SMPL weights -> [V,len(joint_ids)]: each joint outside the chain adds to its nearest chain ancestor.

    Exact for every pose that rotates only chain joints (joints outside the chain then move rigidly with it).
    """
    cols = {jid: i for i, jid in enumerate(joint_ids)}
    out = np.zeros((lbs_weights.shape[0], len(joint_ids)), dtype=np.float64)
    for j in range(lbs_weights.shape[1]):
        a = j
        while a not in cols:
            a = SMPL_PARENTS[a]
            if a < 0:
                raise ValueError(f"joint {SMPL_JOINT_NAMES[j]} has no ancestor in the rig")
        out[:, cols[a]] += lbs_weights[:, j]
    return out


def mesh_adjacency(faces: np.ndarray, num_vertices: int):
    """Row-normalised vertex adjacency (scipy CSR) of a triangle mesh (uniform one-ring averaging)."""
    from scipy.sparse import coo_matrix, diags

    f = np.asarray(faces, dtype=np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    A = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(num_vertices, num_vertices)).tocsr()
    A.data[:] = 1.0  # duplicates summed -> back to 1
    deg = np.asarray(A.sum(1)).ravel()
    return diags(1.0 / np.maximum(deg, 1.0)) @ A


def closest_point_barycentric(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest points of points p [...,3] on triangles (a, b, c) [...,3] (Ericson, Real-Time Collision Detection
    5.1.5) -> (barycentric coordinates [...,3], squared distances [...])."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    denom = va + vb + vc
    safe = lambda x: np.where(np.abs(x) > 1e-30, x, 1e-30)  # noqa: E731
    # interior
    v = vb / safe(denom)
    w = vc / safe(denom)
    bary = np.stack([1 - v - w, v, w], -1)
    # edges and vertices (later assignments win, ordered from the least to the most specific)
    t_bc = (d4 - d3) / safe((d4 - d3) + (d5 - d6))
    edge_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    t_ac = d2 / safe(d2 - d6)
    edge_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    t_ab = d1 / safe(d1 - d3)
    edge_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    z = np.zeros_like(d1)
    bary = np.where(edge_bc[..., None], np.stack([z, 1 - t_bc, t_bc], -1), bary)
    bary = np.where(edge_ac[..., None], np.stack([1 - t_ac, z, t_ac], -1), bary)
    bary = np.where(edge_ab[..., None], np.stack([1 - t_ab, t_ab, z], -1), bary)
    o = np.ones_like(d1)
    bary = np.where(((d6 >= 0) & (d5 <= d6))[..., None], np.stack([z, z, o], -1), bary)
    bary = np.where(((d3 >= 0) & (d4 <= d3))[..., None], np.stack([z, o, z], -1), bary)
    bary = np.where(((d1 <= 0) & (d2 <= 0))[..., None], np.stack([o, z, z], -1), bary)
    q = bary[..., :1] * a + bary[..., 1:2] * b + bary[..., 2:] * c
    return bary, ((p - q) ** 2).sum(-1)


def surface_weights(points: np.ndarray, body_vertices: np.ndarray, body_faces: np.ndarray, body_weights: np.ndarray,
                    k_candidates: int = 2, chunk: int = 16384) -> np.ndarray:
    """Body weights [Nb,J] interpolated (barycentrically) at the closest point of the body surface to each point
    [N,3]; candidates are the triangles around the ``k_candidates`` nearest body vertices. -> [N,J]."""
    from scipy.spatial import cKDTree

    bv = np.asarray(body_vertices, dtype=np.float64)
    bf = np.asarray(body_faces, dtype=np.int64)
    # vertex -> incident triangles, padded to the max valence
    order = np.argsort(bf.ravel(), kind="stable")
    vert_of = bf.ravel()[order]
    counts = np.bincount(vert_of, minlength=len(bv))
    valence = int(counts.max())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(order)) - starts[vert_of]
    inc = np.full((len(bv), valence), -1, np.int64)
    inc[vert_of, slot] = order // 3
    tree = cKDTree(bv)
    pts = np.asarray(points, dtype=np.float64)
    out = np.empty((len(pts), body_weights.shape[1]))
    for s in range(0, len(pts), chunk):
        p = pts[s:s + chunk]
        _, nn = tree.query(p, k=k_candidates)
        cand = inc[nn.reshape(len(p), -1) if k_candidates > 1 else nn[:, None]].reshape(len(p), -1)  # [n, k*valence]
        valid = cand >= 0
        cand = np.where(valid, cand, 0)
        tri = bf[cand]  # [n, C, 3]
        bary, d2 = closest_point_barycentric(p[:, None, :], bv[tri[..., 0]], bv[tri[..., 1]], bv[tri[..., 2]])
        d2 = np.where(valid, d2, np.inf)
        best = d2.argmin(1)
        r = np.arange(len(p))
        t = tri[r, best]  # [n, 3]
        bc = bary[r, best]  # [n, 3]
        out[s:s + chunk] = np.einsum("nk,nkj->nj", bc, body_weights[t])
    return out


def transfer_weights(
    mesh_vertices: np.ndarray,
    mesh_faces: np.ndarray,
    body_vertices: np.ndarray,
    body_weights: np.ndarray,
    *,
    body_faces: np.ndarray | None = None,
    k_nearest: int = 1,
    smooth_iterations: int = 3,
    smooth_strength: float = 0.5,
    max_influences: int = MAX_INFLUENCES,
    min_weight: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Skin weights for a mesh from a skinned body.

    With ``body_faces`` [Fb,3] each mesh vertex takes the body weights interpolated at the closest point of the body
    surface (:func:`surface_weights`, continuous over the body); without, the inverse-distance-weighted mean of its
    ``k_nearest`` body vertices' weights (body_weights [Nb, J]; k = 1 is the generator's nearest-vertex rule).
    The result is smoothed over the mesh (``smooth_iterations`` of
    ``W <- (1-s) W + s · mean over one-ring``), then truncated to the top ``max_influences`` and renormalised.
    Returns (joints [V,4] uint16, weights [V,4] float32, rows sum to 1, sorted by decreasing weight).
    """
    from scipy.spatial import cKDTree

    if body_faces is not None:
        W = surface_weights(mesh_vertices, body_vertices, body_faces, body_weights)
    else:
        tree = cKDTree(np.asarray(body_vertices, dtype=np.float64))
        d, idx = tree.query(np.asarray(mesh_vertices, dtype=np.float64), k=k_nearest)
        if k_nearest == 1:
            d, idx = d[:, None], idx[:, None]
        w_idw = 1.0 / np.maximum(d, 1e-6)
        w_idw /= w_idw.sum(1, keepdims=True)
        W = np.einsum("vk,vkj->vj", w_idw, body_weights[idx])
    if smooth_iterations > 0:
        A = mesh_adjacency(mesh_faces, len(mesh_vertices))
        for _ in range(smooth_iterations):
            W = (1.0 - smooth_strength) * W + smooth_strength * (A @ W)
    nj = W.shape[1]
    m = min(max_influences, nj)
    top = np.argsort(-W, axis=1)[:, :m]
    tw = np.take_along_axis(W, top, axis=1).clip(min=0.0)
    tw = np.where(tw >= min_weight * tw[:, :1], tw, 0.0)
    s = tw.sum(1, keepdims=True)
    if np.any(s <= 0):
        raise ValueError("some vertices received no skin weight")
    tw /= s
    joints = np.zeros((len(W), MAX_INFLUENCES), np.uint16)
    weights = np.zeros((len(W), MAX_INFLUENCES), np.float32)
    joints[:, :m] = np.where(tw > 0, top, 0)  # glTF: unused influences have joint 0 and weight 0
    weights[:, :m] = tw
    return joints, weights


def _top_influences(W: np.ndarray, max_influences: int = MAX_INFLUENCES, min_weight: float = 1e-3):
    m = min(max_influences, W.shape[1])
    top = np.argsort(-W, axis=1)[:, :m]
    tw = np.take_along_axis(W, top, axis=1).clip(min=0.0)
    tw = np.where(tw >= min_weight * tw[:, :1], tw, 0.0)
    tw /= np.maximum(tw.sum(1, keepdims=True), 1e-12)
    joints = np.zeros((len(W), MAX_INFLUENCES), np.uint16)
    weights = np.zeros((len(W), MAX_INFLUENCES), np.float32)
    joints[:, :m] = np.where(tw > 0, top, 0)
    weights[:, :m] = tw
    return joints, weights


def _dense(joints: np.ndarray, weights: np.ndarray, num_joints: int) -> np.ndarray:
    W = np.zeros((len(joints), num_joints))
    np.add.at(W, (np.repeat(np.arange(len(joints)), joints.shape[1]), joints.astype(np.int64).ravel()),
              weights.astype(np.float64).ravel())
    return W


def folded_faces(rig: Rig, vertices: np.ndarray, faces: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Faces [F] bool whose normal turns by more than 90° under the rig's LBS at ``pose`` [6,3] (they fold over;
    a rigid turn below 90° never does that). Degenerate faces are ignored."""
    f = np.asarray(faces, np.int64)

    def normals(v):
        t = np.asarray(v, np.float64)[f]
        return np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])

    a, b = normals(vertices), normals(rig.pose_mesh(vertices, pose))
    return ((a * b).sum(1) < 0) & (np.linalg.norm(a, axis=1) > 1e-12)


def unfold_weights(rig: Rig, vertices: np.ndarray, faces: np.ndarray, poses, *, rounds: int = 30,
                   iterations: int = 20, rings: int = 3, max_rings: int = 40) -> tuple[Rig, int]:
    """Smooth the skin weights where LBS folds the surface over at any of ``poses`` ([6,3] each), until it does
    not: round r marks the vertices of folded faces and ``min(rings + r, max_rings)`` one-rings around them and applies
    ``iterations`` of ``W <- ½W + ½·one-ring mean`` there (top-4 truncation after each round). Locally more
    uniform weights move that part more rigidly, and a rigid turn below 90° cannot fold a face. Returns the weights
    of the round with the fewest folded faces (the input's when smoothing does not help, e.g. LBS's twist collapse
    of a coarse neck) and that number."""
    f = np.asarray(faces, np.int64)
    v = np.asarray(vertices, np.float64)
    vh = np.concatenate([v, np.ones((len(v), 1))], 1)
    A = mesh_adjacency(f, len(v))
    S = [rig.skin_matrices(rig.local_rotations(p)).reshape(rig.num_joints, 16) for p in poses]

    def face_normals(x):
        t = x[f]
        return np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])

    rest = face_normals(v)
    valid = np.linalg.norm(rest, axis=1) > 1e-12
    W = _dense(rig.joints, rig.weights, rig.num_joints)
    best = (None, rig.joints, rig.weights)
    for r in range(rounds + 1):
        bad_faces = np.zeros(len(f), bool)
        for Sk in S:
            T = (W @ Sk).reshape(-1, 4, 4)
            posed = np.einsum("vij,vj->vi", T[:, :3], vh)
            bad_faces |= ((face_normals(posed) * rest).sum(1) < 0) & valid
        left = int(bad_faces.sum())
        if best[0] is None or left < best[0]:
            best = (left, *_top_influences(W)) if r else (left, rig.joints, rig.weights)
        if left == 0 or r == rounds:
            break
        sel = np.zeros(len(v), bool)
        sel[f[bad_faces].ravel()] = True
        for _ in range(min(rings + r, max_rings)):
            sel |= (A @ sel.astype(np.float64)) > 0
        for _ in range(iterations):
            W[sel] = 0.5 * W[sel] + 0.5 * (A @ W)[sel]
        W = _dense(*_top_influences(W), rig.num_joints)
    return replace(rig, joints=best[1], weights=best[2]), int(best[0])


def fold_test_poses(angle: float = UNFOLD_ANGLE) -> list[np.ndarray]:
    """Head turns and nods of ``angle`` radians both ways (neck 5/12, head 7/12 of it, as the add-on's TURN preset),
    the poses :func:`build_rig` keeps free of folded faces."""
    out = []
    for axis in (1, 0):
        for sign in (1.0, -1.0):
            p = np.zeros((len(POSE_JOINTS), 3))
            p[0, axis], p[3, axis] = sign * angle * 5 / 12, sign * angle * 7 / 12
            out.append(p)
    return out


def build_rig_from_arrays(
    mesh_vertices: np.ndarray,
    mesh_faces: np.ndarray,
    joint_positions_smpl: np.ndarray,
    body_vertices: np.ndarray,
    body_lbs_weights: np.ndarray,
    *,
    joint_ids: Sequence[int] = UPPER_BODY_CHAIN,
    canonical_rotations: np.ndarray | None = None,
    unfold: bool = True,
    **transfer_kw,
) -> Rig:
    """Rig from plain arrays: canonical SMPL joints [24,3], canonical body vertices [Nb,3] (already restricted to
    the vertices that may donate weights) and their SMPL weights [Nb,24]. Metres, canonical frame.
    ``unfold``: where LBS would fold faces over at ±0.6 rad head turns or nods, smooth the weights there until it
    does not (:func:`unfold_weights`)."""
    joint_ids = tuple(int(j) for j in joint_ids)
    for j in joint_ids:
        p = SMPL_PARENTS[j]
        if p >= 0 and p not in joint_ids:
            raise ValueError(f"rig joint {SMPL_JOINT_NAMES[j]} needs its parent {SMPL_JOINT_NAMES[p]}")
        if p >= 0 and joint_ids.index(p) > joint_ids.index(j):
            raise ValueError("rig joints must list parents before children")
    parents = np.array([joint_ids.index(SMPL_PARENTS[j]) if SMPL_PARENTS[j] >= 0 else -1 for j in joint_ids])
    pos = np.asarray(joint_positions_smpl, dtype=np.float64)[list(joint_ids)]
    if canonical_rotations is None:
        canonical_rotations = canonical_rotations_from_conventions(joint_ids)
    ibm = np.tile(np.eye(4), (len(joint_ids), 1, 1))
    ibm[:, :3, 3] = -pos
    W = fold_weights(np.asarray(body_lbs_weights, dtype=np.float64), joint_ids)
    joints, weights = transfer_weights(mesh_vertices, mesh_faces, body_vertices, W, **transfer_kw)
    rig = Rig(
        joint_ids=joint_ids, joint_names=tuple(SMPL_JOINT_NAMES[j] for j in joint_ids), parents=parents,
        joint_positions=pos, canonical_rotations=np.asarray(canonical_rotations, dtype=np.float64),
        inverse_bind_matrices=ibm, joints=joints, weights=weights,
    )
    if unfold and all(j in joint_ids for j in POSE_JOINTS) and len(mesh_faces):
        rig, _ = unfold_weights(rig, mesh_vertices, mesh_faces, fold_test_poses())
    return rig


@torch.no_grad()
def build_rig(mesh, body, betas: torch.Tensor | np.ndarray | None = None, *, surface: bool = False,
              **transfer_kw) -> Rig:
    """Rig for a canonical-space mesh from a ``BodyModel`` and body shape ``betas`` [10] or [1,10].

    Skin weights come from the body's upper-body part (``body.upper_body_mask``, the vertices the generator's
    inverse LBS uses) in the canonical pose of these betas: by default those of the nearest vertex (the generator's
    own rule), with ``surface`` the SMPL weights interpolated at the closest point of that surface (continuous,
    ~6x slower); then smoothed over the mesh, top-4, renormalised. See :func:`transfer_weights` for the options.
    """
    if betas is None:
        betas = torch.zeros(1, 10)
    betas = torch.as_tensor(np.asarray(betas, dtype=np.float32)).reshape(1, -1)
    state = body.canonical(betas)
    verts = state.vertices[0].detach().cpu().double().numpy()
    joints = state.joints[0].detach().cpu().double().numpy()
    lbs = body.lbs_weights.detach().cpu().double().numpy()
    faces = body.faces.detach().cpu().numpy().astype(np.int64)
    mask = getattr(body, "upper_body_mask", None)
    if mask is not None:
        mask = mask.detach().cpu().numpy().astype(bool)
        faces = faces[mask[faces].all(1)]
        remap = np.cumsum(mask) - 1
        verts, lbs, faces = verts[mask], lbs[mask], remap[faces]
    if surface:
        transfer_kw.setdefault("body_faces", faces)
    weld = getattr(mesh, "weld", None)
    if weld is None:
        return build_rig_from_arrays(mesh.vertices, mesh.faces, joints, verts, lbs, **transfer_kw)
    # a textured mesh: weights on the welded surface (smoothing across UV seams), then copied to the split vertices
    wv, wf = mesh.welded()
    rig = build_rig_from_arrays(wv, wf, joints, verts, lbs, **transfer_kw)
    return replace(rig, joints=rig.joints[weld], weights=rig.weights[weld])


def body_local_rotations(rig: Rig, bone_transforms: np.ndarray | torch.Tensor) -> np.ndarray:
    """Joint-local rotations [..., J, 3, 3] that reproduce a body's canonical->posed bone transforms [..., 24, 4, 4].

    ``Q_j = rot(G_parent)ᵀ · rot(G_j)``; useful to check :meth:`Rig.local_rotations` against the body model.
    """
    G = np.asarray(torch.as_tensor(bone_transforms).detach().cpu().double().numpy())[..., list(rig.joint_ids), :3, :3]
    out = np.empty_like(G)
    for j in range(rig.num_joints):
        p = rig.parents[j]
        out[..., j, :, :] = np.swapaxes(G[..., p, :, :], -1, -2) @ G[..., j, :, :] if p >= 0 else G[..., j, :, :]
    return out


# --- expression morph targets -------------------------------------------------------------------------------------

#: Default expression amplitude of a morph target at weight 1 (coefficients are unit-variance, so 2 = two sigma).
MORPH_SCALE = 2.0


def morph_basis(components: int | Sequence[int | str] = 8, scale: float = MORPH_SCALE) -> tuple[list[str], np.ndarray]:
    """Names and expression vectors [K,64] of K morph targets: target k is ``scale`` along one expression coefficient.

    ``components`` is a count (the first K coefficients) or a list of coefficient indices / names from
    ``portrait_core.face.EXPRESSION_NAMES`` (jaw_open, smile, brow_raise, blink, ...). Named coefficients keep their
    names, others are called ``expr_NN``.
    """
    from portrait_core.conventions import EXPRESSION_DIM
    from portrait_core.face import EXPRESSION_NAMES

    if isinstance(components, int | np.integer):
        if not 0 <= int(components) <= EXPRESSION_DIM:
            raise ValueError(f"number of morphs must be in [0, {EXPRESSION_DIM}], got {components}")
        components = list(range(int(components)))
    by_index = {v: k for k, v in EXPRESSION_NAMES.items()}
    names, idx = [], []
    for c in components:
        if isinstance(c, str):
            if c not in EXPRESSION_NAMES:
                raise ValueError(f"unknown expression name {c!r}; known: {', '.join(EXPRESSION_NAMES)}")
            i = EXPRESSION_NAMES[c]
        else:
            i = int(c)
            if not 0 <= i < EXPRESSION_DIM:
                raise ValueError(f"expression component must be in [0, {EXPRESSION_DIM}), got {c}")
        idx.append(i)
        names.append(by_index.get(i, f"expr_{i:02d}"))
    if len(set(idx)) != len(idx):
        raise ValueError(f"duplicate expression components in {list(components)}")
    E = np.zeros((len(idx), EXPRESSION_DIM), np.float64)
    E[np.arange(len(idx)), idx] = float(scale)
    return names, E


def morphs_from_displacement(
    displace_fn, vertices: np.ndarray, names: Sequence[str], expressions: np.ndarray
) -> dict[str, np.ndarray]:
    """Morph deltas ``{name: [V,3] float32}`` (metres, canonical frame): ``displace_fn(points[V,3], expression[64])
    -> [V,3]`` forward displacement of neutral points for each expression row [K,64]."""
    v = torch.from_numpy(np.ascontiguousarray(vertices, dtype=np.float32))
    out = {}
    for name, e in zip(names, np.asarray(expressions)):
        d = displace_fn(v, torch.as_tensor(e, dtype=torch.float32))
        d = (d.detach().cpu().numpy() if torch.is_tensor(d) else np.asarray(d)).astype(np.float32)
        if d.shape != v.shape or not np.all(np.isfinite(d)):
            raise ValueError(f"morph {name!r}: displacement must be finite with shape {tuple(v.shape)}, got {d.shape}")
        out[str(name)] = d
    return out


@torch.no_grad()
def expression_morphs(avatar, mesh, components: int | Sequence[int | str] = 8, scale: float = MORPH_SCALE,
                      iterations: int = 4, exact: bool = False) -> dict[str, np.ndarray]:
    """Expression morph targets of an ``Avatar`` for a canonical mesh: delta_k = deformed - neutral vertex positions
    for expression ``scale · e_k``, i.e. the forward solve ``y + Delta(y) = x`` (``iterations`` fixed-point steps
    ``y <- x - Delta(y)``) of the generator's backward expression offsets Delta.

    ``exact=False`` (default) uses the per-expression head-box grid the renderer itself uses
    (``Generator.expression_offsets_fn``; all K targets in one batch); ``exact=True`` evaluates the network
    (``Avatar.expression_displacement``). Only vertices inside the head box are evaluated (Delta is zero outside).
    Returns ``{name: [V,3] float32}`` in :func:`morph_basis` order.
    """
    names, E = morph_basis(components, scale)
    v = np.asarray(mesh.vertices)
    region = _expression_region(avatar, v)
    out = {name: np.zeros(v.shape, np.float32) for name in names}
    if not names or not region.any():
        return out
    x = torch.from_numpy(np.ascontiguousarray(v[region], dtype=np.float32))
    g = getattr(avatar, "generator", None)
    if not exact and g is not None and hasattr(g, "expression_offsets_fn"):
        dt = next(g.parameters()).dtype
        dev = avatar.device
        ident = avatar.latents.identity.to(dev, dt).expand(len(names), -1)
        # the avatar's per-identity bake (basis or neutral volumes): not re-baked for each of the K targets
        delta_fn = g.expression_offsets_fn(ident, torch.as_tensor(E, dtype=dt, device=dev),
                                           getattr(avatar, "expression_bake", None))
        xb = x.to(dev, dt)[None].expand(len(names), -1, -1)
        y = xb.clone()
        for _ in range(iterations):
            y = xb - delta_fn(y)
        d = (y - xb).cpu().numpy().astype(np.float32)
        if not np.all(np.isfinite(d)):
            raise ValueError("expression morphs: the expression deformation returned non-finite values")
        for k, name in enumerate(names):
            out[name][region] = d[k]
        return out
    fn = lambda p, e: avatar.expression_displacement(p, e, iterations=iterations)  # noqa: E731
    for name, d in morphs_from_displacement(fn, x.numpy(), names, E).items():
        out[name][region] = d
    return out


def _expression_region(avatar, vertices: np.ndarray, margin: float = 0.005) -> np.ndarray:
    """Vertices that an expression can move: inside the generator's head box (its deformation window is zero outside,
    so a point outside is its own fixed point); all vertices when the avatar has no such box."""
    cfg = getattr(getattr(getattr(avatar, "generator", None), "cfg", None), "expression", None)
    centre = getattr(cfg, "head_box_centre", None)
    half = getattr(cfg, "head_box_half_extent", None)
    if centre is None or half is None:
        return np.ones(len(vertices), bool)
    return np.all(np.abs(vertices - np.asarray(centre)) <= np.asarray(half) + margin, axis=1)


def morph_weights(expressions: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Morph weights [T,K] that best reproduce expressions [T,64] with the morph basis [K,64] (least squares;
    for single-coefficient targets this is ``e[c_k] / scale``). Components outside the basis are dropped."""
    expressions = np.asarray(expressions, dtype=np.float64)
    basis = np.asarray(basis, dtype=np.float64)
    if basis.shape[0] == 0:
        return np.zeros((expressions.shape[0], 0), np.float32)
    w, *_ = np.linalg.lstsq(basis.T, expressions.T, rcond=None)
    return w.T.astype(np.float32)
