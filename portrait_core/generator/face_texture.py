"""The face texture: a neural texture on the mean 3DMM face, shared by every identity (``face_texture`` config).

Two parts, kept apart so each can be tested alone:

* :func:`face_coordinates` (pure, no parameters): canonical points -> (u, v, weight), the point's place on the
  mean face's texture and how close it lies to the identity's neutral 3DMM surface. Baked per identity on a grid
  over the head box (:func:`face_coordinate_volume`), read trilinearly per hit.
* :class:`FaceTexture` (trainable): the texture [C, R, R] and a small network that turns a texel's features and the
  identity's latents into an rgb correction, weighted by the proximity.
* :class:`FaceDetail`: what a scene holds, (hits, rgb) -> corrected rgb for a batch of identities, split into the
  lookup of (u, v, weight) and the correction, so a renderer can read the weights first and correct only where they
  are not zero.

Frames: canonical points are in the canonical-pose, neutral-expression frame (metres); the 3DMM lives in its face
frame, placed by ``body.face_transform(body_shape)``; (u, v) in [-1, 1] cover ``extent`` of the mean face's
(x, y) (u right, v up), as ``grid_sample`` reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import rendering as R
from .config import FaceTextureConfig
from .networks import inference_chunk

__all__ = ["FaceDetail", "FaceTexture", "face_coordinates", "face_coordinate_volume", "weight_support_box"]


@torch.no_grad()
def face_coordinates(points: Tensor, neutral_vertices: Tensor, mean_vertices: Tensor, face_transform: Tensor,
                     cfg: FaceTextureConfig) -> Tensor:
    """Canonical points [B, P, 3] -> [B, P, 3] = (u, v, weight).

    ``neutral_vertices`` [B, N, 3]: each identity's neutral 3DMM vertices, face frame; ``mean_vertices`` [N, 3]: the
    mean face's; ``face_transform`` [B, 4, 4]: face frame -> canonical. For the nearest vertex k of a point's
    face-frame position y: m = mean[k] + (y - neutral[k]); (u, v) = m.xy scaled from ``extent`` to [-1, 1];
    weight = exp(-(|y - neutral[k]| / reach)^2), 0 beyond 3 reach (not searched)."""
    from portrait_core.body.model import nearest_index

    rot, shift = face_transform[:, :3, :3], face_transform[:, None, :3, 3]
    y = (points - shift) @ rot  # inverse of a rigid transform: R^T (x - t), row vectors
    # points farther than 3 reach (weight < 1.3e-4) are not searched: weight 0 there
    k = nearest_index(y, neutral_vertices, max_distance=3.0 * cfg.reach)
    found = k >= 0
    k = k.clamp_min(0)
    nearest = neutral_vertices.gather(1, k[..., None].expand(-1, -1, 3))
    offset = y - nearest
    m = mean_vertices[k] + offset
    x0, x1, y0, y1 = cfg.extent
    u = (m[..., 0] - x0) / (x1 - x0) * 2 - 1
    v = (m[..., 1] - y0) / (y1 - y0) * 2 - 1
    weight = torch.exp(-(offset.norm(dim=-1) / cfg.reach) ** 2) * found.to(points.dtype)
    return torch.stack([u, v, weight], -1)


@torch.no_grad()
def face_coordinate_volume(neutral_vertices: Tensor, mean_vertices: Tensor, face_transform: Tensor,
                           cfg: FaceTextureConfig, box_centre: Tensor, box_half: Tensor) -> Tensor:
    """:func:`face_coordinates` at the nodes of a ``cfg.grid``^3 grid over ``box_centre +/- box_half`` (the head
    box): [B, 3, G, G, G] for :func:`rendering.sample_grid` (zeros outside the box: weight 0)."""
    g, b = cfg.grid, neutral_vertices.shape[0]
    nodes = R.grid_points(box_centre, box_half, g).reshape(1, -1, 3).expand(b, -1, -1)
    coords = face_coordinates(nodes, neutral_vertices, mean_vertices, face_transform, cfg)
    return coords.reshape(b, g, g, g, 3).permute(0, 4, 1, 2, 3).contiguous()


class FaceTexture(nn.Module):
    """Shared texture [1, C, R, R] + colour network: (features, latents) -> rgb correction.

    The last layer starts at zero, so enabling the texture on a trained generator changes nothing until it
    trains."""

    def __init__(self, cfg: FaceTextureConfig, latent_dim: int):
        super().__init__()
        self.cfg = cfg
        self.texture = nn.Parameter(torch.randn(1, cfg.channels, cfg.resolution, cfg.resolution) * 0.1)
        self.latent_proj = nn.Linear(latent_dim, cfg.hidden)
        self.feature_in = nn.Linear(cfg.channels, cfg.hidden)
        self.hidden = nn.Linear(cfg.hidden, cfg.hidden)
        self.rgb = nn.Linear(cfg.hidden, 3)
        nn.init.zeros_(self.rgb.weight)
        nn.init.zeros_(self.rgb.bias)

    def latent_bias(self, latents: Tensor) -> Tensor:
        """[B, identity + noise dims] -> [B, hidden] (per identity; avatars compute it once)."""
        return self.latent_proj(latents)

    def correction(self, coords: Tensor, latent_bias: Tensor) -> Tensor:
        """coords [B, P, 3] (u, v, weight) and latent_bias [B, hidden] -> weighted rgb correction [B, P, 3]."""
        b = coords.shape[0]
        uv = coords[..., :2].reshape(1, 1, -1, 2).to(self.texture.dtype)
        feats = F.grid_sample(self.texture, uv, mode="bilinear", padding_mode="zeros", align_corners=False)
        feats = feats.reshape(self.cfg.channels, b, -1).permute(1, 2, 0)  # [B, P, C]
        h = F.silu(self.feature_in(feats) + latent_bias[:, None, :])
        h = F.silu(self.hidden(h))
        return self.rgb(h) * coords[..., 2:3]

    def bake(self, latent_bias: Tensor) -> Tensor:
        """The unweighted correction at every texel for identities with ``latent_bias`` [B, hidden]: [B, 3, R, R].
        An avatar reads it bilinearly per hit (:meth:`correct_baked`) instead of running the network per hit; the
        two differ by interpolating the network's output instead of its input (a test bounds the difference)."""
        r, c = self.cfg.resolution, self.cfg.channels
        feats = self.texture.reshape(c, r * r).t()[None]  # [1, R*R, C]
        chunk = inference_chunk(r * r, latent_bias.shape[0], self.cfg.hidden, feats.device, r * r)
        rgb = []
        for part in feats.split(chunk, dim=1):
            h = F.silu(self.feature_in(part) + latent_bias[:, None, :])
            rgb.append(self.rgb(F.silu(self.hidden(h))))
        return torch.cat(rgb, 1).transpose(1, 2).reshape(-1, 3, r, r)

    @staticmethod
    def correct_baked(rgb: Tensor, coords: Tensor, baked: Tensor) -> Tensor:
        """rgb [B, ..., 3] + weight x the baked correction [B, 3, R, R] at coords [B, ..., 3] (u, v, weight),
        clamped to [0, 1]."""
        b = rgb.shape[0]
        uv = coords[..., :2].reshape(b, 1, -1, 2).to(baked.dtype)
        if baked.shape[0] == 1:  # one identity: spread over the CPU threads
            delta = R.sample_texture_2d(baked, uv)  # [1, 3, 1, P]
        else:
            delta = F.grid_sample(baked, uv, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B, 3, 1, P]
        delta = delta[:, :, 0].transpose(1, 2).reshape(rgb.shape)
        return (rgb + delta * coords[..., 2:3]).clamp(0.0, 1.0)

    def correct(self, rgb: Tensor, coords: Tensor, latent_bias: Tensor, min_weight: float = 1e-3) -> Tensor:
        """rgb [B, ..., 3] in [0, 1] at points whose coords are [B, ..., 3] -> corrected rgb, clamped to [0, 1].
        Only points with weight > ``min_weight`` run the network (the rest of the frame is left as it is)."""
        b = rgb.shape[0]
        flat_rgb, flat = rgb.reshape(b, -1, 3), coords.reshape(b, -1, 3)
        near = flat[..., 2] > min_weight
        if not bool(near.any()):
            return rgb
        count = int(near.sum(1).max())
        order = torch.argsort(near.to(torch.int8), dim=1, descending=True, stable=True)[:, :count]  # near first
        picked = flat.gather(1, order[..., None].expand(-1, -1, 3))
        delta = self.correction(picked, latent_bias)
        delta = delta * near.gather(1, order)[..., None].to(delta.dtype)  # padding entries of shorter rows
        out = flat_rgb.scatter_add(1, order[..., None].expand(-1, -1, 3), delta)
        return out.clamp(0.0, 1.0).reshape(rgb.shape)


def weight_support_box(volume: Tensor, centre: Tensor, half: Tensor) -> Tensor:
    """[2, 3]: the (min, max) corners (metres) of the box outside which a trilinear read of the weight channel of
    ``volume`` [G, 3, D, H, W] (over ``centre +/- half``) is exactly 0 for every identity: the box of the nodes with a
    non-zero weight, grown by one cell (a point in a cell next to such a node reads it). Empty weight: an empty box
    (min > max)."""
    res = torch.tensor(volume.shape[-3:][::-1], dtype=half.dtype, device=half.device)  # (W, H, D) = nodes in x, y, z
    nodes = (volume[:, 2] > 0).any(0).nonzero()  # [N, 3] (z, y, x)
    if nodes.shape[0] == 0:
        return torch.stack([centre + half, centre - half])
    index = nodes.flip(-1).to(half.dtype)  # (x, y, z)
    lo, hi = index.amin(0) - 1, index.amax(0) + 1
    to_metres = lambda i: centre + (i / (res - 1) * 2 - 1) * half  # noqa: E731
    return torch.stack([to_metres(lo), to_metres(hi)])


@dataclass(frozen=True)
class FaceDetail:
    """The face texture's correction for a batch of identities: ``detail(hits, rgb)`` -> rgb.

    ``volume`` [1 or B, 3, G, G, G]: (u, v, weight) over ``box_centre +/- box_half`` (the head box, metres), from
    :func:`face_coordinate_volume`; ``correct(rgb, coords)``: rgb [B, ..., 3] in [0, 1] and coords [B, ..., 3] ->
    corrected rgb, clamped to [0, 1] (the network, or the baked correction). The weight is exactly 0 outside
    :func:`weight_support_box`, and there ``correct`` changes nothing."""

    volume: Tensor
    box_centre: Tensor
    box_half: Tensor
    correct: Callable[[Tensor, Tensor], Tensor]
    support: Tensor = field(init=False)
    """[2, 3] :func:`weight_support_box` of ``volume``."""

    def __post_init__(self) -> None:
        with torch.no_grad():
            object.__setattr__(self, "support", weight_support_box(self.volume, self.box_centre, self.box_half))

    def coords(self, hits: Tensor) -> Tensor:
        """Canonical hits [B, ..., 3] (metres) -> [B, ..., 3] (u, v, weight), read trilinearly from the volume."""
        b = hits.shape[0]
        vol = self.volume.expand(b, -1, -1, -1, -1) if self.volume.shape[0] == 1 else self.volume  # 1 identity
        coords = R.sample_grid(vol, hits.reshape(b, -1, 3), self.box_centre, self.box_half, "zeros")
        return coords.reshape(*hits.shape[:-1], 3)

    def __call__(self, hits: Tensor, rgb: Tensor) -> Tensor:
        return self.correct(rgb, self.coords(hits))

    def _read_near(self, hits: Tensor, channels: slice) -> tuple[Tensor, Tensor, Tensor]:
        """(flat indices [N] of the hits [1, ...] inside the support box, the volume's ``channels`` read there
        [1, N, c], the inside mask [1, ...]): the frames of one identity read one volume."""
        lo, hi = self.support.to(hits.dtype)
        inside = ((hits >= lo) & (hits <= hi)).all(-1)
        index = inside.reshape(-1).nonzero()[:, 0]
        picked = hits.reshape(-1, 3)[index][None]  # [1, N, 3]
        return index, R.sample_grid(self.volume[:, channels], picked, self.box_centre, self.box_half, "zeros"), inside

    def weights(self, hits: Tensor) -> Tensor:
        """``coords(hits)[..., 2]`` [B, ...], read only at the hits inside :func:`weight_support_box` (one identity;
        a batch of identities reads every hit)."""
        if self.volume.shape[0] != 1:
            return self.coords(hits)[..., 2]
        index, weight, inside = self._read_near(hits, slice(2, 3))
        return hits.new_zeros(inside.numel()).index_put((index,), weight[0, :, 0].to(hits.dtype)).reshape(inside.shape)

    def apply(self, hits: Tensor, rgb: Tensor) -> tuple[Tensor, Tensor]:
        """(``self(hits, rgb)``, ``weights(hits)``) for rgb [B, ..., 3] in [0, 1], reading the volume and
        correcting only at the hits inside :func:`weight_support_box` (one identity; a batch of identities reads
        every hit)."""
        if self.volume.shape[0] != 1:
            coords = self.coords(hits)
            return self.correct(rgb, coords), coords[..., 2]
        index, coords, inside = self._read_near(hits, slice(0, 3))
        weight = hits.new_zeros(inside.numel()).index_put((index,), coords[0, :, 2].to(hits.dtype))
        flat_rgb = rgb.reshape(-1, 3)
        corrected = self.correct(flat_rgb[index][None], coords)[0]
        return flat_rgb.index_put((index,), corrected).reshape(rgb.shape), weight.reshape(inside.shape)
