"""Camera helpers of every training objective: labels -> cameras with the training depth ranges, the fakes' face
camera, random windows of a frame (detail at a fixed ray count), and the regression targets of D's camera head.

Labels are the 25-float EG3D layout (docs: CONVENTIONS.md, Cameras); images are [B, C, H, W].
"""

from __future__ import annotations

import torch
from torch import Tensor

from portrait_core import conventions as C
from portrait_core.geometry.camera import Camera
from train import losses as L
from train.networks import label_pitch_yaw


def portrait_camera(label: Tensor) -> Camera:
    """Camera of 25-float portrait labels with the depth range radius -/+ PORTRAIT_DEPTH_HALF_RANGE about the
    portrait look-at point (any radius: SynthPortrait's 2.23 m or 360PHQ's 2.7 m)."""
    cam = Camera.from_label25(label)
    r = (cam.origin - cam.origin.new_tensor(C.PORTRAIT_LOOK_AT)).norm(dim=-1)
    return cam.with_near_far(r - C.PORTRAIT_DEPTH_HALF_RANGE, r + C.PORTRAIT_DEPTH_HALF_RANGE)


def face_camera(label: Tensor) -> Camera:
    """Face camera of 25-float face-camera labels (it orbits the posed face centre at FACE_RADIUS)."""
    cam = Camera.from_label25(label)
    return cam.with_near_far(C.FACE_RADIUS - C.FACE_DEPTH_HALF_RANGE, C.FACE_RADIUS + C.FACE_DEPTH_HALF_RANGE)


def fake_face_camera(G, controls, portrait_label: Tensor) -> Camera:
    """The face camera of a fake, drawn jointly with its portrait camera as the data's face crops are: it orbits
    the head at the portrait camera's (pitch, yaw) about the portrait look-at point and follows the head
    (SynthPortrait and the 360PHQ/SHHQ readers build the real face cameras the same way)."""
    pitch, yaw = label_pitch_yaw(portrait_label.float(), C.PORTRAIT_LOOK_AT)
    return G.face_camera(controls, yaw=yaw, pitch=pitch)


def front_facing(labels: Tensor) -> Tensor:
    """Cameras in front of the subject (camera centre z > 0, i.e. within 90 degrees of frontal yaw): bool [B]."""
    return labels[:, 11] > 0


def camera_targets(labels: Tensor) -> Tensor:
    """D's camera-head regression targets [B, 3] of portrait labels: (pitch - pi/2, cos yaw, sin yaw)."""
    pitch, yaw = label_pitch_yaw(labels.float(), C.PORTRAIT_LOOK_AT)
    return L.camera_target(pitch, yaw)


def window_camera(cam: Camera, u0: Tensor, v0: Tensor, size: Tensor | float) -> Camera:
    """The camera whose full frame is the window [u0, u0 + size] x [v0, v0 + size] (normalised image
    coordinates, per batch entry) of ``cam``'s frame: fx' = fx / size, cx' = (cx - u0) / size (same for y)."""
    K = cam.intrinsics.clone()
    size = torch.as_tensor(size, dtype=K.dtype, device=K.device).expand(K.shape[0])
    K[:, 0, 0] = K[:, 0, 0] / size
    K[:, 0, 1] = K[:, 0, 1] / size
    K[:, 1, 1] = K[:, 1, 1] / size
    K[:, 0, 2] = (K[:, 0, 2] - u0) / size
    K[:, 1, 2] = (K[:, 1, 2] - v0) / size
    return Camera(cam.cam2world, K, cam.near, cam.far)


def random_window(cam: Camera, images: list[Tensor], res: int, scale: int,
                  gen: torch.Generator) -> tuple[Camera, list[Tensor]]:
    """Training targets at ``res``^2 rays. ``scale`` 1: the whole frame, images area-downsampled to ``res``.
    ``scale`` k > 1: per batch entry a random ``res``^2 window of the frame at ``k * res``^2 pixel density, with
    the camera whose full frame is that window (:func:`window_camera`) and the matching crops of ``images``."""
    if scale <= 1:
        return cam, [downsample(x, res) for x in images]
    b, eff = images[0].shape[0], res * scale
    i0 = torch.randint(eff - res + 1, (b,), generator=gen)
    j0 = torch.randint(eff - res + 1, (b,), generator=gen)
    rows = (i0[:, None] + torch.arange(res)[None])[:, :, None]  # [B, res, 1]
    cols = (j0[:, None] + torch.arange(res)[None])[:, None, :]  # [B, 1, res]
    bi = torch.arange(b)[:, None, None]
    crops = [downsample(x, eff).permute(0, 2, 3, 1)[bi, rows, cols].permute(0, 3, 1, 2) for x in images]
    return window_camera(cam, j0.float() / eff, i0.float() / eff, res / eff), crops


def downsample(x: Tensor, size: int) -> Tensor:
    """Area (box) downsampling [B, C, H, W] -> [B, C, size, size] (antialiased bicubic when not a divisor)."""
    return L.downsample_to(x, (size, size))
