"""Multi-view consistency: reproject view A into view B through A's depth and compare colours.

For every pixel of A with alpha > ``alpha_min``, the surface point ``origin + t * direction`` (depth = camera z)
is projected into B; where B sees the same point (|B's depth there - the point's B-depth| < ``depth_tol``, i.e.
not occluded) the colour difference is measured. Returns the mean absolute colour error (images in [-1, 1]) over
those pixels, plus the fraction of A's pixels that were compared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def unproject(camera, depth: Tensor) -> Tensor:
    """Depth [B, 1, H, W] (camera z, metres) -> world points [B, H*W, 3]."""
    b, _, h, w = depth.shape
    o, d = camera.rays(h, w)
    cos = (d * camera.forward[:, None, :]).sum(-1, keepdim=True)
    return o + d * (depth.reshape(b, -1, 1) / cos.clamp_min(1e-6))


def reprojection_difference(image_a: Tensor, depth_a: Tensor, alpha_a: Tensor, cam_a, image_b: Tensor,
                             depth_b: Tensor, cam_b, alpha_min: float = 0.5, depth_tol: float = 0.02
                             ) -> tuple[Tensor, Tensor]:
    """Per-pixel |colour_A - colour_B reprojected| [B, 1, H, W] (differentiable in both images; channel mean) and
    the mask [B, 1, H, W] (bool, no gradient) of A's pixels that B sees: alpha_A > ``alpha_min``, inside B's frame,
    not occluded in B (|B's depth - the point's B-depth| < ``depth_tol`` metres)."""
    b, _, h, w = image_a.shape
    with torch.no_grad():
        pts = unproject(cam_a, depth_a.detach())
        uv, z = cam_b.project_normalised(pts)
        grid = (uv * 2 - 1).reshape(b, h, w, 2)  # align_corners=False pixel-centre convention
        dep_b = F.grid_sample(depth_b.detach(), grid, mode="nearest", padding_mode="border", align_corners=False)
        inside = ((uv >= 0) & (uv <= 1)).all(-1).reshape(b, 1, h, w)
        visible = (alpha_a.detach() > alpha_min) & inside & ((dep_b - z.reshape(b, 1, h, w)).abs() < depth_tol)
    col_b = F.grid_sample(image_b, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return (image_a - col_b).abs().mean(1, keepdim=True), visible


def mean_over(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the pixels where ``mask`` [B, 1, H, W] is set (0 when none is)."""
    return (values * mask).sum() / mask.sum().clamp_min(1)


def reprojection_error(image_a: Tensor, depth_a: Tensor, alpha_a: Tensor, cam_a, image_b: Tensor, depth_b: Tensor,
                       cam_b, alpha_min: float = 0.5, depth_tol: float = 0.02) -> tuple[float, float]:
    """(mean |colour_A - colour_B| over mutually visible pixels, fraction of A's pixels compared)."""
    diff, visible = reprojection_difference(image_a, depth_a, alpha_a, cam_a, image_b, depth_b, cam_b, alpha_min,
                                            depth_tol)
    n = visible.sum()
    if n == 0:
        return float("nan"), 0.0
    return float(mean_over(diff, visible)), float(n) / float((alpha_a > alpha_min).sum().clamp_min(1))
