"""Small tensor dataclasses passed between the generator, the avatar cache and their callers.

Shapes and units follow docs/CONVENTIONS.md: pose [B, 6, 3] axis-angle (radians) relative to the canonical pose,
expression [B, 64] and identity [B, 80] 3DMM coefficients, body_shape [B, 10] SMPL betas, noise [B, 80].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from portrait_core import conventions as C

__all__ = ["Latents", "Controls", "RenderOutput", "check_tensor"]


def check_tensor(where: str, name: str, value, shape: tuple[int | None, ...]) -> Tensor:
    """Raise a clear error unless ``value`` is a finite float tensor of ``shape`` (None = any size)."""
    if not torch.is_tensor(value):
        raise TypeError(f"{where}: {name} must be a torch.Tensor of shape {_fmt(shape)}, got {type(value).__name__}")
    if value.dim() != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
        raise ValueError(f"{where}: {name} must have shape {_fmt(shape)}, got {list(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{where}: {name} must be a floating-point tensor, got {value.dtype}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{where}: {name} contains NaN or inf")
    return value


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("B" if s is None else str(s) for s in shape) + "]"


@dataclass
class Latents:
    """Per-identity latent codes: ``identity`` [B, 80] (3DMM identity) and ``noise`` [B, 80] (appearance)."""

    identity: Tensor
    noise: Tensor

    @classmethod
    def sample(cls, batch: int = 1, seed: int | None = None, device: torch.device | str = "cpu") -> Latents:
        """Standard-normal identity and noise codes; the same ``seed`` gives the same latents on any machine."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        identity = torch.randn(batch, C.IDENTITY_DIM, generator=g)
        noise = torch.randn(batch, C.NOISE_DIM, generator=g)
        return cls(identity.to(device), noise.to(device))

    @property
    def batch_size(self) -> int:
        return self.identity.shape[0]

    def validate(self, where: str = "Latents") -> Latents:
        check_tensor(where, "identity", self.identity, (None, C.IDENTITY_DIM))
        check_tensor(where, "noise", self.noise, (self.identity.shape[0], C.NOISE_DIM))
        return self

    def to(self, device=None, dtype=None) -> Latents:
        return Latents(self.identity.to(device=device, dtype=dtype), self.noise.to(device=device, dtype=dtype))

    def index(self, idx) -> Latents:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Latents(self.identity[idx], self.noise[idx])


@dataclass
class Controls:
    """Per-frame controls: ``pose`` [B, 6, 3], ``expression`` [B, 64], ``body_shape`` [B, 10]."""

    pose: Tensor
    expression: Tensor
    body_shape: Tensor

    @classmethod
    def neutral(cls, batch: int = 1, device: torch.device | str = "cpu") -> Controls:
        """Canonical pose, neutral expression, mean body shape."""
        return cls(torch.zeros(batch, *C.POSE_SHAPE, device=device), torch.zeros(batch, C.EXPRESSION_DIM, device=device),
                   torch.zeros(batch, C.BODY_SHAPE_DIM, device=device))

    @property
    def batch_size(self) -> int:
        return self.pose.shape[0]

    def validate(self, where: str = "Controls") -> Controls:
        check_tensor(where, "pose", self.pose, (None, *C.POSE_SHAPE))
        b = self.pose.shape[0]
        check_tensor(where, "expression", self.expression, (b, C.EXPRESSION_DIM))
        check_tensor(where, "body_shape", self.body_shape, (b, C.BODY_SHAPE_DIM))
        return self

    def to(self, device=None, dtype=None) -> Controls:
        kw = {"device": device, "dtype": dtype}
        return Controls(self.pose.to(**kw), self.expression.to(**kw), self.body_shape.to(**kw))


@dataclass
class RenderOutput:
    """What a render returns. Images are [B, 3, H, W] in [-1, 1] over a white background; alpha [B, 1, H, W] in
    [0, 1]; depth [B, 1, H, W] in metres along the camera's optical axis (camera z).

    ``image``/``alpha``/``depth`` are super-resolved when super-resolution was requested, otherwise they equal
    the low-resolution (ray-resolution) ``image_lr``/``alpha_lr``/``depth_lr`` (None when a super-resolved render
    was asked for without them: ``low_resolution=False``). ``features`` [B, C, h, w] are the
    composited radiance features at ray resolution (None where unavailable). ``aux`` holds training signals:
    ``valid`` [B, L, h, w] (bool, a ray crosses level l), ``weights`` [B, L, h, w], ``expression_offsets``
    [B, h*w, N, 3] (metres, at the ray samples in canonical-pose space) and ``canonical_pose_points``
    [B, h*w, N, 3] (metres).
    """

    image: Tensor
    alpha: Tensor
    depth: Tensor
    image_lr: Tensor | None
    alpha_lr: Tensor | None
    depth_lr: Tensor | None
    features: Tensor | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)

    @property
    def resolution(self) -> int:
        return self.image.shape[-1]
