"""``BodyModel``: the SMPL-format body in Busto's canonical frame (pose code, LBS, inverse LBS, face placement).

Conventions (docs/CONVENTIONS.md): metres, SMPL frame (+Y up, facing +Z, +X = the subject's left). Every
position this module returns is in the **canonical frame of the given betas**: origin at the canonical neck
joint J12 (which the pose code never moves). Pose code ``pose[B, 6, 3]`` = axis-angle of joints 12..17 relative
to the canonical pose: ``R_local_j = R(pose_j) @ R_adjust_j``; canonical->posed bone transforms
``G_j = A_j(R_local) @ A_j(R_adjust)^-1`` (A = SMPL forward kinematics from the rest joints, as skinning
transforms rest -> state); vertex transforms ``T_v = sum_j W_vj G_j``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
from smplx.lbs import blend_shapes
from torch import Tensor

from portrait_core.conventions import (
    BODY_SHAPE_DIM,
    CANONICAL_ADJUST_EULER_ZYX,
    FACE_CENTRE,
    HEAD,
    NUM_JOINTS,
    POSE_JOINTS,
)
from portrait_core.geometry.rotations import (
    axis_angle_to_matrix,
    euler_zyx_to_matrix,
    rigid_transform,
    transform_points,
)

from .io import load_smpl_file

#: Joints whose vertices are valid targets of nearest-vertex lookups (torso, neck, head, collars, upper arms).
UPPER_BODY_JOINTS: tuple[int, ...] = (3, 6, 9, 12, 13, 14, 15, 16, 17)


@dataclass
class BodyState:
    """The body for a batch, all in the canonical frame (metres, origin at canonical J12).

    vertices [B,V,3] and joints [B,24,3] in this state; bone_transforms [B,24,4,4] and vertex_transforms
    [B,V,4,4] map canonical -> this state; canonical_vertices/joints are the same body in the canonical pose.
    """

    vertices: Tensor
    joints: Tensor
    bone_transforms: Tensor
    vertex_transforms: Tensor
    canonical_vertices: Tensor | None = None
    canonical_joints: Tensor | None = None


# --- pure functions --------------------------------------------------------------------------------------------
def invert_rigid(T: Tensor) -> Tensor:
    """Inverse of rigid transforms [..., 4, 4] (rotation part orthonormal)."""
    Rt = T[..., :3, :3].transpose(-1, -2)
    return rigid_transform(Rt, -(Rt @ T[..., :3, 3:]).squeeze(-1))


def skinning_transforms(rot: Tensor, joints: Tensor, parents: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """SMPL forward kinematics. rot [B,J,3,3] local rotations, joints [B,J,3] rest joints (parents precede children).

    Returns (T [B,J,4,4] rest -> state skinning transforms, i.e. ``A_j @ translate(-J_j)``; posed joints [B,J,3]).
    """
    rel = torch.cat([joints[:, :1], joints[:, 1:] - joints[:, list(parents[1:])]], dim=1)
    local = rigid_transform(rot, rel)
    chain = [local[:, 0]]
    for j in range(1, len(parents)):
        chain.append(chain[parents[j]] @ local[:, j])
    A = torch.stack(chain, dim=1)
    R, posed = A[..., :3, :3], A[..., :3, 3]
    t = posed - (R @ joints[..., None]).squeeze(-1)
    return rigid_transform(R, t), posed


def canonical_to_posed_transforms(
    pose_rot: Tensor,
    pose_joints: tuple[int, ...],
    canonical_joints: Tensor,
    canonical_global_rot: Tensor,
    parents: tuple[int, ...],
) -> Tensor:
    """Bone transforms canonical -> posed, G [B,J,4,4], for pose-code rotations relative to the canonical pose.

    pose_rot [B,K,3,3]: R(pose) of the K joints ``pose_joints`` (all others keep the canonical pose);
    canonical_joints [B,J,3]; canonical_global_rot [B,J,3,3]: each joint's global rotation in the canonical pose.
    Recursively ``G_j = G_parent @ (rotation about J_can_j by Q R(pose_j) Q^T)``, Q the parent's canonical global
    rotation; this equals ``A_j(R(pose) R_adjust) @ A_j(R_adjust)^-1``. Joints without a code contribute an exact
    identity, so a zero pose gives exactly the identity when the pose joints' parents are unrotated canonically.
    """
    B, J = canonical_joints.shape[:2]
    M = torch.eye(3, dtype=pose_rot.dtype, device=pose_rot.device).repeat(B, J, 1, 1)
    idx = list(pose_joints)
    Q = canonical_global_rot[:, [parents[j] for j in idx]]
    M[:, idx] = Q @ pose_rot @ Q.transpose(-1, -2)
    local = rigid_transform(M, canonical_joints - (M @ canonical_joints[..., None]).squeeze(-1))
    chain = [local[:, 0]]
    for j in range(1, J):
        chain.append(chain[parents[j]] @ local[:, j])
    return torch.stack(chain, dim=1)


def blend_transforms(weights: Tensor, T: Tensor) -> Tensor:
    """Linear blend ``sum_j W_vj T_j`` for weight rows summing to 1, evaluated as ``I + sum_j W_vj (T_j - I)`` so
    that identity bones give exactly the identity: weights [V,J] (or [B,V,J]), T [B,J,4,4] -> [B,V,4,4]."""
    B, J = T.shape[:2]
    eye = torch.eye(4, dtype=T.dtype, device=T.device)
    out = torch.matmul(weights, (T - eye).reshape(B, J, 16))  # [B, V, 16]; I + sum_j W (T_j - I) (rows sum to 1)
    return out.reshape(B, -1, 4, 4) + eye


KDTREE_LEAF_SIZE = 64
"""Points per k-d tree leaf in :func:`nearest_index`: most pose-grid nodes lie far from the body, where larger leaves
(fewer nodes to visit, more distances per leaf) query 1.6x faster than scipy's default 16 (same answers)."""


@torch.no_grad()
def nearest_index(points: Tensor, targets: Tensor, chunk_elems: int = 1 << 24, method: str = "auto",
                  max_distance: float | None = None) -> Tensor:
    """Index of the nearest target for each point: points [B,N,3], targets [B,M,3] -> LongTensor [B,N].

    ``method``: 'cdist' (chunked over N with exact ``torch.cdist``, at most ~chunk_elems distances at once; any
    device), 'kdtree' (scipy cKDTree per batch element; CPU tensors) or 'auto' (kdtree on CPU, else cdist).
    Both are exact nearest-neighbour searches (they can differ only on exact ties). ``max_distance``: points with
    no target within it get -1 (the k-d tree stops searching there, which is much faster for far points; points
    outside the targets' bounding box grown by it are not searched at all: nothing can lie within reach).
    """
    B, N, _ = points.shape
    M = targets.shape[1]
    if method == "auto":
        method = "kdtree" if points.device.type == "cpu" else "cdist"
    bound = np.inf if max_distance is None else float(max_distance)
    if method == "kdtree":
        from scipy.spatial import cKDTree

        out = []
        for p, t in zip(points.detach().cpu().double().numpy(), targets.detach().cpu().double().numpy()):
            tree = cKDTree(t, leafsize=KDTREE_LEAF_SIZE)
            index = np.full(p.shape[0], -1, dtype=np.int64)
            near = ((p >= t.min(0) - bound) & (p <= t.max(0) + bound)).all(1)  # all True without a bound
            dist, k = tree.query(p[near], distance_upper_bound=bound)
            index[near] = np.where(np.isfinite(dist), k, -1)
            out.append(torch.from_numpy(index))
        return torch.stack(out).to(points.device)
    if method != "cdist":
        raise ValueError(f"nearest_index: unknown method {method!r}")
    step = max(1, chunk_elems // max(1, B * M))
    out = torch.empty(B, N, dtype=torch.long, device=points.device)
    for s in range(0, N, step):  # chunks of points (not single points)
        d = torch.cdist(points[:, s : s + step], targets, compute_mode="donot_use_mm_for_euclid_dist")
        best, idx = d.min(dim=-1)
        out[:, s : s + step] = torch.where(best <= bound, idx, -1)
    return out


def gather_transforms(T: Tensor, index: Tensor) -> Tensor:
    """T [B,M,4,4], index [B,N] -> [B,N,4,4] (differentiable w.r.t. T)."""
    B, N = index.shape
    return torch.gather(T, 1, index[..., None, None].expand(B, N, 4, 4))


def full_precision(method):
    """Run a body-model method with autocast off (CPU and CUDA): skinning, inverse LBS and the transforms stay
    float32 inside a mixed-precision render (``bench --amp``); float32 inputs give float32 results."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return method(*args, **kwargs)

    return wrapper


# --- the model -------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _synthetic_data():
    from .synthetic import build_synthetic_smpl

    return build_synthetic_smpl()


class BodyModel(torch.nn.Module):
    """SMPL-format body (buffers only, float32). Build with :meth:`synthetic` or :meth:`from_file`."""

    def __init__(self, data: dict, name: str = "smpl") -> None:
        super().__init__()
        self.name = name
        f32 = torch.float32
        vt = np.asarray(data["v_template"], np.float64)
        V = vt.shape[0]
        sd = np.asarray(data["shapedirs"], np.float64)[:, :, :BODY_SHAPE_DIM]
        pd = np.asarray(data["posedirs"], np.float64)
        jr = data["J_regressor"]
        jr = jr.toarray() if hasattr(jr, "toarray") else np.asarray(jr)
        W = np.asarray(data["weights"], np.float64)
        parents = np.asarray(data["kintree_table"], np.int64)[0].copy()
        parents[0] = -1
        self.parents: tuple[int, ...] = tuple(int(p) for p in parents)

        # Non-persistent buffers: .to(device) moves them, but a state_dict (a checkpoint) never carries the body
        # data, so a licensed SMPL model can't leak into a shipped file; the model is rebuilt from its source.
        def buf(name: str, t: Tensor) -> None:
            self.register_buffer(name, t, persistent=False)

        buf("v_template", torch.tensor(vt, dtype=f32))
        buf("shapedirs", torch.tensor(sd, dtype=f32))
        has_pd = bool(np.any(pd != 0))
        pd_t = torch.tensor(pd.reshape(V * 3, -1).T, dtype=f32) if has_pd else torch.zeros(0, V * 3)
        buf("posedirs", pd_t)  # [207, 3V], empty when all zero
        buf("J_regressor", torch.tensor(jr, dtype=f32))
        buf("lbs_weights", torch.tensor(W, dtype=f32))
        buf("faces", torch.tensor(np.asarray(data["f"], np.int64)))
        buf("upper_body_mask", torch.tensor(W[:, list(UPPER_BODY_JOINTS)].sum(1) >= 0.5))
        buf("head_mask", torch.tensor(W[:, HEAD] >= 0.5))
        adjust = torch.eye(3).repeat(NUM_JOINTS, 1, 1)
        for j, e in CANONICAL_ADJUST_EULER_ZYX.items():
            adjust[j] = euler_zyx_to_matrix(torch.tensor(e, dtype=torch.float64)).to(f32)
        buf("adjust_rotations", adjust)
        buf("face_centre_canonical0", torch.tensor(FACE_CENTRE, dtype=f32))
        # Face placement is linear in the betas (exact FACE_CENTRE at betas = 0): the face centre follows the head
        # joint (J15 - J12 from the regressor) and scales with the head's size about it.
        head = W[:, HEAD] >= 0.5
        jd = (jr[HEAD] - jr[12]) @ sd.reshape(V, -1)  # [3 * 10] -> d(J15 - J12)/d(beta)
        j0 = (jr[HEAD] - jr[12]) @ vt
        vh = vt[head] - vt[head].mean(0)
        dh = sd[head] - sd[head].mean(0, keepdims=True)  # [Vh, 3, 10]
        g = np.einsum("vk,vkb->b", vh, dh) / max(float((vh**2).sum()), 1e-12)  # d(relative head size)/d(beta)
        buf("_face_jd", torch.tensor(jd.reshape(3, -1), dtype=f32))
        buf("_face_g", torch.tensor(g, dtype=f32))
        buf("_face_offset", torch.tensor(np.asarray(FACE_CENTRE) - j0, dtype=f32))

    # -- constructors ------------------------------------------------------------------------------------------
    @classmethod
    def synthetic(cls) -> BodyModel:
        """The embedded synthetic SMPL-format body (deterministic; see portrait_core/body/synthetic.py)."""
        return cls(_synthetic_data(), name="synthetic")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BodyModel:
        """A user's SMPL model (.pkl through the restricted unpickler, or .npz), validated."""
        return cls(load_smpl_file(path), name=os.path.basename(str(path)))

    # -- basic properties ---------------------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def device(self) -> torch.device:
        return self.v_template.device

    def _betas(self, betas: Tensor | None, batch: int | None = None) -> Tensor:
        if betas is None:
            return torch.zeros(batch or 1, BODY_SHAPE_DIM, device=self.device)
        betas = betas.to(device=self.device, dtype=torch.float32)
        if betas.dim() != 2 or betas.shape[1] > self.shapedirs.shape[2]:
            raise ValueError(f"betas must be [B, <={self.shapedirs.shape[2]}], got {tuple(betas.shape)}")
        if betas.shape[1] < self.shapedirs.shape[2]:
            betas = torch.nn.functional.pad(betas, (0, self.shapedirs.shape[2] - betas.shape[1]))
        return betas

    # -- shape ------------------------------------------------------------------------------------------------
    def rest(self, betas: Tensor | None) -> tuple[Tensor, Tensor]:
        """Shaped rest-pose (T-pose) vertices [B,V,3] and joints [B,24,3], origin at J12 of these betas."""
        betas = self._betas(betas)
        v = self.v_template[None] + blend_shapes(betas, self.shapedirs[:, :, : betas.shape[1]])
        J = torch.matmul(self.J_regressor, v)  # [B, 24, 3]
        origin = J[:, 12:13]
        return v - origin, J - origin

    @staticmethod
    def _check_pose(pose: Tensor) -> None:
        if pose.dim() != 3 or pose.shape[-2:] != (len(POSE_JOINTS), 3):
            raise ValueError(f"pose must be [B, 6, 3] axis-angle (joints 12..17), got {tuple(pose.shape)}")

    def _rotations(self, B: int, pose: Tensor | None) -> Tensor:
        rot = self.adjust_rotations[None].expand(B, NUM_JOINTS, 3, 3)
        if pose is None:
            return rot
        self._check_pose(pose)
        pose = pose.to(device=self.device, dtype=torch.float32)
        rot = rot.clone()
        idx = list(POSE_JOINTS)
        rot[:, idx] = axis_angle_to_matrix(pose) @ self.adjust_rotations[idx]
        return rot

    def _pose_offsets(self, rot: Tensor) -> Tensor | None:
        if self.posedirs.numel() == 0:
            return None
        eye = torch.eye(3, device=rot.device, dtype=rot.dtype)
        feat = (rot[:, 1:] - eye).reshape(rot.shape[0], -1)
        return (feat @ self.posedirs).reshape(rot.shape[0], -1, 3)

    def _lbs(self, v_rest: Tensor, rot: Tensor, T: Tensor) -> Tensor:
        off = self._pose_offsets(rot)
        v = v_rest if off is None else v_rest + off
        return transform_points(blend_transforms(self.lbs_weights, T), v)

    def _bones(self, betas: Tensor | None, pose: Tensor | None, batch: int | None = None):
        """Shared shape + canonical FK: (betas [B,10], rest v, rest J, R_adjust, A(R_adjust), canonical joints)."""
        if pose is not None:
            self._check_pose(pose)
        B = batch or (pose.shape[0] if pose is not None else (betas.shape[0] if betas is not None else 1))
        betas = self._betas(betas, B)
        if betas.shape[0] == 1 and B > 1:
            betas = betas.expand(B, -1)
        v, J = self.rest(betas)
        rot_adj = self._rotations(B, None)
        T_adj, J_can = skinning_transforms(rot_adj, J, self.parents)
        return betas, v, J, rot_adj, T_adj, J_can

    # -- states ---------------------------------------------------------------------------------------------
    @full_precision
    def canonical(self, betas: Tensor | None = None) -> BodyState:
        """The canonical A-pose body (identity bone/vertex transforms). betas [B,10] (None = zeros, B = 1)."""
        _, v, J, rot_adj, T_adj, J_can = self._bones(betas, None)
        verts = self._lbs(v, rot_adj, T_adj)
        B, V = verts.shape[:2]
        eye = torch.eye(4, device=verts.device, dtype=verts.dtype)
        return BodyState(
            vertices=verts,
            joints=J_can,
            bone_transforms=eye.expand(B, NUM_JOINTS, 4, 4).clone(),
            vertex_transforms=eye.expand(B, V, 4, 4).clone(),
            canonical_vertices=verts,
            canonical_joints=J_can,
        )

    @full_precision
    def posed(self, betas: Tensor | None, pose: Tensor) -> BodyState:
        """The body under the pose code ``pose`` [B,6,3] (axis-angle of joints 12..17 relative to canonical).

        vertices: SMPL LBS of the shaped rest mesh with ``R_local`` (plus pose blend shapes if the file has them);
        bone_transforms G_j and vertex_transforms T_v map canonical -> posed.
        """
        _, v, J, rot_adj, T_adj, J_can = self._bones(betas, pose, pose.shape[0])
        rot = self._rotations(pose.shape[0], pose)
        T_loc, J_posed = skinning_transforms(rot, J, self.parents)
        G = self._canonical_to_posed(pose, J_can, T_adj)
        return BodyState(
            vertices=self._lbs(v, rot, T_loc),
            joints=J_posed,
            bone_transforms=G,
            vertex_transforms=blend_transforms(self.lbs_weights, G),
            canonical_vertices=self._lbs(v, rot_adj, T_adj),
            canonical_joints=J_can,
        )

    @full_precision
    def bone_transforms(self, betas: Tensor | None, pose: Tensor | None) -> tuple[Tensor, Tensor]:
        """Canonical->posed bone transforms G [B,24,4,4] and canonical joints [B,24,3], without any vertex work."""
        if pose is None:
            _, _, _, _, _, J_can = self._bones(betas, None)
            B = J_can.shape[0]
            return torch.eye(4, device=J_can.device).expand(B, NUM_JOINTS, 4, 4).clone(), J_can
        _, _, J, _, T_adj, J_can = self._bones(betas, pose, pose.shape[0])
        return self._canonical_to_posed(pose, J_can, T_adj), J_can

    def _canonical_to_posed(self, pose: Tensor, J_can: Tensor, T_adj: Tensor) -> Tensor:
        pose_rot = axis_angle_to_matrix(pose.to(device=self.device, dtype=torch.float32))
        return canonical_to_posed_transforms(pose_rot, POSE_JOINTS, J_can, T_adj[..., :3, :3], self.parents)

    # -- nearest-vertex skinning -------------------------------------------------------------------------------
    def _valid(self) -> Tensor:
        return self.upper_body_mask.nonzero()[:, 0]

    @full_precision
    def inverse_lbs(self, state: BodyState, points: Tensor, return_index: bool = False):
        """Observed -> canonical transforms [B,N,4,4] for points [B,N,3] in ``state``: the inverse of the blended
        forward transform of the nearest valid (``upper_body_mask``) posed vertex. Differentiable w.r.t. the
        state's transforms. With ``return_index`` also returns the vertex ids [B,N]."""
        valid = self._valid()
        Tinv = torch.linalg.inv(state.vertex_transforms[:, valid])
        idx = nearest_index(points, state.vertices[:, valid].to(points.dtype))
        out = gather_transforms(Tinv, idx)
        return (out, valid[idx]) if return_index else out

    @full_precision
    def forward_lbs(self, state: BodyState, points: Tensor, return_index: bool = False):
        """Canonical -> observed transforms [B,N,4,4] for canonical points [B,N,3]: the blended forward transform
        of the nearest valid canonical vertex."""
        if state.canonical_vertices is None:
            raise ValueError("forward_lbs needs a BodyState with canonical_vertices (from canonical() or posed())")
        valid = self._valid()
        idx = nearest_index(points, state.canonical_vertices[:, valid].to(points.dtype))
        out = gather_transforms(state.vertex_transforms[:, valid], idx)
        return (out, valid[idx]) if return_index else out

    # -- face and head placement --------------------------------------------------------------------------------
    @full_precision
    def face_transform(self, betas: Tensor | None, pose: Tensor | None = None) -> Tensor:
        """Face-model frame (metres, origin = face centroid, SMPL axes) -> canonical/observed space, [B,4,4].

        Canonical face centre = FACE_CENTRE moved with the head joint J15 and scaled about it with the head size
        (both linear in the betas, so exactly FACE_CENTRE for betas = 0); the rotation is the identity. With a
        pose, the transform is carried rigidly by the head's bone transform G_15.
        """
        B = pose.shape[0] if pose is not None else (betas.shape[0] if betas is not None else 1)
        betas = self._betas(betas, B)
        c = self.face_centre_canonical0 + betas @ self._face_jd.T + (betas @ self._face_g)[:, None] * self._face_offset
        c = c.expand(B, 3)
        T = rigid_transform(torch.eye(3, device=c.device).expand(B, 3, 3), c)
        if pose is None:
            return T
        G, _ = self.bone_transforms(betas, pose)
        return G[:, HEAD] @ T

    def face_centre(self, betas: Tensor | None, pose: Tensor | None = None) -> Tensor:
        """Face centre [B,3] (metres, canonical frame) in the canonical (pose=None) or posed state."""
        return self.face_transform(betas, pose)[:, :3, 3]

    def head_centre(self, betas: Tensor | None, pose: Tensor | None = None) -> Tensor:
        """Centroid of the head vertices [B,3] (metres, canonical frame), carried by G_15 under a pose."""
        B = pose.shape[0] if pose is not None else (betas.shape[0] if betas is not None else 1)
        _, v, J, rot_adj, T_adj, _ = self._bones(betas, None, B)
        c = self._lbs(v, rot_adj, T_adj)[:, self.head_mask].mean(1)
        if pose is None:
            return c
        G, _ = self.bone_transforms(betas, pose)
        return transform_points(G[:, HEAD], c)

    # -- interop ----------------------------------------------------------------------------------------------
    def to_smpl_dict(self) -> dict:
        """The model's 7 smplx keys as numpy arrays (float32 data, csc J_regressor)."""
        import scipy.sparse as sp

        V = self.num_vertices
        pd = np.zeros((V, 3, 9 * (NUM_JOINTS - 1)), np.float32)
        if self.posedirs.numel():
            pd = self.posedirs.T.reshape(V, 3, -1).cpu().numpy()
        return {
            "v_template": self.v_template.cpu().numpy(),
            "shapedirs": self.shapedirs.cpu().numpy(),
            "posedirs": pd,
            "J_regressor": sp.csc_matrix(self.J_regressor.cpu().numpy()),
            "weights": self.lbs_weights.cpu().numpy(),
            "kintree_table": np.stack([np.array(self.parents), np.arange(NUM_JOINTS)]),
            "f": self.faces.cpu().numpy().astype(np.uint32),
        }
