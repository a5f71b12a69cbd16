"""Training-only networks: residual CoordConv discriminators with camera/pose heads, the 3DPortraitGAN pose
branches, and pose/camera mirroring for the symmetry trick.

Pose codes here are the Busto control ``pose`` [B, 6, 3] (axis-angle of joints 12 neck, 13 L collar, 14 R collar,
15 head, 16 L shoulder, 17 R shoulder, canonical-relative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Indices of (neck, head) in the 6-joint pose code: the joints 3DPortraitGAN's pose branch learns.
NECK_HEAD = (0, 3)
#: x-mirror swaps left/right joints: (neck, L collar, R collar, head, L shoulder, R shoulder).
_MIRROR_JOINTS = (0, 2, 1, 3, 5, 4)


def with_neck_head(pose: Tensor, pose_g: Tensor) -> Tensor:
    """Poses [B, 6, 3] with their neck and head rows (:data:`NECK_HEAD`) taken from ``pose_g`` [B, 6, 3] (a pose
    branch's output), the other joints kept; differentiable in both."""
    mask = torch.zeros(1, 6, 1, device=pose.device, dtype=pose.dtype)
    mask[:, list(NECK_HEAD)] = 1
    return pose * (1 - mask) + pose_g.to(pose.dtype) * mask


def mirror_pose(pose: Tensor) -> Tensor:
    """Pose code [B, 6, 3] of the x-mirrored body: swap left/right joints and negate the y, z axis-angle
    components (a reflection S=diag(-1,1,1) maps axis w to -S w)."""
    p = pose[:, list(_MIRROR_JOINTS)]
    sign = torch.tensor([1.0, -1.0, -1.0], dtype=pose.dtype, device=pose.device)
    return p * sign


def mirror_label25(label: Tensor) -> Tensor:
    """Mirror a batch of 25-float camera labels across the YZ plane (same rule as ``Camera.mirror``)."""
    c2w = label[:, :16].reshape(-1, 4, 4)
    s = torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=label.dtype, device=label.device)
    c2w = c2w * s[:, None] * s[None, :]
    K = label[:, 16:].reshape(-1, 3, 3).clone()
    K[:, 0, 1] = -K[:, 0, 1]
    K[:, 0, 2] = K[:, 2, 2] - K[:, 0, 2]
    return torch.cat([c2w.reshape(-1, 16), K.reshape(-1, 9)], dim=1)


def is_left_camera(label: Tensor) -> Tensor:
    """3DPortraitGAN's 'left' cameras (camera centre x >= 0): bool [B]."""
    return label[:, 3] >= 0


def label_pitch_yaw(label: Tensor, look_at: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[Tensor, Tensor]:
    """(pitch, yaw) [B] of the camera centres in 25-float labels around ``look_at`` (Busto orbit convention)."""
    o = label[:, [3, 7, 11]] - torch.tensor(look_at, dtype=label.dtype, device=label.device)
    r = o.norm(dim=-1).clamp_min(1e-9)
    pitch = torch.acos((o[:, 1] / r).clamp(-1, 1))
    yaw = torch.atan2(o[:, 2], o[:, 0])
    return pitch, yaw


# ---------------------------------------------------------------------------------------- discriminator
class CoordConv(nn.Conv2d):
    """3x3 conv that also sees two normalised coordinate channels (GRAM-family discriminators)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin + 2, cout, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        yy = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        xx = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        return super().forward(torch.cat([x, xx, yy], dim=1))


class ResidualDownBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = CoordConv(cin, cout)
        self.conv2 = CoordConv(cout, cout)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2)
        y = F.leaky_relu(self.conv2(y), 0.2)
        y = F.avg_pool2d(y, 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2)


CAMERA_BOUND = torch.tensor([math.pi / 2, 1.0, 1.0])
"""Range of the camera regression targets (pitch - pi/2, cos yaw, sin yaw): the camera head outputs within it."""
POSE_BOUND = math.pi
"""Bound of each predicted axis-angle component (radians)."""


def bounded(raw: Tensor, bound: Tensor | float) -> Tensor:
    """``bound * tanh(raw / bound)``: the identity near 0 (a zero-initialised head starts as before) and never
    beyond ``bound``, so a fresh or diverging discriminator cannot put an unbounded regression error into G."""
    return bound * torch.tanh(raw / bound)


@dataclass
class DOutput:
    logit: Tensor  # [B]
    camera: Tensor  # [B, 3]: (pitch - pi/2, cos yaw, sin yaw)
    pose: Tensor  # [B, 6, 3]


class Discriminator(nn.Module):
    """Residual CoordConv discriminator for a fixed input size (h, w) - square portraits, face crops, or the
    rectangular torso strip - with an adversarial logit, a camera regressor and a pose branch.

    ``symmetric``: 3DPortraitGAN's symmetry trick - inputs seen from a 'left' camera are x-flipped (image and
    camera) before the network, and the camera/pose predictions are mirrored back, so the network only ever
    sees one half of the yaw circle.
    """

    def __init__(self, height: int, width: int, channel_base: int = 1024, channel_max: int = 64,
                 in_channels: int = 3, symmetric: bool = False):
        super().__init__()
        self.height, self.width, self.symmetric = height, width, symmetric

        def ch(size: int) -> int:
            return max(8, min(channel_base // max(size, 1), channel_max))

        h, w = height, width
        c = ch(max(h, w))
        self.from_rgb = nn.Conv2d(in_channels, c, 1)
        blocks = []
        while min(h, w) > 4:
            cout = ch(max(h, w) // 2)
            blocks.append(ResidualDownBlock(c, cout))
            c, h, w = cout, h // 2, w // 2
        self.blocks = nn.ModuleList(blocks)
        self.final_conv = nn.Conv2d(c, c, 3, padding=1)
        self.fc = nn.Linear(c * h * w, max(c, 32))
        feat = max(c, 32)
        self.out_logit = nn.Linear(feat, 1)
        self.out_camera = nn.Linear(feat, 3)
        self.pose_branch = nn.Sequential(nn.Linear(feat + 25, 128), nn.LeakyReLU(0.2), nn.Linear(128, 32),
                                         nn.LeakyReLU(0.2), nn.Linear(32, 18))

    def features(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (self.height, self.width):
            raise ValueError(f"Discriminator expects {self.height}x{self.width} inputs, got {tuple(x.shape[-2:])}")
        y = F.leaky_relu(self.from_rgb(x), 0.2)
        for blk in self.blocks:
            y = blk(y)
        y = F.leaky_relu(self.final_conv(y), 0.2)
        return F.leaky_relu(self.fc(y.flatten(1)), 0.2)

    def forward(self, x: Tensor, camera_label: Tensor | None = None) -> DOutput:
        flip = None
        if self.symmetric and camera_label is not None:
            flip = is_left_camera(camera_label)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            camera_label = torch.where(flip[:, None], mirror_label25(camera_label), camera_label)
        f = self.features(x)
        logit = self.out_logit(f).squeeze(1)
        cam = bounded(self.out_camera(f), CAMERA_BOUND.to(f))
        cond = camera_label if camera_label is not None else f.new_zeros(f.shape[0], 25)
        pose = bounded(self.pose_branch(torch.cat([f, cond.to(f.dtype)], dim=1)), POSE_BOUND).view(-1, 6, 3)
        if flip is not None:
            # mirrored yaw: theta -> pi - theta, i.e. cos -> -cos
            cam = torch.where(flip[:, None], cam * cam.new_tensor([1.0, -1.0, 1.0]), cam)
            pose = torch.where(flip[:, None, None], mirror_pose(pose), pose)
        return DOutput(logit, cam, pose)


# ------------------------------------------------------------------------------------- G pose branch
class PoseBranch(nn.Module):
    """3DPortraitGAN G-side pose branch: (identity, noise, camera label) -> neck and head axis-angles.

    Returns a full pose code [B, 6, 3] with the learned joints (``NECK_HEAD``) filled and the others zero.
    With ``symmetric`` the branch sees only 'right' cameras (mirror, predict, mirror back)."""

    def __init__(self, latent_dim: int, hidden: int = 128, max_angle: float = 1.0, symmetric: bool = True):
        super().__init__()
        self.max_angle, self.symmetric = max_angle, symmetric
        self.net = nn.Sequential(nn.Linear(latent_dim + 25, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 32),
                                 nn.LeakyReLU(0.2), nn.Linear(32, 3 * len(NECK_HEAD)))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, latent: Tensor, camera_label: Tensor) -> Tensor:
        flip = is_left_camera(camera_label) if self.symmetric else None
        if flip is not None:
            camera_label = torch.where(flip[:, None], mirror_label25(camera_label), camera_label)
        out = self.max_angle * torch.tanh(self.net(torch.cat([latent, camera_label.to(latent.dtype)], 1)))
        pose = latent.new_zeros(latent.shape[0], 6, 3)
        pose[:, list(NECK_HEAD)] = out.view(-1, len(NECK_HEAD), 3)
        if flip is not None:
            pose = torch.where(flip[:, None, None], mirror_pose(pose), pose)
        return pose


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta*ema + (1-beta)*model for parameters; buffers are copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach().to(pe.dtype), 1.0 - beta)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
