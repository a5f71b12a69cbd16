"""The super-resolved frame level by level: :func:`superres_frame` returns what :func:`superres_frame_reference`
(the plain path of ``Generator.render_scene``) returns, to float rounding, for the 'frontal' texture layout.

Manifold super-resolution reads the super-resolved level textures at the low-resolution intersections, upsampled
bilinearly to the output size. The reference upsamples the canonical hits, maps them to texture coordinates, and
works per ray ([B, H*W, L, C]: the levels of a ray side by side). Here:

- the frontal texture coordinates are affine in the hit (``u = (x - cx) / E``, ``v = -(y - cy) / E``) and bilinear
  weights sum to one, so upsampling the low-resolution coordinates gives the coordinates of the upsampled hits:
  the full-size coordinate map is never computed;
- a few levels at a time (``levels_per_pass``, front to back) are upsampled (coordinates, validity, depth, shading
  factor in one ``interpolate``), looked up (the levels as batch entries of one lookup), shaded and composited into
  the running image (within a pass, each level behind the running transmittance times the pass's levels before
  it): no [H*W, L, C] tensor is made and a pass's maps stay in cache;
- pixels that read a ray whose levels are out of depth order keep their per-level values and are composited
  sorted after the loop;
- given the face texture's weights at the low-resolution hits, a level's face correction runs only on the
  rectangle of pixels that read a hit with a non-zero weight (:func:`near_face_windows`), and the hits are
  upsampled only there.

Other layouts (the 360 mode's octahedral and spherical maps are not affine) take the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import rendering as R
from .fast_composite import composite_fast

__all__ = ["near_face_windows", "superres_frame", "superres_frame_reference"]

FaceDetail = Callable[[Tensor, Tensor], Tensor]
RadianceFn = Callable[[Tensor, Tensor], tuple]


def superres_frame_reference(hits: Tensor, valid: Tensor, depth: Tensor, shading: Tensor | None,
                             size: tuple[int, int], scale: int, radiance_hr: RadianceFn, background: float,
                             far: Tensor, face_detail: FaceDetail | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The super-resolved (image [B, 3, sH, sW] in [0, 1], alpha [B, 1, ...], depth [B, 1, ...]) of a frame from
    its low-resolution level crossings: canonical hits [B, h*w, L, 3], validity and camera-z depth [B, h*w, L], the
    expression shading factor [B, h*w, L, 1] or None; ``radiance_hr`` reads the super-resolved textures at canonical
    points, ``face_detail`` adds the face texture's correction; composited over ``background``, empty pixels at
    depth ``far`` [B, 1]."""
    h, w = size
    hits_hr = R.upsample_rays(hits, (h, w), scale)
    valid_hr = R.upsample_rays(valid.to(hits.dtype), (h, w), scale) > 0.99
    depth_hr = R.upsample_rays(depth, (h, w), scale)
    rgb_hr, alpha_hr, _ = radiance_hr(hits_hr, valid_hr)
    if face_detail is not None:
        rgb_hr = face_detail(hits_hr, rgb_hr)
    if shading is not None:
        rgb_hr = (rgb_hr * R.upsample_rays(shading, (h, w), scale)).clamp(max=1.0)
    hr = composite_fast(rgb_hr, alpha_hr, depth_hr, valid_hr, background, None, far)
    hh, ww = h * scale, w * scale
    return (R.rays_to_image(hr.rgb, hh, ww), R.rays_to_image(hr.opacity[..., None], hh, ww),
            R.rays_to_image(hr.depth[..., None], hh, ww))


def near_face_windows(face_weight: Tensor, size: tuple[int, int], margin: int = 2) -> list[tuple[int, ...] | None]:
    """Per level, the low-resolution pixel rectangle (row0, row1, col0, col1), end-exclusive, holding every ray of
    any frame whose hit on that level has a non-zero face weight, grown by ``margin`` pixels and cut to the image;
    None where no hit of the level has one. ``face_weight`` [B, h*w, L].

    A super-resolved pixel mixes the hits of the 2 x 2 low-resolution rays around it, so a margin of 1 covers
    every pixel that reads a weighted hit; the second ray of margin covers pixels between two unweighted hits whose
    mix lands near the face (a level seen almost edge-on), where the weight is small."""
    b, _, n_levels = face_weight.shape
    h, w = size
    near = (face_weight > 0).reshape(b, h, w, n_levels).any(0)  # [h, w, L]
    rows, cols = near.any(1), near.any(0)  # [h, L], [w, L]
    found = rows.any(0).tolist()

    def first_last(mask: Tensor) -> tuple[list[int], list[int]]:
        index = torch.arange(mask.shape[0], device=mask.device)[:, None]
        first = torch.where(mask, index, mask.shape[0]).amin(0)
        last = torch.where(mask, index, -1).amax(0)
        return first.tolist(), last.tolist()

    (r0, r1), (c0, c1) = first_last(rows), first_last(cols)
    return [(max(r0[i] - margin, 0), min(r1[i] + 1 + margin, h), max(c0[i] - margin, 0), min(c1[i] + 1 + margin, w))
            if found[i] else None for i in range(n_levels)]


def _upsample_window(low: Tensor, window: tuple[int, ...], scale: int) -> Tensor:
    """``F.interpolate(low, scale_factor=scale, mode='bilinear')[..., rows, cols]`` of the full-size map, for the
    low-resolution ``window`` (row0, row1, col0, col1) only: the window grown by one pixel (what its border pixels
    read) is upsampled, and the grown part cut off again. low [B, k, h, w] -> [B, k, s(row1-row0), s(col1-col0)].
    The source coordinates are the same, computed from another offset: equal to float rounding (1e-6)."""
    r0, r1, c0, c1 = window
    h, w = low.shape[-2:]
    g0, g1, h0, h1 = max(r0 - 1, 0), min(r1 + 1, h), max(c0 - 1, 0), min(c1 + 1, w)
    up = F.interpolate(low[..., g0:g1, h0:h1], scale_factor=scale, mode="bilinear", align_corners=False)
    return up[..., (r0 - g0) * scale:(r1 - g0) * scale, (c0 - h0) * scale:(c1 - h0) * scale]


def superres_frame(hits: Tensor, valid: Tensor, depth: Tensor, shading: Tensor | None, size: tuple[int, int],
                   scale: int, textures: Tensor, centre: Tensor, half_extent: float, background: float, far: Tensor,
                   face_detail: FaceDetail | None = None, face_weight: Tensor | None = None,
                   levels_per_pass: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`superres_frame_reference` for frontal textures [G, L, C >= 4, T, T] (G = 1 or B; rgb, alpha first)
    over ``centre`` +/- ``half_extent`` (the reference's ``radiance_hr`` is ``texture_radiance_fn(textures)``).
    ``face_weight`` [B, h*w, L]: the face correction's weight at ``hits`` (a :class:`face_texture.FaceDetail`'s
    ``coords(hits)[..., 2]``); given, the correction runs only in :func:`near_face_windows`. ``levels_per_pass``:
    levels upsampled and composited together (1: one at a time; more: fewer, larger operations, equal to rounding)."""
    b, rays, n_levels = valid.shape
    h, w = size
    hh, ww = h * scale, w * scale
    g = textures.shape[0]
    dt = hits.dtype
    uv = R.texture_coords(hits, "frontal", centre, half_extent)  # [B, R, L, 2] at the low resolution
    channels = [uv, valid.to(dt)[..., None], depth[..., None]]
    if shading is not None:
        channels.append(shading.to(dt))
    windows: list[tuple[int, ...] | None] = [(0, h, 0, w)] * n_levels
    if face_detail is not None and face_weight is not None:
        windows = near_face_windows(face_weight, size)
    per_level = torch.cat(channels, -1)  # [B, R, L, k]
    k = per_level.shape[-1]
    low = per_level.reshape(b, h, w, n_levels, k).permute(3, 0, 4, 1, 2).contiguous()  # [L, B, k, h, w]
    hits_grid = hits.reshape(b, h, w, n_levels, 3) if face_detail is not None else None  # a view: windows are cut
    # pixels that read a ray whose levels are out of depth order are composited sorted, after the loop
    key = torch.where(valid, depth, torch.full_like(depth, float("inf")))
    unordered = (key[..., 1:] < key[..., :-1]).any(-1).reshape(b, 1, h, w)
    sorted_pixels = None
    if bool(unordered.any()):
        spread = F.interpolate(unordered.to(dt), scale_factor=scale, mode="bilinear", align_corners=False) > 0
        sorted_pixels = spread.reshape(-1).nonzero()[:, 0]  # flat (frame, row, column) indices
        kept: dict[str, list[Tensor]] = {"rgb": [], "alpha": [], "depth": [], "valid": []}
    colour = torch.zeros(b, 3, hh, ww, dtype=textures.dtype, device=textures.device)
    opacity = torch.zeros(b, 1, hh, ww, dtype=textures.dtype, device=textures.device)
    depth_sum = torch.zeros_like(opacity)
    transmittance = torch.ones_like(opacity)
    step = max(1, levels_per_pass)
    for first in range(0, n_levels, step):  # front to back (where in depth order), a few levels' maps at a time
        last = min(first + step, n_levels)
        count = last - first
        up = F.interpolate(low[first:last].reshape(count * b, k, h, w), scale_factor=scale, mode="bilinear",
                           align_corners=False).reshape(count, b, k, hh, ww)
        valid_hr = up[:, :, 2:3] > 0.99  # [K, B, 1, H, W]
        depth_hr = up[:, :, 3:4]
        grid = up[:, :, :2].permute(0, 1, 3, 4, 2).to(textures.dtype)  # [K, B, H, W, 2]
        if g == 1:  # one avatar seen in B frames: the K levels are K batch entries of one lookup
            if count == 1:
                texels = R.sample_texture_2d(textures[:, first, :4], grid.reshape(1, b * hh, ww, 2))
            else:
                texels = F.grid_sample(textures[0, first:last, :4], grid.reshape(count, b * hh, ww, 2),
                                       mode="bilinear", padding_mode="zeros", align_corners=False)
            texels = texels.reshape(count, 4, b, hh, ww).transpose(1, 2)  # [K, B, 4, H, W]
        else:
            texels = torch.stack([F.grid_sample(textures[:, level, :4], grid[level - first], mode="bilinear",
                                                padding_mode="zeros", align_corners=False)
                                  for level in range(first, last)])
        rgb = texels[:, :, :3]
        alpha = texels[:, :, 3:4] * valid_hr.to(texels.dtype)
        for level in range(first, last):
            window = windows[level]
            if hits_grid is not None and window is not None:  # the face correction, where it can be non-zero
                r0, r1, c0, c1 = (i * scale for i in window)
                hits_hr = _upsample_window(hits_grid[:, :, :, level].permute(0, 3, 1, 2), window, scale)
                seen = rgb[level - first, :, :, r0:r1, c0:c1]
                corrected = face_detail(hits_hr.permute(0, 2, 3, 1), seen.permute(0, 2, 3, 1))
                seen.copy_(corrected.permute(0, 3, 1, 2))  # rgb is these levels' texel slice: nothing else reads it
        if shading is not None:
            rgb = (rgb * up[:, :, 4:5]).clamp(max=1.0)
        if sorted_pixels is not None:
            for name, x in (("rgb", rgb), ("alpha", alpha), ("depth", depth_hr), ("valid", valid_hr)):
                for i in range(count):
                    kept[name].append(x[i].transpose(0, 1).reshape(x.shape[2], -1)[:, sorted_pixels])
        # within the pass: level i sees the running transmittance times (1 - alpha) of the pass's levels before it
        through = torch.cumprod(1.0 - alpha, 0)
        weight = alpha * transmittance
        if count > 1:
            weight = weight * torch.cat([torch.ones_like(through[:1]), through[:-1]])
        colour = colour + (weight * rgb).sum(0)
        opacity = opacity + weight.sum(0)
        depth_sum = depth_sum + (weight * depth_hr.masked_fill(~valid_hr, 0.0)).sum(0)
        transmittance = transmittance * through[-1]
    colour = colour + (1.0 - opacity) * background
    mean_depth = depth_sum / opacity.clamp_min(1e-6)
    empty = far.to(mean_depth.dtype).reshape(-1, 1, 1, 1).expand_as(mean_depth)
    mean_depth = torch.where(opacity > 1e-6, mean_depth, empty)
    if sorted_pixels is None:
        return colour, opacity, mean_depth
    # the reference's sorted compositing for the pixels near unordered rays: [1, P, L, ...]
    stack = {name: torch.stack(v, -1).transpose(0, 1)[None] for name, v in kept.items()}
    frame = torch.div(sorted_pixels, hh * ww, rounding_mode="floor")
    out = composite_fast(stack["rgb"].transpose(-1, -2), stack["alpha"][..., 0, :], stack["depth"][..., 0, :],
                         stack["valid"][..., 0, :], background, None, far.reshape(-1)[frame][None])
    results = []
    for image, values in ((colour, out.rgb[0]), (opacity, out.opacity[0, :, None]), (mean_depth, out.depth[0, :, None])):
        flat = image.transpose(0, 1).reshape(image.shape[1], -1).clone()
        flat[:, sorted_pixels] = values.T.to(flat.dtype)
        results.append(flat.reshape(image.shape[1], b, hh, ww).transpose(0, 1))
    return results[0], results[1], results[2]
