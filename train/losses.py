"""Training losses as pure functions on tensors (no module state, no config lookups).

Each returns a scalar (mean over the batch) unless stated. Weights are applied by the caller (train/loop.py),
so every term can be logged unweighted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


# ------------------------------------------------------------------------------------------ adversarial
def d_logistic(real_logits: Tensor, fake_logits: Tensor, real_weights: Tensor | None = None) -> Tensor:
    """Non-saturating discriminator loss: softplus(D(fake)) + softplus(-D(real)), means over the batch.
    ``real_weights`` [B] (0/1) excludes reals (weighted mean; all-zero weights drop the real term)."""
    real = F.softplus(-real_logits)
    if real_weights is None:
        return F.softplus(fake_logits).mean() + real.mean()
    return F.softplus(fake_logits).mean() + (real * real_weights).sum() / real_weights.sum().clamp_min(1.0)


def g_nonsaturating(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss: softplus(-D(fake))."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: Tensor, real_inputs: Tensor) -> Tensor:
    """Mean over the batch of |d sum(D(x)) / dx|^2 (R1; the caller multiplies by gamma/2 and the lazy interval).

    ``real_inputs`` must require grad and be the tensor ``real_logits`` was computed from. Differentiable in D's
    parameters (create_graph)."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_inputs, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()


# ------------------------------------------------------------------------------------------- regression
def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per element, averaged over the batch."""
    return (pred.float() - target.float()).square().mean()


def camera_target(pitch: Tensor, yaw: Tensor) -> Tensor:
    """Regression target [B, 3] for a camera: (pitch - pi/2, cos yaw, sin yaw) - continuous over the full yaw circle."""
    return torch.stack([pitch - torch.pi / 2, torch.cos(yaw), torch.sin(yaw)], dim=-1)


def landmark_loss(pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean squared distance of 2D landmarks [B, 68, 2] (normalised image units), optionally weighted per landmark
    ([68], e.g. more weight on the mouth and eyes)."""
    d2 = (pred.float() - target.float()).square().sum(-1)
    if weights is not None:
        d2 = d2 * (weights / weights.mean())
    return d2.mean()


def imitation(delta_at_vertices: Tensor, target_delta: Tensor, mask: Tensor | None = None) -> Tensor:
    """3DMM imitation: the generator's expression deformation evaluated at the 3DMM's expressive vertices
    ([B, N, 3], metres) vs the deformation the 3DMM implies there (``-expression_offsets``: expressive -> neutral).
    Mean squared error over vertices; ``mask`` [B, N] restricts to vertices inside the render box."""
    d2 = (delta_at_vertices.float() - target_delta.float()).square().sum(-1)
    if mask is None:
        return d2.mean()
    m = mask.float()
    return (d2 * m).sum() / m.sum().clamp_min(1.0)


def smoothness(delta: Tensor, delta_jittered: Tensor, jitter: float) -> Tensor:
    """Finite-difference smoothness of a deformation field: |delta(x + e) - delta(x)|^2 / |e|^2 with |e| ~ jitter.
    Inputs [..., 3] (or any trailing size). Dimensionless (a squared Jacobian-norm estimate)."""
    return (delta_jittered.float() - delta.float()).square().sum(-1).mean() / (jitter ** 2)


def minimal_deformation(delta: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean |delta|^2 (metres^2) at regularisation points; ``weight`` [...] down-weights points near the face."""
    d2 = delta.float().square().sum(-1)
    return d2.mean() if weight is None else (d2 * weight).mean()


def shading_sparsity(logits: Tensor) -> Tensor:
    """Mean |expression shading logit| at regularisation points: the shading should stay where an expression
    changes the colour (an open mouth's interior), not become a per-image colour correction."""
    return logits.float().abs().mean()


def pose_prior(pose_g: Tensor, pose_data: Tensor) -> Tensor:
    """3DPortraitGAN L_preg: |p_G - p_data|^2 (sum over pose components, mean over the batch)."""
    return (pose_g.float() - pose_data.float()).square().flatten(1).sum(1).mean()


def pose_prediction(pose_d: Tensor, pose_g: Tensor) -> Tensor:
    """3DPortraitGAN L_pose on fakes: |p_D(fake) - p_G|^2 with p_G detached by the caller."""
    return (pose_d.float() - pose_g.float()).square().flatten(1).sum(1).mean()


def image_gradient_l1(pred: Tensor, target: Tensor) -> Tensor:
    """L1 between horizontal and vertical finite differences of two images [B, C, H, W]."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return (dx(pred) - dx(target)).abs().mean() + (dy(pred) - dy(target)).abs().mean()


# --------------------------------------------------------------------------------------------- stage 2
def downsample_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Anti-aliased downsampling [B, C, H, W] -> [B, C, h, w] (area for integer factors, else bicubic+AA)."""
    H, W = x.shape[-2:]
    if (H, W) == tuple(size):
        return x
    if H % size[0] == 0 and W % size[1] == 0:
        return F.avg_pool2d(x, (H // size[0], W // size[1]))
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def cross_resolution_consistency(hr_rgba: Tensor, lr_rgba: Tensor) -> Tensor:
    """|down(HR) - LR|^2 over image and alpha channels ([B, C, H, W] vs [B, C, h, w]); LR is the stage-1 render,
    treated as the target (detach it in the caller if stage 1 is frozen - it is, then it has no grad anyway)."""
    return (downsample_to(hr_rgba.float(), tuple(lr_rgba.shape[-2:])) - lr_rgba.float()).square().mean()


# ---------------------------------------------------------------------------------------------- helpers
def lower_strip(images: Tensor, fraction: float) -> Tensor:
    """The bottom ``fraction`` of images [B, C, H, W] (the torso discriminator's input)."""
    H = images.shape[-2]
    h = max(1, round(H * fraction))
    return images[..., H - h:, :]


def all_finite(losses: dict[str, Tensor]) -> str | None:
    """Name of the first non-finite loss, or None."""
    for name, v in losses.items():
        if not bool(torch.isfinite(v.detach()).all()):
            return name
    return None


def pose_smoother_l1(smoothed_entries: Tensor, pooled_entries: Tensor) -> Tensor:
    """AniPortraitGAN's smoother loss ||D(T) - AvgPool(T)||_1: the learned low-pass filter's output [B, 12, G, G, G]
    vs a box filter of the same inverse-LBS entries T (mean absolute difference): keeps the smoother a smoothing
    filter instead of letting the image losses sharpen it back into the seams between skinning regions."""
    return (smoothed_entries.float() - pooled_entries.float()).abs().mean()


def grid_smoothness(volume: Tensor) -> Tensor:
    """Mean squared finite difference between neighbouring nodes of a field sampled on a grid [B, C, D, H, W]
    (the pose deformation's smoothed inverse-LBS affine maps): penalises sharp seams between skinning regions."""
    v = volume.float()
    dz = (v[:, :, 1:] - v[:, :, :-1]).square().mean()
    dy = (v[:, :, :, 1:] - v[:, :, :, :-1]).square().mean()
    dx = (v[..., 1:] - v[..., :-1]).square().mean()
    return dx + dy + dz
