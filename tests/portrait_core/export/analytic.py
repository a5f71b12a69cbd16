"""An analytic head-and-shoulders 'bust' for export tests: a larger-inside field, a skeleton and skinned points.

Canonical frame, metres (SMPL axes, +Y up, facing +Z, origin at the neck joint J12). Joint positions roughly
follow a mean SMPL body in the canonical A-pose; they are fixtures, not the body model.
"""

from __future__ import annotations

import numpy as np
import torch

from portrait_core.conventions import NUM_JOINTS

#: (SMPL joint id) -> canonical position, metres; joints not listed are placed far below (never used).
JOINTS = {
    0: (0.0, -0.51, -0.01), 3: (0.0, -0.40, -0.01), 6: (0.0, -0.27, 0.0), 9: (0.0, -0.21, 0.01),
    12: (0.0, 0.0, 0.0), 13: (0.075, -0.09, -0.0), 14: (-0.075, -0.09, -0.0), 15: (0.0, 0.075, 0.04),
    16: (0.17, -0.08, -0.02), 17: (-0.17, -0.08, -0.02), 18: (0.30, -0.305, -0.03), 19: (-0.30, -0.305, -0.03),
}

#: capsules: (a, b, radius, SMPL joint that owns the part)
CAPSULES = [
    ((0.0, 0.16, 0.045), (0.0, 0.17, 0.035), 0.095, 15),   # head
    ((0.0, -0.06, 0.0), (0.0, 0.08, 0.02), 0.052, 12),     # neck
    ((-0.1, -0.24, 0.0), (0.1, -0.24, 0.0), 0.13, 9),      # chest
    ((0.17, -0.10, -0.02), (0.27, -0.27, -0.03), 0.052, 16),  # left upper arm
    ((-0.17, -0.10, -0.02), (-0.27, -0.27, -0.03), 0.052, 17),  # right upper arm
]
BOUNDS = ((-0.38, -0.42, -0.2), (0.38, 0.3, 0.2))


def joints24() -> np.ndarray:
    J = np.zeros((NUM_JOINTS, 3))
    J[:, 1] = -1.0
    for j, p in JOINTS.items():
        J[j] = p
    return J


def _capsule_sdf(p: torch.Tensor, a, b, r) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=p.dtype)
    b = torch.as_tensor(b, dtype=p.dtype)
    ab = b - a
    t = ((p - a) @ ab / (ab @ ab)).clamp(0, 1)
    return (p - (a + t[:, None] * ab)).norm(dim=-1) - r


def part_sdfs(p: torch.Tensor) -> torch.Tensor:
    return torch.stack([_capsule_sdf(p, a, b, r) for a, b, r, _ in CAPSULES], dim=-1)


def field(p: torch.Tensor, k: float = 0.02) -> torch.Tensor:
    """Larger inside (negated smooth-min SDF of the capsules), level 0."""
    d = part_sdfs(p)
    return k * torch.logsumexp(-d / k, dim=-1)


def color(p: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """sRGB in [0,1]: skin-ish head, blue shirt below the neck base."""
    head = torch.tensor([0.85, 0.65, 0.55])
    shirt = torch.tensor([0.2, 0.35, 0.7])
    t = torch.sigmoid((p[:, 1:2] + 0.06) / 0.01)
    return t * head + (1 - t) * shirt


def skinned_points(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points on the capsule surfaces with SMPL weights [n,24] (soft by distance to each part)."""
    g = np.random.default_rng(seed)
    pts = []
    per = n // len(CAPSULES)
    for a, b, r, _ in CAPSULES:
        a, b = np.asarray(a), np.asarray(b)
        t = g.random(per)[:, None]
        d = g.normal(size=(per, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        pts.append(a + t * (b - a) + r * d)
    P = np.concatenate(pts)
    sd = part_sdfs(torch.as_tensor(P)).numpy()
    w = np.exp(-(sd - sd.min(1, keepdims=True)) / 0.01)
    w /= w.sum(1, keepdims=True)
    W = np.zeros((len(P), NUM_JOINTS))
    for c, (_, _, _, j) in enumerate(CAPSULES):
        W[:, j] += w[:, c]
    return P, W
