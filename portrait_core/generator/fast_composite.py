"""Front-to-back compositing with fewer passes: :func:`composite_fast` returns what
:func:`rendering.composite` (its plain reference) returns, to float rounding.

Savings per frame: the sort, its gather and the scatter back are skipped when the layers already lie in depth
order (nested level shells entered from outside, the usual case: one check per call, CPU only, since the check
reads a flag on the host); the exclusive transmittance is a cumulative product multiplied in place (no
concatenated copy); colours and features are weighted sums by one batched
matrix product each (no [..., L, C] product); masked depths are made once and shared by the mean depth and the background depth.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rendering import Composite

__all__ = ["composite_fast", "layers_in_depth_order"]


def layers_in_depth_order(depth: Tensor, valid: Tensor) -> bool:
    """True when, along every ray, the valid layers come first and their depths never decrease (then sorting by
    depth with invalid layers last is the identity, up to the order of equal keys)."""
    key = torch.where(valid, depth, torch.full_like(depth, float("inf")))
    return bool((key[..., 1:] >= key[..., :-1]).all())


def composite_fast(rgb: Tensor, alpha: Tensor, depth: Tensor, valid: Tensor, background: float = 1.0,
                   features: Tensor | None = None, background_depth: Tensor | float | None = None) -> Composite:
    """:func:`rendering.composite` (same arguments and result) with fewer temporaries; see the module text."""
    alpha = alpha * valid.to(alpha.dtype)
    presorted = depth.device.type == "cpu" and layers_in_depth_order(depth, valid)
    if presorted:
        a_sorted = alpha
    else:
        key = torch.where(valid, depth, torch.full_like(depth, float("inf")))
        order = key.argsort(dim=-1)
        a_sorted = alpha.gather(-1, order)
    transmittance = torch.cumprod(1.0 - a_sorted, -1)  # inclusive; w_k = a_k T_{k-1}
    if torch.is_grad_enabled():  # out of place: the product's backward needs both factors unchanged
        w_sorted = torch.cat([a_sorted[..., :1], a_sorted[..., 1:] * transmittance[..., :-1]], -1)
    else:
        w_sorted = a_sorted.clone()
        w_sorted[..., 1:].mul_(transmittance[..., :-1])
    weights = w_sorted if presorted else torch.zeros_like(w_sorted).scatter_(-1, order, w_sorted)
    opacity = weights.sum(-1)
    colour = torch.matmul(weights[..., None, :], rgb)[..., 0, :].add_((1.0 - opacity[..., None]) * background)
    d_valid = depth.masked_fill(~valid, 0.0)
    mean_depth = (weights * d_valid).sum(-1) / opacity.clamp_min(1e-6)
    if background_depth is None:
        background_depth = d_valid.amax(-1)
    empty_depth = torch.as_tensor(background_depth, dtype=depth.dtype, device=depth.device).expand_as(mean_depth)
    mean_depth = torch.where(opacity > 1e-6, mean_depth, empty_depth)
    feats = None if features is None else torch.matmul(weights[..., None, :], features)[..., 0, :]
    return Composite(colour, weights, mean_depth, opacity, feats)
