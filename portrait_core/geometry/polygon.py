"""2-D polygon tests (pure, vectorised torch)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["inside_polygon"]


def inside_polygon(points: Tensor, polygon: Tensor) -> Tensor:
    """Even-odd test of 2D points [B, P, 2] against closed polygons [B, K, 2] -> [B, P] bool (vectorised over
    edges)."""
    a = polygon[:, None, :, :]  # [B, 1, K, 2]
    b = polygon.roll(-1, dims=1)[:, None, :, :]
    p = points[:, :, None, :]  # [B, P, 1, 2]
    straddles = (a[..., 1] > p[..., 1]) != (b[..., 1] > p[..., 1])
    dy = b[..., 1] - a[..., 1]
    x_cross = a[..., 0] + (p[..., 1] - a[..., 1]) * (b[..., 0] - a[..., 0]) / torch.where(dy == 0, torch.ones_like(dy), dy)
    return ((straddles & (p[..., 0] < x_cross)).sum(-1) % 2) == 1
