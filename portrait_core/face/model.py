"""FaceModel: a linear 3DMM (BFM09 / Deep3DFaceRecon layout) in Busto's face frame.

Face frame: **metres** (BFM decimetres x 0.1), origin at the mean shape's vertex centroid, SMPL axes (+Y up, the face
looks toward +Z, the subject's left is +X). ``BodyModel.face_transform(betas, pose)`` maps it into canonical or
observed space. Controls: ``identity`` [B, 80] and ``expression`` [B, 64] (unit-variance coefficients), ``texture``
[B, 80]. Indices held by the model (``faces``, ``landmark_indices``, ``point_buf``) are 0-based.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor, nn

from .io import load_bfm_mat, validate_bfm
from .synthetic import EXPRESSION_NAMES, build_synthetic_bfm

__all__ = ["EXPRESSION_NAMES", "FaceModel", "project_deep3d", "DEEP3D_FOCAL", "DEEP3D_CENTER", "DEEP3D_IMAGE_SIZE",
           "DEEP3D_CAMERA_DISTANCE"]

DM_TO_M = 0.1
#: Deep3DFaceRecon's fixed perspective camera: focal length and principal point in pixels of a 224 crop, camera on
#: +Z at 10 decimetres looking toward -Z.
DEEP3D_FOCAL = 1015.0
DEEP3D_CENTER = 112.0
DEEP3D_IMAGE_SIZE = 224
DEEP3D_CAMERA_DISTANCE = 10.0  # decimetres


def project_deep3d(points: Tensor, focal: float = DEEP3D_FOCAL, center: float = DEEP3D_CENTER,
                   camera_distance: float = DEEP3D_CAMERA_DISTANCE, image_size: int = DEEP3D_IMAGE_SIZE) -> Tensor:
    """Project face-frame points (metres) [..., 3] with Deep3DFaceRecon's camera -> pixels [..., 2].

    As in Deep3DFaceRecon: decimetres, ``z_cam = camera_distance - z``, ``u = focal x / z_cam + center``,
    ``v' = focal y / z_cam + center``; the returned y is the image row direction (down), ``v = image_size - v'``.
    """
    p = points / DM_TO_M
    zc = camera_distance - p[..., 2]
    u = focal * p[..., 0] / zc + center
    v = image_size - (focal * p[..., 1] / zc + center)
    return torch.stack([u, v], dim=-1)


class FaceModel(nn.Module):
    """Linear 3DMM with Deep3DFaceRecon semantics; outputs metres in the face frame (see module docstring).

    Buffers are non-persistent (a generator's state_dict does not carry the licensed basis); build the model with
    ``FaceModel.synthetic()`` or ``FaceModel.from_mat(path)``.
    """

    identity_dim = 80
    expression_dim = 64
    texture_dim = 80

    def __init__(self, bfm: dict, source: str = "<dict>"):
        super().__init__()
        d = validate_bfm(bfm, source=source)
        N = d["meanshape"].shape[1] // 3
        mean = d["meanshape"].reshape(N, 3).astype(np.float64)
        mean = mean - mean.mean(axis=0, keepdims=True)  # Deep3DFaceRecon re-centres (recenter=True)
        f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        i64 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        self.source = source
        self.register_buffer("mean_shape", f32(mean * DM_TO_M), persistent=False)  # [N, 3] m
        self.register_buffer("id_base", f32(d["idBase"] * DM_TO_M), persistent=False)  # [3N, 80] m / unit
        self.register_buffer("ex_base", f32(d["exBase"] * DM_TO_M), persistent=False)  # [3N, 64] m / unit
        self.register_buffer("mean_tex", f32(d["meantex"].reshape(N, 3) / 255.0), persistent=False)  # [N, 3] 0..1
        self.register_buffer("tex_base", f32(d["texBase"] / 255.0), persistent=False)  # [3N, 80]
        self.register_buffer("faces", i64(d["tri"] - 1), persistent=False)  # [F, 3]
        self.register_buffer("point_buf", i64(d["point_buf"] - 1), persistent=False)  # [N, 8], F = dummy face
        self.register_buffer("landmark_indices", i64(d["keypoints"].reshape(-1) - 1), persistent=False)  # [68]
        self.register_buffer("front_mask_indices", i64(d["frontmask2_idx"].reshape(-1) - 1), persistent=False)
        self.register_buffer("front_mask_faces", i64(d["tri_mask2"] - 1), persistent=False)
        self.register_buffer("skin_mask", torch.from_numpy(d["skinmask"].reshape(-1) > 0.5), persistent=False)
        # one vertex per 1 cm voxel of the mean shape: a coarse cover used to skip far query points quickly
        vox = np.floor(mean * DM_TO_M / 0.01).astype(np.int64)
        _, first = np.unique(vox, axis=0, return_index=True)
        self.register_buffer("_coarse", i64(np.sort(first)), persistent=False)

    # --- construction --------------------------------------------------------------------------------------
    @classmethod
    def synthetic(cls) -> FaceModel:
        """The embedded deterministic synthetic 3DMM (``portrait_core.face.synthetic``)."""
        return cls(build_synthetic_bfm(), source="<synthetic BFM>")

    @classmethod
    def from_mat(cls, path: str | os.PathLike) -> FaceModel:
        """Load a user-supplied ``BFM_model_front.mat`` (Deep3DFaceRecon layout; see ``load_bfm_mat``)."""
        return cls(load_bfm_mat(path), source=str(path))

    # --- sizes -----------------------------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    # --- geometry ----------------------------------------------------------------------------------------------
    def _coeffs(self, c: Tensor | None, dim: int, name: str, batch: int | None) -> Tensor | None:
        if c is None:
            return None
        if c.ndim != 2 or c.shape[1] != dim:
            raise ValueError(f"FaceModel: {name} must be [B, {dim}], got {tuple(c.shape)}")
        if batch is not None and c.shape[0] != batch:
            raise ValueError(f"FaceModel: {name} has batch {c.shape[0]}, expected {batch}")
        return c.to(self.mean_shape.dtype)

    def identity_offsets(self, identity: Tensor) -> Tensor:
        """[B, 80] -> [B, N, 3] identity displacement from the mean shape, metres."""
        identity = self._coeffs(identity, self.identity_dim, "identity", None)
        return (identity @ self.id_base.T).reshape(identity.shape[0], -1, 3)

    def expression_offsets(self, identity: Tensor | None, expression: Tensor) -> Tensor:
        """[B, 64] -> [B, N, 3] expression displacement, metres (linear 3DMM: independent of ``identity``)."""
        expression = self._coeffs(expression, self.expression_dim, "expression", None)
        self._coeffs(identity, self.identity_dim, "identity", expression.shape[0])
        return (expression @ self.ex_base.T).reshape(expression.shape[0], -1, 3)

    def neutral_vertices(self, identity: Tensor) -> Tensor:
        """[B, 80] -> [B, N, 3] identity shape with zero expression, metres, face frame."""
        return self.mean_shape + self.identity_offsets(identity)

    def vertices(self, identity: Tensor, expression: Tensor) -> Tensor:
        """[B, 80], [B, 64] -> [B, N, 3] face vertices, metres, face frame (origin = mean-shape centroid)."""
        return self.neutral_vertices(identity) + self.expression_offsets(identity, expression)

    def landmarks(self, identity: Tensor, expression: Tensor) -> Tensor:
        """[B, 80], [B, 64] -> [B, 68, 3] iBUG-68 landmarks (the landmark vertices), metres, face frame.

        Evaluates only the 68 landmark rows of the bases (cheap enough for per-step losses).
        """
        identity = self._coeffs(identity, self.identity_dim, "identity", None)
        expression = self._coeffs(expression, self.expression_dim, "expression", identity.shape[0])
        rows = (self.landmark_indices[:, None] * 3 + torch.arange(3, device=self.landmark_indices.device)).reshape(-1)
        off = identity @ self.id_base[rows].T + expression @ self.ex_base[rows].T
        return self.mean_shape[self.landmark_indices] + off.reshape(identity.shape[0], -1, 3)

    def albedo(self, texture: Tensor) -> Tensor:
        """[B, 80] -> [B, N, 3] per-vertex albedo, RGB in [0, 1] (clamped)."""
        texture = self._coeffs(texture, self.texture_dim, "texture", None)
        t = self.mean_tex + (texture @ self.tex_base.T).reshape(texture.shape[0], -1, 3)
        return t.clamp(0.0, 1.0)

    def vertex_normals(self, vertices: Tensor) -> Tensor:
        """[B, N, 3] -> [B, N, 3] unit vertex normals as Deep3DFaceRecon computes them.

        Unit face normals ``(v0 - v1) x (v1 - v2)``, a zero normal appended for the padding face F, summed over
        ``point_buf`` and normalised (equal weight per incident face).
        """
        f = self.faces
        v0, v1, v2 = vertices[:, f[:, 0]], vertices[:, f[:, 1]], vertices[:, f[:, 2]]
        fn = torch.nn.functional.normalize(torch.cross(v0 - v1, v1 - v2, dim=-1), dim=-1)
        fn = torch.cat([fn, fn.new_zeros(fn.shape[0], 1, 3)], dim=1)
        vn = fn[:, self.point_buf].sum(dim=2)
        return torch.nn.functional.normalize(vn, dim=-1)

    # --- query points --------------------------------------------------------------------------------------------
    def displace_points(self, points: Tensor, identity: Tensor, expression: Tensor, *, k: int = 4,
                        radius: float = 0.02, full_radius: float = 0.005, chunk: int | None = None,
                        method: str = "auto") -> Tensor:
        """Expression displacement at query points near the face: [B, M, 3] (metres, face frame) -> [B, M, 3].

        ``points`` are in the neutral (zero-expression) face of ``identity``. Each point takes the inverse-squared-
        distance weighted mean of the expression offsets of its ``k`` nearest neutral vertices, scaled by a fade that
        is 1 up to ``full_radius`` from the nearest vertex and falls smoothly (smoothstep) to 0 at ``radius``; points
        farther than ``radius`` get exactly 0. At a vertex the result equals ``expression_offsets`` there.
        Batched and chunked (``chunk`` query points at a time). Neighbours: ``method='kdtree'`` (scipy, CPU),
        ``'cdist'`` (chunked torch, after a coarse far-point rejection; any device) or ``'auto'`` (kd-tree on CPU).
        Differentiable w.r.t. ``expression``, ``identity`` and ``points`` (the choice of neighbours is not).
        """
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"FaceModel.displace_points: points must be [B, M, 3], got {tuple(points.shape)}")
        B, M, _ = points.shape
        identity = self._coeffs(identity, self.identity_dim, "identity", B)
        expression = self._coeffs(expression, self.expression_dim, "expression", B)
        points = points.to(self.mean_shape.dtype)
        neutral = self.neutral_vertices(identity)  # [B, N, 3]
        offsets = self.expression_offsets(identity, expression)  # [B, N, 3]
        N = neutral.shape[1]
        k = min(k, N)
        chunk = chunk or max(256, (1 << 23) // N)
        out = points.new_zeros(B, M, 3)
        eps2 = 1e-12  # (1 micrometre)^2: a point on a vertex takes that vertex's offset
        results = []
        for b in range(B):
            nb = neutral[b].detach()
            sel_all, nn_all = self._neighbours(points[b].detach(), nb, k, radius, chunk, method)
            ob = out[b]
            for s in range(0, sel_all.numel(), chunk):
                sel, nn_idx = sel_all[s: s + chunk], nn_all[s: s + chunk]
                p = points[b, sel]
                diff = p[:, None, :] - neutral[b][nn_idx]  # [m, k, 3]
                d2 = (diff * diff).sum(-1)
                w = 1.0 / (d2 + eps2)
                w = w / w.sum(dim=1, keepdim=True)
                dmin = d2.min(dim=1).values.clamp_min(0).sqrt()
                t = ((dmin - full_radius) / (radius - full_radius)).clamp(0.0, 1.0)
                fade = 1.0 - t * t * (3.0 - 2.0 * t)
                val = (w[..., None] * offsets[b][nn_idx]).sum(dim=1) * fade[:, None]
                ob = ob.index_put((sel,), val)
            results.append(ob)
        return torch.stack(results, dim=0)

    @torch.no_grad()
    def _neighbours(self, q: Tensor, verts: Tensor, k: int, radius: float, chunk: int,
                    method: str = "auto") -> tuple[Tensor, Tensor]:
        """Query points within ``radius`` of some vertex and their ``k`` nearest vertices: (rows [m], idx [m, k]).

        CPU: a scipy kd-tree. Other devices: chunked ``cdist`` after rejecting far points against a coarse cover
        (one vertex per 1 cm voxel; every vertex lies within ``cover`` of it, so a point farther than
        ``radius + cover`` from the cover is farther than ``radius`` from every vertex).
        """
        if method not in ("auto", "kdtree", "cdist"):
            raise ValueError(f"FaceModel.displace_points: method must be 'auto', 'kdtree' or 'cdist', got {method!r}")
        if method == "kdtree" or (method == "auto" and q.device.type == "cpu"):
            from scipy.spatial import cKDTree

            tree = cKDTree(verts.double().cpu().numpy())
            qn = q.double().cpu().numpy()
            d1, _ = tree.query(qn, k=1, distance_upper_bound=radius)
            rows = np.nonzero(np.isfinite(d1))[0]
            if rows.size == 0:
                z = torch.zeros(0, dtype=torch.long, device=q.device)
                return z, z.reshape(0, 1).expand(0, k)
            _, idx = tree.query(qn[rows], k=k)
            idx = idx.reshape(rows.size, k)
            return torch.from_numpy(rows).long().to(q.device), torch.from_numpy(idx).long().to(q.device)
        coarse = verts[self._coarse]
        cover = torch.cdist(verts, coarse).min(dim=1).values.max()
        near = torch.cat([torch.cdist(q[s: s + chunk], coarse).min(dim=1).values for s in range(0, len(q), chunk)])
        rows = (near <= radius + cover + 1e-6).nonzero().squeeze(1)
        idx = [torch.cdist(q[rows[s: s + chunk]], verts).topk(k, dim=1, largest=False).indices
               for s in range(0, rows.numel(), chunk)]
        idx = torch.cat(idx) if idx else torch.zeros(0, k, dtype=torch.long, device=q.device)
        d = (q[rows] - verts[idx[:, 0]]).norm(dim=-1) if rows.numel() else q.new_zeros(0)
        keep = d <= radius
        return rows[keep], idx[keep]

    def extra_repr(self) -> str:
        return f"source={self.source!r}, N={self.num_vertices}, F={self.num_faces}"
