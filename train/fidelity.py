"""Fidelity measures of a trained generator against the labels it was trained on (the model card's rows beyond
PSNR): how far its expression deformation follows the 3DMM, how strongly its clothing colours follow the
appearance code, and what super-resolution adds over bicubic upsampling. Pure functions of a generator and
labelled data; ``train.evaluate --heldout`` reports them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from portrait_core.face import EXPRESSION_NAMES
from portrait_core.generator import Controls, Latents
from train.cameras import downsample, face_camera, portrait_camera

__all__ = ["expression_fidelity", "clothing_colour_fidelity", "face_surface_fidelity", "CLOTHING_STRIP"]


@torch.no_grad()
def expression_fidelity(G, identity: Tensor, body_shape: Tensor, controls: tuple[str, ...] = ("jaw_open", "smile"),
                        value: float = 2.5, vertices: int = 200) -> dict[str, dict[str, float]]:
    """For each named control alone at ``value`` (2.5: the contact sheet's extreme, a 2-sigma label), the
    generator's expression deformation as avatars evaluate it (the head-box grid, or the network when
    ``render.expression_grid`` is 0) at the ``vertices`` 3DMM vertices that move most, against the deformation
    the 3DMM implies there (the imitation target), averaged over the identities [N, 80] / body shapes [N, 10]:
    ``target_mm`` (mean 3DMM motion), ``reached_mm`` (mean component of the generator's motion along the 3DMM's),
    ``ratio`` (reached / target) and ``error_mm`` (mean |difference|)."""
    out = {}
    n = identity.shape[0]
    T = G.body.face_transform(body_shape)
    for name in controls:
        expression = torch.zeros(n, G.cfg.expression_dim, device=identity.device)
        expression[:, EXPRESSION_NAMES[name]] = value
        offsets = G.face.expression_offsets(identity, expression)  # [N, V, 3], face frame
        idx = offsets.norm(dim=-1).topk(vertices, dim=1).indices[..., None].expand(-1, -1, 3)
        verts = G.face.vertices(identity, expression).gather(1, idx)
        points = verts @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]  # expressive, canonical pose
        target = -(offsets.gather(1, idx) @ T[:, :3, :3].transpose(1, 2))
        delta = G.expression_offsets_fn(identity, expression, body_shape=body_shape)(points)
        length = target.norm(dim=-1)
        along = (delta * target).sum(-1) / length.clamp_min(1e-9)
        out[name] = {"target_mm": float(length.mean() * 1e3), "reached_mm": float(along.mean() * 1e3),
                     "ratio": float(along.mean() / length.mean()),
                     "error_mm": float((delta - target).norm(dim=-1).mean() * 1e3)}
    return out


CLOTHING_STRIP = 0.2
"""The bottom fraction of a portrait whose masked mean colour stands for the clothing."""


@torch.no_grad()
def clothing_colour_fidelity(G, data, index: Tensor, resolution: int = 64, batch: int = 8) -> dict[str, list]:
    """Records ``index`` rendered with their own labels: the mean colour of the clothed strip (the bottom
    :data:`CLOTHING_STRIP` of the frame, inside both masks) of each render against its image's, per RGB channel:
    least-squares ``slope`` of render on target (1: colours as saturated as the data; below 1: washed out
    toward the mean) and Pearson ``correlation``; ``images`` used."""
    renders, targets = [], []
    for start in range(0, index.numel(), batch):
        bt = data.batch(index[start:start + batch])
        out = G(Latents(bt["identity"], bt["appearance"]), Controls(bt["pose"], bt["expression"], bt["body_shape"]),
                portrait_camera(bt["camera"]), resolution=resolution)
        size = out.image.shape[-1]
        image, mask = (downsample(bt["image"], size) + 1) / 2, downsample(bt["mask"], size)
        rows = max(1, int(round(size * CLOTHING_STRIP)))
        weight = ((mask > 0.5) & (out.alpha > 0.5)).to(image.dtype)[..., -rows:, :]
        total = weight.sum((1, 2, 3)).clamp_min(1.0)[:, None]
        renders.append(((out.image[..., -rows:, :] + 1) / 2 * weight).sum((2, 3)) / total)
        targets.append((image[..., -rows:, :] * weight).sum((2, 3)) / total)
    x, y = torch.cat(targets).double().numpy(), torch.cat(renders).double().numpy()
    slope, corr = zip(*(slope_and_correlation(x[:, c], y[:, c]) for c in range(3)))
    return {"slope": list(slope), "correlation": list(corr), "images": int(x.shape[0])}


@torch.no_grad()
def face_surface_fidelity(G, data, index: Tensor, resolution: int = 64, batch: int = 8) -> dict[str, float]:
    """Records ``index`` rendered from their own face cameras with their own labels: the rendered depth minus the
    depth of the record's 3DMM inner face (``portrait_core.metrics.face_surface``; positive = the rendered face
    lies behind the 3DMM surface the data is drawn on) over the pixels both cover, in millimetres: mean, mean |.|,
    quantiles and the number of pixels."""
    from portrait_core.metrics import face_surface as FS

    inner = FS.inner_face_vertices(G.face)
    gaps, masks = [], []
    for start in range(0, index.numel(), batch):
        bt = data.batch(index[start:start + batch])
        cam = face_camera(bt["face_camera"])
        out = G(Latents(bt["identity"], bt["appearance"]), Controls(bt["pose"], bt["expression"], bt["body_shape"]),
                cam, resolution=resolution)
        target, covered = FS.face_depth_target(G.face, G.body, cam, bt["identity"], bt["expression"],
                                               bt["body_shape"], bt["pose"], resolution, inner)
        gap, mask = FS.surface_gap(out.depth_lr, out.alpha_lr, target, covered)
        gaps.append(gap)
        masks.append(mask)
    return FS.gap_summary(torch.cat(gaps), torch.cat(masks))


def slope_and_correlation(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of ``y`` on ``x`` [N] and their Pearson correlation (NaN when either is constant)."""
    xc, yc = x - x.mean(), y - y.mean()
    slope = float((xc * yc).sum() / max(float((xc * xc).sum()), 1e-12))
    corr = float(np.corrcoef(x, y)[0, 1]) if xc.std() > 0 and yc.std() > 0 else float("nan")
    return slope, corr


def bicubic_upsample(image: Tensor, size: int) -> Tensor:
    """[B, C, h, w] in [-1, 1] -> [B, C, size, size] bicubic (clamped): the baseline super-resolution must beat."""
    return F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
