"""The 3DMM's own expression motion as the backward deformation on the expression grids
(``expression.follow_3dmm``, a Busto addition).

The 3DMM moves each vertex by its expression offset (linear in the coefficients). Off the surface the motion is
continued by the face model's rule (``FaceModel.displace_points``): the inverse-squared-distance weighted mean of the
offsets of the ``k`` nearest *neutral* vertices, faded from 1 within ``full_radius`` to 0 at ``radius``. That forward
field F(y) (neutral -> expressive: x = y + F(y)) is smooth where the backward one is not (a smile's mouth corners).
Per identity the neighbours and weights of every grid node are baked once (:func:`surface_weights`); per frame the
forward field on the nodes is one gather (:func:`forward_field`), and the backward deformation Delta(x) = y - x
solves ``y + F(y) = x`` by fixed-point iterations ``y <- x - F(y)`` at the nodes (:func:`invert_fixed_point`).
Units: metres, face-model axes (the canonical face frame differs from the canonical pose space by a translation).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

NEIGHBOURS = 4
"""Neutral vertices averaged per point (``FaceModel.displace_points``' ``k``)."""
RADIUS = 0.02
"""Metres from the nearest neutral vertex at which the forward field reaches 0."""
FULL_RADIUS = 0.005
"""Metres from the nearest neutral vertex within which the forward field is the vertices' full motion."""


@torch.no_grad()
def surface_weights(points: Tensor, neutral: Tensor, k: int = NEIGHBOURS, radius: float = RADIUS,
                    full_radius: float = FULL_RADIUS) -> tuple[Tensor, Tensor]:
    """Per point [N, 3] its ``k`` nearest neutral vertices [V, 3] (same frame, metres) and their weights:
    (index [N, k] long, weight [N, k]), the weights normalised inverse squared distances times the fade (so 0 for
    every point farther than ``radius`` from all vertices). Scipy k-d tree, CPU."""
    from scipy.spatial import cKDTree

    k = min(k, neutral.shape[0])
    vertices = neutral.detach().cpu().double().numpy()
    query = points.detach().cpu().double().numpy()
    tree = cKDTree(vertices)
    # points beyond ``radius`` of every vertex get weight 0: found by a bounded 1-nearest query (it stops early),
    # then only the points within reach are asked for their k nearest
    nearest, _ = tree.query(query, k=1, distance_upper_bound=radius)
    rows = np.nonzero(np.isfinite(nearest))[0]
    index = torch.zeros(query.shape[0], k, dtype=torch.long)
    weight = torch.zeros(query.shape[0], k, dtype=torch.float64)
    if rows.size:
        _, found = tree.query(query[rows], k=k)
        found = torch.from_numpy(np.asarray(found, dtype=np.int64).reshape(rows.size, k))
        diff = torch.from_numpy(query[rows])[:, None, :] - torch.from_numpy(vertices)[found]
        d2 = (diff * diff).sum(-1)
        w = 1.0 / (d2 + 1e-12)
        w = w / w.sum(dim=1, keepdim=True)
        t = ((d2.min(dim=1).values.sqrt() - full_radius) / (radius - full_radius)).clamp(0.0, 1.0)
        fade = 1.0 - t * t * (3.0 - 2.0 * t)
        picked = torch.from_numpy(rows)
        index[picked], weight[picked] = found, w * fade[:, None]
    return index.to(points.device), weight.to(points.dtype).to(points.device)


def forward_field(offsets: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """The forward expression field at the baked points: offsets [B, V, 3] (per-vertex motion, metres), index and
    weight [B, N, k] from :func:`surface_weights` (one row per offsets row) -> [B, N, 3]."""
    b, n, k = index.shape
    gathered = torch.gather(offsets, 1, index.reshape(b, n * k, 1).expand(-1, -1, 3)).reshape(b, n, k, 3)
    return (gathered * weight[..., None].to(offsets.dtype)).sum(2)


def invert_fixed_point(nodes: Tensor, forward: Callable[[Tensor], Tensor], iterations: int) -> Tensor:
    """Backward displacement Delta [B, N, 3] at nodes [B, N, 3] of a forward field (points [B, N, 3] -> F [B, N, 3]):
    ``iterations`` steps of ``y <- x - F(y)`` from ``y = x``, Delta = y - x (so ``y + F(y) = x`` where the
    iteration converges: |grad F| < 1, as the 3DMM's smooth motion is)."""
    y = nodes
    for _ in range(iterations):
        y = nodes - forward(y)
    return y - nodes


def invert_grid_reference(forward_volume: Tensor, centre: Tensor, half: Tensor, nodes: Tensor,
                          iterations: int) -> Tensor:
    """:func:`invert_grid` through :func:`invert_fixed_point` and ``rendering.sample_grid``."""
    from .rendering import sample_grid

    return invert_fixed_point(nodes, lambda y: sample_grid(forward_volume, y, centre, half, "zeros"), iterations)


def invert_grid(forward_volume: Tensor, centre: Tensor, half: Tensor, nodes: Tensor, iterations: int) -> Tensor:
    """Backward displacement Delta [B, N, 3] (metres) at nodes [B, N, 3] of a forward field held on a grid
    [B, 3, G, G, G] over ``centre +/- half`` (metres; trilinear, zero outside): ``iterations`` fixed-point steps, as
    :func:`invert_grid_reference` computes them, in the grid's normalised coordinates (the field divided by the
    half-extents once, not the points at every step). On the CPU with T > 1 threads the nodes are cut into T
    slabs read as T batch entries (``grid_sample`` parallelises over the batch only)."""
    b, n = nodes.shape[:2]
    scale = 1.0 / half.to(nodes.dtype)
    volume = (forward_volume * scale[None, :, None, None, None].to(forward_volume.dtype)).to(nodes.dtype)
    x = (nodes - centre.to(nodes.dtype)) * scale  # [B, N, 3] in [-1, 1] inside the grid
    slabs = torch.get_num_threads() if (b == 1 and nodes.device.type == "cpu") else 1
    per = -(-n // slabs)
    x = F.pad(x, (0, 0, 0, per * slabs - n)).reshape(b * slabs, 1, 1, per, 3)
    volume = volume.expand(slabs, -1, -1, -1, -1) if slabs > 1 else volume
    y = x
    for _ in range(iterations):
        field = F.grid_sample(volume, y, mode="bilinear", padding_mode="zeros", align_corners=True)
        y = x - field.permute(0, 2, 3, 4, 1)  # [B*T, 1, 1, per, 3]
    delta = ((y - x).reshape(b, slabs * per, 3)[:, :n]) / scale
    return delta
