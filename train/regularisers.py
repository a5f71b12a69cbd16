"""Deformation regularisers shared by every training objective (pure functions of the generator and a batch of
labels): 3DMM imitation, expression smoothness, minimal deformation, expression shading sparsity and the open
mouth's shading target, and the pose smoother loss. Distances are metres; the weights (``LossConfig``) are
calibrated once in those units.
"""

from __future__ import annotations

import torch
from torch import Tensor

from portrait_core.geometry.polygon import inside_polygon
from train import losses as L


def sweep_expressions(expression: Tensor, low: Tensor, high: Tensor, fraction: float,
                      gen: torch.Generator) -> Tensor:
    """[B, 64] label expressions with ``fraction`` of the rows replaced by a single slider move: one of the
    leading K components (``low``/``high`` [K], the range the training labels reach) at a value uniform in its
    range, the others 0. The labels cluster near neutral (a smile of 2.5 is a 2-sigma label), and with all
    components at once the large jaw offsets dominate the imitation, so the smaller controls fall short of the
    3DMM at the ends of their sliders; these rows fit each control alone over its whole range."""
    if fraction <= 0:
        return expression
    b, k = expression.shape[0], low.shape[0]
    rows = torch.rand(b, generator=gen) < fraction
    comp = torch.randint(k, (b,), generator=gen)
    value = low[comp] + torch.rand(b, generator=gen) * (high[comp] - low[comp])
    sweep = torch.zeros_like(expression)
    sweep[torch.arange(b), comp] = value.to(expression)
    return torch.where(rows[:, None], sweep, expression)


def imitation_vertices(offsets: Tensor, n: int, moving_fraction: float, gen: torch.Generator) -> Tensor:
    """``n`` 3DMM vertex indices per image for the imitation term, [B, n] long: ``moving_fraction`` of them drawn
    with probability proportional to that image's offset length (the lips, jaw and mouth corners that make an
    expression visible are a few percent of the face; per image, so a smile's corners are not drowned by another
    image's open jaw), the rest uniformly (shared by the batch). offsets [B, N, 3]."""
    b, count = offsets.shape[:2]
    n_moving = int(round(n * moving_fraction))
    uniform = torch.randint(count, (1, n - n_moving), generator=gen).expand(b, -1)
    weight = offsets.norm(dim=-1)
    still = ~(weight.amax(1) > 0)  # nothing moves (a neutral image): all uniform
    weight = torch.where(still[:, None], torch.ones_like(weight), weight)
    moving = torch.multinomial(weight, n_moving, replacement=True, generator=gen) if n_moving else uniform[:, :0]
    return torch.cat([moving, uniform], 1)


INNER_LIPS = list(range(60, 68))
"""iBUG-68 inner-lip contour (60 and 64 are the corners)."""


def mouth_interior_shading(G, identity: Tensor, expression: Tensor, body_shape: Tensor, n: int,
                           gen: torch.Generator, logit: float = 3.0, depth: float = 0.04) -> tuple[Tensor, Tensor]:
    """The 3DMM's open mouth as a shading target: ``n`` canonical-pose points [B, n, 3] around each expressive
    mouth (uniform in the box of the lip landmarks, widened 1 cm, from 1 cm in front of the lips to ``depth``
    behind them) and their target shading logits [B, n]: ``logit`` (dark) where a point lies inside the inner-lip
    contour seen from the front (+Z), behind the lip line and outside the neutral expression's contour, 0
    elsewhere; so the neutral target is 0, as the shading itself is."""
    lm = G.face.landmarks(identity, expression)  # [B, 68, 3], face frame
    lips = lm[:, 48:68]
    lo, hi = lips.amin(1) - 0.01, lips.amax(1) + 0.01
    lo = torch.cat([lo[:, :2], lips[:, :, 2].amax(1, keepdim=True) - depth], -1)
    u = torch.rand(1, n, 3, generator=gen).to(lo)
    pts = lo[:, None] + u * (hi - lo)[:, None]
    inner = lm[:, INNER_LIPS]
    lip_line = inner[:, :, 2].amax(1, keepdim=True)  # the front of the inner lips
    inside = inside_polygon(pts[..., :2], inner[..., :2]) & (pts[..., 2] <= lip_line)
    neutral = G.face.landmarks(identity, torch.zeros_like(expression))[:, INNER_LIPS]
    inside &= ~inside_polygon(pts[..., :2], neutral[..., :2])  # what the expression opens (a neutral slit is not)
    T = G.body.face_transform(body_shape)
    canonical = pts @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
    return canonical, inside.to(pts.dtype) * logit


def deformation_regularisers(G, identity: Tensor, expression: Tensor, body_shape: Tensor, n: int, jitter: float,
                             gen: torch.Generator, moving_fraction: float = 0.0,
                             shading_imitation: bool = False) -> dict[str, Tensor]:
    """Unweighted regulariser terms of the expression branch for a batch of labels (CPU ``gen`` draws the
    points; they are shared by the batch, so the terms do not depend on how a global batch is split across ranks):

    * ``imitation``: the generator's expression deformation at ``n`` 3DMM vertices (:func:`imitation_vertices`)
      placed in canonical-pose space vs the deformation the 3DMM implies there (metres^2);
    * ``smooth_expression``: finite differences under ``jitter`` (metres) at those vertices and ``n`` random
      head-box points; ``minimal_deformation``: mean |delta|^2 at the head-box points;
    * with ``expression.shading``: ``shading`` (sparsity at the head-box points) and, if ``shading_imitation``,
      ``shading_imitation`` (:func:`mouth_interior_shading`)."""
    b, device = identity.shape[0], identity.device
    face = G.face
    with torch.no_grad():
        all_offsets = face.expression_offsets(identity, expression)
        idx = imitation_vertices(all_offsets.cpu(), n, moving_fraction, gen).to(device)[..., None].expand(-1, -1, 3)
        verts = face.vertices(identity, expression).gather(1, idx)
        offsets = all_offsets.gather(1, idx)
        T = G.body.face_transform(body_shape)
        pts = verts @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
        target = -(offsets @ T[:, :3, :3].transpose(1, 2))
        box = G.head_box_centre + (torch.rand(1, n, 3, generator=gen).to(device) * 2 - 1) * G.head_box_half
        box = box.expand(b, -1, -1)
        jit = torch.randn(1, 2 * n, 3, generator=gen).to(device).expand(b, -1, -1) * jitter
    all_pts = torch.cat([pts, box], 1)
    fields = G.expression_fields(torch.cat([all_pts, all_pts + jit], 1), identity, expression, body_shape)
    delta, delta_j = fields[:, :2 * n, :3], fields[:, 2 * n:, :3]
    out = {"imitation": L.imitation(delta[:, :n], target), "smooth_expression": L.smoothness(delta, delta_j, jitter),
           "minimal_deformation": L.minimal_deformation(delta[:, n:])}
    if fields.shape[-1] > 3:
        out["shading"] = L.shading_sparsity(fields[:, n:2 * n, 3])
        if shading_imitation:
            with torch.no_grad():
                mouth_pts, mouth_target = mouth_interior_shading(G, identity, expression, body_shape, n, gen)
            pred = G.expression_fields(mouth_pts, identity, expression, body_shape)[..., 3]
            out["shading_imitation"] = (pred - mouth_target).square().mean()
    return out


def pose_smoother_term(G, body_shape: Tensor, pose: Tensor, entries: Tensor | None = None) -> Tensor:
    """AniPortraitGAN's smoother loss ||D(T) - AvgPool(T)||_1 on the inverse-LBS entries T of this batch's poses
    (``losses.pose_smoother_l1``; ``entries``: T when already computed); gradients reach only the smoother."""
    if entries is None:
        with torch.no_grad():
            entries = G.pose_entries(G.body.posed(body_shape, pose))
    return L.pose_smoother_l1(G.pose_smoother(entries), G.pose_smoother.box_filter(entries))
