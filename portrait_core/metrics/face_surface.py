"""Where the rendered face lies relative to the 3DMM face of its labels.

The SynthPortrait renderer draws the face *on* the 3DMM surface of each record's (identity, expression), and for
real photos the 3DMM fit is the best face geometry we have. So the 3DMM depth seen from the face camera is a
depth target for the face region: :func:`face_depth_target` rasterises it (front-most vertex per pixel, inner face
only), :func:`surface_gap` compares a render's expected depth with it. Depths are camera z in metres; a positive
gap means the rendered surface lies *behind* the 3DMM surface (farther from the camera).

The inner face is the part of the mean face inside the polygon of the jaw line and the brows (iBUG-68 landmarks
0-16 and 26-17): forehead, ears and neck are left out, where hair or the body may lie in front of or instead of
the 3DMM surface.
"""

from __future__ import annotations

import torch
from torch import Tensor

from portrait_core.geometry.polygon import inside_polygon

__all__ = ["inner_face_vertices", "face_vertices_observed", "splat_depth", "face_depth_target", "surface_gap",
           "gap_summary"]

JAW_AND_BROWS = [*range(0, 17), *range(26, 16, -1)]
"""iBUG-68 indices of the inner-face outline: jaw line left to right, then the brows right to left."""


def inner_face_vertices(face_model) -> Tensor:
    """[N] bool: the mean face's vertices inside the jaw-and-brows outline (x, y of the face frame)."""
    mean = face_model.neutral_vertices(torch.zeros(1, face_model.identity_dim, device=face_model.mean_shape.device))
    outline = mean[:, face_model.landmark_indices[JAW_AND_BROWS]]
    return inside_polygon(mean[..., :2], outline[..., :2])[0]


def face_vertices_observed(face_model, body_model, identity: Tensor, expression: Tensor, body_shape: Tensor,
                           pose: Tensor) -> Tensor:
    """The 3DMM vertices of (identity, expression) placed on the posed body (``body.face_transform``): [B, N, 3],
    observed frame, metres."""
    v = face_model.vertices(identity, expression)
    T = body_model.face_transform(body_shape, pose).to(v)
    return v @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]


def splat_depth(uv: Tensor, z: Tensor, keep: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """Front-most depth per pixel of points at normalised image coordinates ``uv`` [B, N, 2] (x right, y down) with
    camera depths ``z`` [B, N]; only points where ``keep`` [B, N] (bool) and inside the frame count. Returns depth
    [B, 1, R, R] (0 where no point lands) and the covered-pixel mask [B, 1, R, R] (bool)."""
    b, r = uv.shape[0], resolution
    pix = (uv * r).floor().long()
    keep = keep & (pix >= 0).all(-1) & (pix < r).all(-1) & (z > 0)
    index = (pix[..., 1].clamp(0, r - 1) * r + pix[..., 0].clamp(0, r - 1))
    far = torch.full_like(z, float("inf"))
    depth = torch.full((b, r * r), float("inf"), dtype=z.dtype, device=z.device)
    depth = depth.scatter_reduce(1, index, torch.where(keep, z, far), reduce="amin")
    covered = torch.isfinite(depth)
    depth = torch.where(covered, depth, torch.zeros_like(depth))
    return depth.reshape(b, 1, r, r), covered.reshape(b, 1, r, r)


@torch.no_grad()
def face_depth_target(face_model, body_model, camera, identity: Tensor, expression: Tensor, body_shape: Tensor,
                      pose: Tensor, resolution: int, inner: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The 3DMM's inner-face depth seen by ``camera`` (the face camera or a window of it) at ``resolution``²:
    (depth [B, 1, R, R] metres, covered [B, 1, R, R] bool). ``inner``: :func:`inner_face_vertices` (computed if
    None). The whole face is z-buffered (so the inner face is not seen through the nose), then only pixels whose
    front-most vertex is an inner-face vertex are kept."""
    if inner is None:
        inner = inner_face_vertices(face_model)
    v = face_vertices_observed(face_model, body_model, identity, expression, body_shape, pose)
    uv, z = camera.project_normalised(v)
    everything = torch.ones_like(z, dtype=torch.bool)
    depth, covered = splat_depth(uv, z, everything, resolution)
    inner_depth, inner_covered = splat_depth(uv, z, inner.to(z.device)[None].expand_as(z), resolution)
    keep = covered & inner_covered & (inner_depth <= depth + 1e-6)
    return torch.where(keep, inner_depth, torch.zeros_like(depth)), keep


def surface_gap(render_depth: Tensor, render_alpha: Tensor, target: Tensor, covered: Tensor,
                alpha_min: float = 0.5) -> tuple[Tensor, Tensor]:
    """Per-pixel rendered depth - target depth [B, 1, R, R] (metres; differentiable in ``render_depth``) and the
    mask [B, 1, R, R] of pixels compared: covered by the target and rendered with alpha > ``alpha_min``."""
    mask = covered & (render_alpha.detach() > alpha_min)
    return render_depth - target, mask


def gap_summary(gap: Tensor, mask: Tensor) -> dict[str, float]:
    """Mean, mean |.|, and the 5/25/50/75/95 % quantiles of a gap over its mask, in millimetres."""
    g = gap.detach()[mask].double() * 1000.0
    if g.numel() == 0:
        return {"pixels": 0}
    q = torch.quantile(g, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=g.dtype))
    return {"mean_mm": float(g.mean()), "mean_abs_mm": float(g.abs().mean()),
            **{f"q{p}_mm": float(v) for p, v in zip((5, 25, 50, 75, 95), q)}, "pixels": int(g.numel())}
