"""Sliced Wasserstein distance between two image sets on Laplacian-pyramid patches (weight-free, deterministic).

Recipe (after Karras et al. 2018): per pyramid level, random 7x7 patches, each channel normalised over the union
of both sets, projected on random unit directions; SWD = mean over projections of the L1 distance between the
sorted projections (x1e3, as usually reported), averaged over levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_K = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: Tensor) -> Tensor:
    k = _K.to(x)
    c = x.shape[1]
    kx = k.view(1, 1, 1, 5).expand(c, 1, 1, 5)
    ky = k.view(1, 1, 5, 1).expand(c, 1, 5, 1)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="reflect"), kx, groups=c)
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="reflect"), ky, groups=c)


def laplacian_pyramid(images: Tensor, levels: int) -> list[Tensor]:
    """[N, C, H, W] -> finest-first list of band-pass levels (the last is the low-pass residual)."""
    out, x = [], images
    for _ in range(levels - 1):
        if min(x.shape[-2:]) < 16:
            break
        low = F.avg_pool2d(_blur(x), 2)
        up = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
        out.append(x - up)
        x = low
    out.append(x)
    return out


def _patches(x: Tensor, n: int, size: int, g: torch.Generator) -> Tensor:
    N, C, H, W = x.shape
    size = min(size, H, W)
    i = torch.randint(N, (n,), generator=g)
    r = torch.randint(H - size + 1, (n,), generator=g)
    c = torch.randint(W - size + 1, (n,), generator=g)
    ar = torch.arange(size)
    rows = (r[:, None] + ar[None]).view(n, size, 1).expand(n, size, size)
    cols = (c[:, None] + ar[None]).view(n, 1, size).expand(n, size, size)
    p = x[i[:, None, None], :, rows, cols]  # [n, size, size, C]
    return p.reshape(n, -1)


def sliced_wasserstein(a: Tensor, b: Tensor, levels: int = 4, patches: int = 4096, patch_size: int = 7,
                       projections: int = 128, seed: int = 0) -> float:
    """SWD (x1e3) between image sets ``a`` and ``b`` [N, C, H, W] (same size, any range). Deterministic in ``seed``."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"sliced_wasserstein: image shapes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
    g = torch.Generator().manual_seed(seed)
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    pa, pb = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    dists = []
    for la, lb in zip(pa, pb):
        xa, xb = _patches(la, patches, patch_size, g), _patches(lb, patches, patch_size, g)
        both = torch.cat([xa, xb])
        mean, std = both.mean(0, keepdim=True), both.std(0, keepdim=True).clamp_min(1e-8)
        xa, xb = (xa - mean) / std, (xb - mean) / std
        d = torch.randn(xa.shape[1], projections, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=0, keepdim=True)
        sa, _ = (xa @ d).sort(0)
        sb, _ = (xb @ d).sort(0)
        dists.append((sa - sb).abs().mean().item())
    return 1e3 * sum(dists) / len(dists)
