"""Pure rendering functions: ray samples, grids, ray/level intersections, texture parametrisations and
front-to-back compositing. No parameters live here.

Conventions: points in metres in the canonical/observed frame; ``depth`` is the camera-z distance (metres along
the optical axis, like ``Camera.near``/``far``), which orders samples along a ray exactly like the ray parameter.
Grids are node-centred (``align_corners=True``: the first and last nodes sit on the box faces); textures are
texel-centred (``align_corners=False``: texel j covers [j, j+1] / T of the domain, its centre at (j + 0.5) / T),
with the same convention when baking and when looking up (pitfall #3 fixed).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sample_depths", "ray_points", "grid_points", "sample_grid", "sample_grid_reference", "sample_texture_2d", "affine_entries", "apply_affine",
    "LevelCrossings", "intersect_levels", "intersect_levels_reference", "intersect_levels_entered",
    "interpolate_at_crossings", "alpha_from_sigma", "Composite", "composite",
    "TEXTURE_LAYOUTS", "octahedral_uv", "octahedral_directions", "spherical_uv", "spherical_directions",
    "texel_centres", "texture_coords", "texture_rays", "pad_texture", "unpad_texture", "sample_textures",
    "upsample_rays", "rays_to_image",
]


# --- rays --------------------------------------------------------------------------------------------------------

def sample_depths(near: Tensor, far: Tensor, n: int) -> Tensor:
    """Uniform camera-z depths [B, 1, n] between near [B] and far [B] (both included)."""
    steps = torch.linspace(0.0, 1.0, n, dtype=near.dtype, device=near.device)
    return (near[:, None] + (far - near)[:, None] * steps)[:, None, :]


def ray_points(origins: Tensor, directions: Tensor, forward: Tensor, depths: Tensor) -> Tensor:
    """Points at camera-z ``depths`` [B, 1 or R, N] along rays (origins, unit directions [B, R, 3]); ``forward``
    [B, 3] is the optical axis. Returns [B, R, N, 3]."""
    cos = (directions * forward[:, None, :]).sum(-1, keepdim=True).clamp_min(1e-6)  # [B, R, 1]
    t = depths / cos  # ray parameter, [B, R, N]
    return origins[:, :, None, :] + t[..., None] * directions[:, :, None, :]


# --- grids -------------------------------------------------------------------------------------------------------

def grid_points(centre: Tensor, half_extent: Tensor | float, resolution: int) -> Tensor:
    """Nodes of a cubic (or box) grid [R, R, R, 3] (index order z, y, x; coordinates x, y, z), node-centred:
    the first and last nodes lie on the faces of ``centre +/- half_extent``."""
    half = torch.as_tensor(half_extent, dtype=centre.dtype, device=centre.device).expand(3)
    axes = [torch.linspace(-1.0, 1.0, resolution, dtype=centre.dtype, device=centre.device) * half[i] + centre[i]
            for i in range(3)]
    z, y, x = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return torch.stack([x, y, z], dim=-1)


SPLIT_LOOKUP_MIN_POINTS = 8192
"""A one-volume lookup of at least this many points on the CPU with several torch threads is cut into one slab of
points per thread (:func:`sample_grid`)."""


def sample_grid(volume: Tensor, points: Tensor, centre: Tensor, half_extent: Tensor | float,
                padding_mode: str = "border") -> Tensor:
    """Trilinear lookup of a node-centred grid volume [G, C, D, H, W] (over ``centre +/- half_extent``) at
    points [G, ..., 3] -> [G, ..., C]. ``padding_mode``: 'border' (clamp) or 'zeros'.

    The CPU kernel of ``grid_sample`` parallelises over the batch only, so one volume (G = 1, an avatar's frames)
    read at many points would run on one thread: with T > 1 threads the points are cut into T slabs, read as T
    batch entries of the same (expanded, not copied) volume. Each point's arithmetic is unchanged: the result is
    bit-identical to :func:`sample_grid_reference`."""
    g, channels = volume.shape[:2]
    lead = points.shape[1:-1]
    coords = (points - centre) / torch.as_tensor(half_extent, dtype=points.dtype, device=points.device)
    coords = coords.reshape(g, -1, 3).to(volume.dtype)
    n = coords.shape[1]
    slabs = torch.get_num_threads()
    if g != 1 or slabs < 2 or n < SPLIT_LOOKUP_MIN_POINTS or volume.device.type != "cpu":
        return sample_grid_reference(volume, points, centre, half_extent, padding_mode)
    per_slab = -(-n // slabs)
    coords = F.pad(coords, (0, 0, 0, per_slab * slabs - n))  # [1, T * per_slab, 3]
    out = F.grid_sample(volume.expand(slabs, -1, -1, -1, -1), coords.reshape(slabs, 1, 1, per_slab, 3),
                        mode="bilinear", padding_mode=padding_mode, align_corners=True)  # [T, C, 1, 1, per_slab]
    out = out.reshape(slabs, channels, per_slab).transpose(1, 2).reshape(1, slabs * per_slab, channels)
    return out[:, :n].reshape(1, *lead, channels)


def sample_texture_2d(texture: Tensor, grid: Tensor, padding_mode: str = "zeros",
                      align_corners: bool = False) -> Tensor:
    """``F.grid_sample(texture, grid, mode='bilinear', ...)`` for one texture [1, C, H, W] read at a grid
    [1, Hg, Wg, 2] -> [1, C, Hg, Wg]. As in :func:`sample_grid`, with T > 1 CPU threads the grid's points are cut into
    T slabs read as T batch entries of the expanded texture (``grid_sample`` parallelises over the batch only):
    bit-identical."""
    slabs = torch.get_num_threads()
    _, hg, wg, _ = grid.shape
    n, channels = hg * wg, texture.shape[1]
    if texture.shape[0] != 1 or grid.shape[0] != 1 or slabs < 2 or n < SPLIT_LOOKUP_MIN_POINTS \
            or texture.device.type != "cpu":
        return F.grid_sample(texture, grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
    per_slab = -(-n // slabs)
    flat = F.pad(grid.reshape(1, n, 2), (0, 0, 0, per_slab * slabs - n))
    out = F.grid_sample(texture.expand(slabs, -1, -1, -1), flat.reshape(slabs, 1, per_slab, 2), mode="bilinear",
                        padding_mode=padding_mode, align_corners=align_corners)  # [T, C, 1, per_slab]
    return out.transpose(0, 1).reshape(1, channels, slabs * per_slab)[:, :, :n].reshape(1, channels, hg, wg)


def sample_grid_reference(volume: Tensor, points: Tensor, centre: Tensor, half_extent: Tensor | float,
                          padding_mode: str = "border") -> Tensor:
    """:func:`sample_grid` in one ``grid_sample`` call."""
    g = volume.shape[0]
    lead = points.shape[1:-1]
    coords = (points - centre) / torch.as_tensor(half_extent, dtype=points.dtype, device=points.device)
    coords = coords.reshape(g, 1, 1, -1, 3).to(volume.dtype)
    out = F.grid_sample(volume, coords, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return out.reshape(g, volume.shape[1], -1).transpose(1, 2).reshape(g, *lead, volume.shape[1])


def affine_entries(transforms: Tensor) -> Tensor:
    """Homogeneous transforms [..., 4, 4] -> their top 3x4 block flattened row-major [..., 12]."""
    return transforms[..., :3, :].reshape(*transforms.shape[:-2], 12)


def apply_affine(entries: Tensor, points: Tensor) -> Tensor:
    """Apply affine maps given as 12 row-major entries [..., 12] to points [..., 3]."""
    m = entries.reshape(*entries.shape[:-1], 3, 4)
    return (m[..., :3] @ points[..., None]).squeeze(-1) + m[..., 3]


# --- ray / level intersections -------------------------------------------------------------------------------------

class LevelCrossings(NamedTuple):
    """The first crossing of each level along each ray. Shapes [..., L]."""

    depth: Tensor
    """Camera-z depth of the crossing (linear interpolation between the bracketing samples)."""
    valid: Tensor
    """True where the ray crosses the level; invalid entries point at the last interval."""
    index: Tensor
    """Index i of the bracketing interval [i, i + 1] (long)."""
    frac: Tensor
    """Position in the interval, in [0, 1]: value = (1 - frac) * v_i + frac * v_{i+1}."""


def intersect_levels(s: Tensor, depth: Tensor, levels: Tensor) -> LevelCrossings:
    """First crossing of each level ``l`` by the field samples ``s`` [..., N] along a ray: what
    :func:`intersect_levels_reference` returns (bit for bit), by :func:`intersect_levels_entered` for the rays that
    start outside every level (``s_0 >= max(levels)``, the usual case: the near plane lies outside the outermost
    shell) and by the reference for the few others (all of them when they are more than a quarter)."""
    if s.shape[-1] < 2 or not s.numel() or not bool(torch.isfinite(s).all()):  # (NaN breaks the running minimum)
        return intersect_levels_reference(s, depth, levels)
    inside = s[..., 0] < levels.to(s.dtype).max()  # rays that start inside some level
    n_inside = int(inside.sum())
    if n_inside == 0:
        return intersect_levels_entered(s, depth, levels)
    if n_inside * 4 > inside.numel():
        return intersect_levels_reference(s, depth, levels)
    where = inside.nonzero(as_tuple=True)
    fast = intersect_levels_entered(s, depth, levels)
    few = intersect_levels_reference(s[where], depth.expand_as(s)[where], levels)
    return LevelCrossings(*(all_rays.index_put(where, some) for all_rays, some in zip(fast, few)))


def intersect_levels_entered(s: Tensor, depth: Tensor, levels: Tensor) -> LevelCrossings:
    """:func:`intersect_levels_reference` for rays that start outside every level (``s[..., 0] >= l`` for all l;
    the caller checks). Then the first crossing of level l ends at the first sample below it, which is where the
    running minimum of ``s`` first drops below l; the running minimum never increases, so one binary search per
    level finds it (L log N comparisons per ray instead of L N boolean tensors)."""
    n = s.shape[-1]
    depth = depth.expand_as(s)
    lv = levels.to(s.dtype)
    running_min = torch.cummin(s, dim=-1).values  # [..., N], non-increasing
    lead = s.shape[:-1]
    flat = -running_min.reshape(-1, n)  # non-decreasing rows, as searchsorted wants
    # first sample below l = the number of samples whose running minimum is still >= l
    below = torch.searchsorted(flat, (-lv).expand(flat.shape[0], -1).contiguous(), right=True)
    below = below.reshape(*lead, lv.shape[0])
    valid = (below < n) & (below > 0)  # (below = 0 only on a ray that starts inside l: not this function's case)
    return _crossings_in_intervals(s, depth, lv, below - 1, valid)


def intersect_levels_reference(s: Tensor, depth: Tensor, levels: Tensor) -> LevelCrossings:
    """First crossing of each level ``l`` by the field samples ``s`` [..., N] along a ray.

    A crossing is an interval with ``s_i >= l > s_{i+1}`` (s falls through the level while moving away from the
    camera, i.e. the ray enters level l's shell). This one rule serves the per-frame render and the texture bake
    (pitfall #5). ``depth`` [..., N] (broadcastable) are the samples' depths; ``levels`` [L]. Vectorised over rays
    and levels; differentiable in ``s`` and ``depth`` through the interpolation weight.
    """
    n = s.shape[-1]
    if n < 2:
        raise ValueError(f"intersect_levels: need at least 2 samples per ray, got {n}")
    depth = depth.expand_as(s)
    lv = levels.to(s.dtype)
    above = s[..., None, :] >= lv[:, None]  # [..., L, N] (samples last: contiguous reductions)
    crossing = above[..., :-1] > above[..., 1:]  # [..., L, N-1]: above at i, below at i+1
    index = crossing.to(torch.uint8).argmax(dim=-1)  # first True (argmax returns the first maximum)
    valid = crossing.gather(-1, index[..., None])[..., 0]
    return _crossings_in_intervals(s, depth, lv, index, valid)


def _crossings_in_intervals(s: Tensor, depth: Tensor, levels: Tensor, index: Tensor, valid: Tensor) -> LevelCrossings:
    """The crossings of ``levels`` [L] in the intervals ``[index, index + 1]`` [..., L] of the samples ``s`` and
    their ``depth`` [..., N] where ``valid``; invalid entries point at the last interval with ``frac`` 1."""
    index = torch.where(valid, index, torch.full_like(index, s.shape[-1] - 2))
    s_a, s_b = s.gather(-1, index), s.gather(-1, index + 1)
    frac = ((s_a - levels) / (s_a - s_b).clamp_min(1e-8)).clamp(0.0, 1.0)
    frac = torch.where(valid, frac, torch.ones_like(frac))
    d_a, d_b = depth.gather(-1, index), depth.gather(-1, index + 1)
    return LevelCrossings(d_a + frac * (d_b - d_a), valid, index, frac)


def interpolate_at_crossings(values: Tensor, crossings: LevelCrossings) -> Tensor:
    """Per-sample values [..., N, C] -> values at the crossings [..., L, C] (linear in the interval)."""
    idx = crossings.index[..., None].expand(*crossings.index.shape, values.shape[-1])
    v_a, v_b = values.gather(-2, idx), values.gather(-2, idx + 1)
    f = crossings.frac[..., None].to(values.dtype)
    return v_a + f * (v_b - v_a)


def expression_shading_factor(logit: Tensor) -> Tensor:
    """Colour factor ``2 sigmoid(-logit)`` of the expression shading logit: 1 at 0 (the neutral expression),
    toward 0 (dark: an open mouth's interior) for large positive logits, at most 2 (brighter) for negative ones."""
    return 2.0 * torch.sigmoid(-logit)


# --- compositing -------------------------------------------------------------------------------------------------------

def alpha_from_sigma(sigma: Tensor, valid: Tensor, delta: float) -> Tensor:
    """``alpha = (1 - exp(-delta * softplus(sigma))) * valid`` (same shape as sigma)."""
    return -torch.expm1(-delta * F.softplus(sigma)) * valid.to(sigma.dtype)


class Composite(NamedTuple):
    rgb: Tensor
    """[..., 3] composited colour over the background (same range as the input colours)."""
    weights: Tensor
    """[..., L] compositing weight of each level (in the input level order), in [0, 1], sum <= 1."""
    depth: Tensor
    """[...] expected depth of the visible surface (weights-normalised); ``background_depth`` where empty."""
    opacity: Tensor
    """[...] sum of the weights."""
    features: Tensor | None
    """[..., C] composited features (no background) or None."""


def composite(rgb: Tensor, alpha: Tensor, depth: Tensor, valid: Tensor, background: float = 1.0,
              features: Tensor | None = None, background_depth: Tensor | float | None = None) -> Composite:
    """Sorted front-to-back alpha compositing of L layers per ray.

    rgb [..., L, 3], alpha [..., L] in [0, 1], depth [..., L] (camera z), valid [..., L]. Layers are sorted by
    depth (invalid layers last, with alpha forced to 0); ``T_k = prod_{j<k} (1 - alpha_j)``, ``w_k = alpha_k T_k``;
    colour = sum w c + (1 - sum w) * background.
    """
    alpha = alpha * valid.to(alpha.dtype)
    key = torch.where(valid, depth, torch.full_like(depth, float("inf")))
    order = key.argsort(dim=-1)
    a_sorted = alpha.gather(-1, order)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(a_sorted[..., :1]), 1.0 - a_sorted[..., :-1]], -1), -1)
    w_sorted = a_sorted * transmittance
    weights = torch.zeros_like(w_sorted).scatter(-1, order, w_sorted)
    opacity = weights.sum(-1)
    colour = (weights[..., None] * rgb).sum(-2) + (1.0 - opacity[..., None]) * background
    d_valid = torch.where(valid, depth, torch.zeros_like(depth))
    mean_depth = (weights * d_valid).sum(-1) / opacity.clamp_min(1e-6)
    if background_depth is None:
        background_depth = torch.where(valid, depth, torch.zeros_like(depth)).amax(-1)
    empty_depth = torch.as_tensor(background_depth, dtype=depth.dtype, device=depth.device).expand_as(mean_depth)
    mean_depth = torch.where(opacity > 1e-6, mean_depth, empty_depth)
    feats = None if features is None else (weights[..., None] * features).sum(-2)
    return Composite(colour, weights, mean_depth, opacity, feats)


# --- texture parametrisations -----------------------------------------------------------------------------------------

#: Texture layouts: 'frontal' (orthographic x, y), 'octahedral' (the '360' mode's default: directions about the shell
#: centre folded onto a square through an octahedron, no pole and no seam) and 'spherical' (azimuth/elevation, the
#: earlier '360' map: its texels pinch at the poles and it has a seam at the back).
TEXTURE_LAYOUTS = ("frontal", "octahedral", "spherical")


def _check_layout(layout: str) -> None:
    if layout not in TEXTURE_LAYOUTS:
        raise ValueError(f"unknown texture layout {layout!r}; use one of {', '.join(TEXTURE_LAYOUTS)}")


def _sign(x: Tensor) -> Tensor:
    """+1 where x >= 0, else -1 (never 0, so the octahedral fold is defined on its own boundary)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def octahedral_uv(directions: Tensor) -> Tensor:
    """Directions [..., 3] (any length > 0) -> octahedral texture coordinates [..., 2] in [-1, 1].

    The direction is scaled onto the octahedron |x| + |y| + |z| = 1. Its upper half (y >= 0: the head, whose
    top is the texture centre) projects straight down to the inner diamond |u| + |v| <= 1 with (u, v) = (x, z);
    its lower half folds out onto the four corner triangles. u follows +X (the subject's left), v follows +Z
    (the face is in the lower half of the image, the back of the head in the upper half). The map is continuous
    and one-to-one on the sphere; across the square's edges it continues mirrored (see :func:`pad_texture`), so
    it has no seam, and a texel's solid angle varies by a bounded factor (no pinching: docs/generator.md).
    """
    n = directions / directions.abs().sum(-1, keepdim=True).clamp_min(1e-12)
    x, y, z = n.unbind(-1)
    lower = y < 0
    u = torch.where(lower, (1.0 - z.abs()) * _sign(x), x)
    v = torch.where(lower, (1.0 - x.abs()) * _sign(z), z)
    return torch.stack([u, v], dim=-1)


def octahedral_directions(uv: Tensor) -> Tensor:
    """Inverse of :func:`octahedral_uv`: texture coordinates [..., 2] in [-1, 1] -> unit directions [..., 3]."""
    u, v = uv.unbind(-1)
    y = 1.0 - u.abs() - v.abs()
    lower = y < 0
    x = torch.where(lower, (1.0 - v.abs()) * _sign(u), u)
    z = torch.where(lower, (1.0 - u.abs()) * _sign(v), v)
    d = torch.stack([x, y, z], dim=-1)
    return d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def spherical_uv(directions: Tensor) -> Tensor:
    """Directions [..., 3] -> (azimuth / pi, -elevation / (pi / 2)) [..., 2], azimuth = atan2(x, z) (0 facing
    +Z, the seam at the back)."""
    azimuth = torch.atan2(directions[..., 0], directions[..., 2])
    elevation = torch.atan2(directions[..., 1], directions[..., [0, 2]].norm(dim=-1))
    return torch.stack([azimuth / math.pi, -elevation / (math.pi / 2)], dim=-1)


def spherical_directions(uv: Tensor) -> Tensor:
    """Inverse of :func:`spherical_uv` -> unit directions [..., 3]."""
    azimuth, elevation = uv[..., 0] * math.pi, -uv[..., 1] * (math.pi / 2)
    return torch.stack([torch.cos(elevation) * torch.sin(azimuth), torch.sin(elevation),
                        torch.cos(elevation) * torch.cos(azimuth)], -1)


def texel_centres(resolution: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Texture coordinates [T*T, 2] (u, v) of the texel centres, row-major (texel (i, j) is entry i*T + j)."""
    c = (torch.arange(resolution, dtype=dtype, device=device) + 0.5) / resolution * 2.0 - 1.0
    v, u = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], -1)


def texture_coords(points: Tensor, mode: str, centre: Tensor, half_extent: float) -> Tensor:
    """Canonical points [..., 3] (metres) -> texture coordinates [..., 2] in [-1, 1] (grid_sample order: u along
    the texture width, v along its height, v = -1 at the top row).

    ``mode`` is a texture layout (:data:`TEXTURE_LAYOUTS`; ``RenderConfig.texture_layout`` names a config's).
    'frontal': orthographic, u = (x - cx) / E, v = -(y - cy) / E. 'octahedral' (:func:`octahedral_uv`) and
    'spherical' (:func:`spherical_uv`) map the direction from ``centre``; neither folds the back of a closed shell
    onto its front.
    """
    _check_layout(mode)
    d = points - centre.to(points.dtype)
    if mode == "frontal":
        return torch.stack([d[..., 0] / half_extent, -d[..., 1] / half_extent], dim=-1)
    return octahedral_uv(d) if mode == "octahedral" else spherical_uv(d)


def texture_rays(resolution: int, mode: str, centre: Tensor, half_extent: float, bake_radius: float,
                 samples: int) -> tuple[Tensor, Tensor]:
    """Bake rays through the texel centres of the parametrisation, marching towards the level surfaces.

    Returns sample points [T*T, samples, 3] (row-major texels: texel (i, j) is entry i*T + j) and their depths
    along the bake ray [1, samples] (metres, increasing). 'frontal': parallel rays along -Z from
    ``z = cz + bake_radius`` to ``cz - bake_radius``. 'octahedral' / 'spherical': radial rays from ``bake_radius``
    in to the centre. A crossing found on a bake ray has exactly this texel's coordinates under
    :func:`texture_coords`.
    """
    _check_layout(mode)
    dev, dt = centre.device, centre.dtype
    uv = texel_centres(resolution, dt, dev)
    if mode == "frontal":
        u, v = uv.unbind(-1)
        origins = torch.stack([u * half_extent, -v * half_extent, torch.full_like(u, bake_radius)], -1) + centre
        directions = torch.tensor([0.0, 0.0, -1.0], dtype=dt, device=dev).expand_as(origins)
        length = 2.0 * bake_radius
    else:
        outward = octahedral_directions(uv) if mode == "octahedral" else spherical_directions(uv)
        origins = centre + bake_radius * outward
        directions = -outward
        length = bake_radius
    t = torch.linspace(0.0, length, samples, dtype=dt, device=dev)
    points = origins[:, None, :] + t[None, :, None] * directions[:, None, :]
    return points, t[None, :]


def pad_texture(textures: Tensor, mode: str, pad: int) -> Tensor:
    """Textures [..., T, T] padded by ``pad`` texels on each side with what lies beyond each edge on the sphere,
    so that bilinear lookups and convolutions see no seam: 'octahedral' continues mirrored (beyond the top edge
    lies the top row flipped left-right; beyond a corner, the opposite corner), 'spherical' wraps the azimuth and
    continues over the poles (half a turn round), 'frontal' pads with zeros (outside the texture)."""
    _check_layout(mode)
    if pad <= 0:
        return textures
    t = textures.shape[-1]
    if pad > t:
        raise ValueError(f"pad_texture: pad {pad} exceeds the texture size {t}")
    if mode == "frontal":
        return F.pad(textures, (pad, pad, pad, pad))
    if mode == "octahedral":
        x = torch.cat([textures[..., :pad, :].flip(-2, -1), textures, textures[..., -pad:, :].flip(-2, -1)], -2)
        return torch.cat([x[..., :pad].flip(-2, -1), x, x[..., -pad:].flip(-2, -1)], -1)
    half = textures.shape[-1] // 2
    x = torch.cat([textures[..., :pad, :].flip(-2).roll(half, -1), textures,
                   textures[..., -pad:, :].flip(-2).roll(half, -1)], -2)
    return torch.cat([x[..., -pad:], x, x[..., :pad]], -1)


def unpad_texture(padded: Tensor, mode: str, pad: int) -> Tensor:
    """Inverse of :func:`pad_texture` for a texture computed on the padded domain (super-resolution output):
    [..., T + 2 pad, T + 2 pad] -> [..., T, T]. 'frontal' crops. On the sphere, a texel within ``pad`` of an
    edge is the weighted mean of its own value and of the padded values that lie at the same place on the sphere,
    with weights falling linearly from 1 (``pad`` inside) through 1/2 (the edge) to 0 (``pad`` outside), so that
    values computed on both sides of a fold or seam meet: a network whose kernels are not symmetric sees the
    neighbourhood across an octahedral edge turned by half a turn and would otherwise leave a step there."""
    _check_layout(mode)
    if pad <= 0:
        return padded
    n = padded.shape[-1]
    t = n - 2 * pad
    if mode == "frontal":
        return padded[..., pad:-pad, pad:-pad]
    index = pad_texture(torch.arange(t * t, device=padded.device).reshape(t, t), mode, pad).reshape(-1)
    i = torch.arange(n, dtype=padded.dtype, device=padded.device)
    inside = torch.minimum(i - pad + 0.5, pad + t - i - 0.5)  # texels from the edge, > 0 inside
    d = torch.minimum(inside[:, None], inside[None, :])
    w = (0.5 + d / (2 * pad)).clamp(0.0, 1.0).reshape(-1)
    lead = padded.shape[:-2]
    flat = padded.reshape(-1, n * n)
    total = flat.new_zeros(flat.shape[0], t * t).index_add_(1, index, flat * w)
    norm = w.new_zeros(t * t).index_add_(0, index, w)
    return (total / norm).reshape(*lead, t, t)


def sample_textures(textures: Tensor, uv: Tensor, mode: str) -> Tensor:
    """Bilinear lookup of per-level textures [G, L, C, T, T] at uv [B, P, L, 2] -> [B, P, L, C].

    G is 1 (one avatar, shared by the batch) or B. 'frontal': zero outside the texture (alpha 0); 'octahedral':
    continuous across every edge (one texel of :func:`pad_texture`); 'spherical': the azimuth wraps around
    (circular padding) and the poles clamp.
    """
    _check_layout(mode)
    g, n_levels, ch, th, tw = textures.shape
    b, p = uv.shape[:2]
    if g not in (1, b):
        raise ValueError(f"sample_textures: texture batch {g} must be 1 or the point batch {b}")
    tex = textures.reshape(g * n_levels, ch, th, tw)
    uv = uv.to(tex.dtype)
    if mode == "spherical":
        tex = torch.cat([tex[..., -1:], tex, tex[..., :1]], dim=-1)
        uv = torch.stack([uv[..., 0] * tw / (tw + 2), uv[..., 1]], dim=-1)
        padding = "border"
    elif mode == "octahedral":
        tex = pad_texture(tex, mode, 1)
        uv = torch.stack([uv[..., 0] * tw / (tw + 2), uv[..., 1] * th / (th + 2)], dim=-1)
        padding = "border"
    else:
        padding = "zeros"
    if g == 1:
        grid = uv.permute(2, 0, 1, 3).reshape(n_levels, 1, b * p, 2)
    else:
        grid = uv.permute(0, 2, 1, 3).reshape(b * n_levels, 1, p, 2)
    out = F.grid_sample(tex, grid, mode="bilinear", padding_mode=padding, align_corners=False)  # [GL, C, 1, *]
    if g == 1:
        return out.reshape(n_levels, ch, b, p).permute(2, 3, 0, 1)
    return out.reshape(b, n_levels, ch, p).permute(0, 3, 1, 2)


def rays_to_image(values: Tensor, h: int, w: int) -> Tensor:
    """Per-ray values [B, H*W, C] (row-major pixels) -> image [B, C, H, W] (a view)."""
    return values.reshape(values.shape[0], h, w, -1).permute(0, 3, 1, 2)


def upsample_rays(values: Tensor, size: tuple[int, int], scale: int) -> Tensor:
    """Per-ray values [B, h*w, ...] on an h x w image -> bilinearly upsampled [B, H*W, ...] (H, W = h, w * scale).

    Used to carry low-resolution intersections to the super-resolved image (pixel centres, align_corners=False).
    """
    b, _ = values.shape[:2]
    h, w = size
    rest = values.shape[2:]
    x = values.reshape(b, h, w, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(b, h * w * scale * scale, *rest)
