"""Pinhole cameras in Busto's canonical frame (see docs/CONVENTIONS.md and docs/cameras-and-keyframes.md).

Conventions
-----------
* ``cam2world`` [B, 4, 4] maps camera coordinates to world coordinates, **OpenCV axes**: +x right, +y down,
  +z forward (the viewing direction). World = the canonical SMPL frame (+Y up, subject faces +Z, metres,
  origin at the canonical neck joint J12).
* ``intrinsics`` [B, 3, 3] are **normalised by the image size**: ``[[fx/W, s/W, cx/W], [0, fy/H, cy/H], [0, 0, 1]]``.
  A camera point (x, y, z) lands at normalised image coordinates ``(u, v) = (K @ (x/z, y/z, 1))[:2]``, where
  (0, 0) is the top-left image corner and (1, 1) the bottom-right corner.
* Pixel (i, j) (row i, column j) has its centre at ``(u, v) = ((j + 0.5)/W, (i + 0.5)/H)``.
  :meth:`Camera.project` returns **pixel coordinates** ``(x, y) = (u W - 0.5, v H - 0.5)``: the centre of pixel
  (i, j) is at exactly (x, y) = (j, i) and the image covers [-0.5, W - 0.5] x [-0.5, H - 0.5].
* Orbit cameras (pi-GAN/GRAM angles): ``origin = look_at + r (sin(pitch) cos(yaw), cos(pitch), sin(pitch) sin(yaw))``
  with ``pitch`` the polar angle from +Y and ``yaw`` the azimuth; the camera looks at ``look_at`` with up = +Y.
  The frontal camera (pitch, yaw) = (pi/2, pi/2) sits on +Z and looks down -Z; yaw covers the full circle.
* ``near``/``far`` [B] are distances along the optical axis (camera z), metres.
* The 25-float label (EG3D / 360°PHQ) is the row-major cam2world (16) followed by the row-major normalised
  intrinsics (9).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from portrait_core import conventions as C

__all__ = ["Camera", "fov_to_focal", "focal_to_fov", "orbit_cam2world", "default_near_far"]

Number = float | int
_RIGID_TOL = 1e-3


def fov_to_focal(fov_deg: Tensor | Number) -> Tensor:
    """Full field of view in degrees -> focal length normalised by image size, ``0.5 / tan(fov/2)``."""
    fov = torch.as_tensor(fov_deg, dtype=_dtype_of(fov_deg))
    return 0.5 / torch.tan(torch.deg2rad(fov) * 0.5)


def focal_to_fov(focal: Tensor | Number) -> Tensor:
    """Normalised focal length -> full field of view in degrees (inverse of :func:`fov_to_focal`)."""
    f = torch.as_tensor(focal, dtype=_dtype_of(focal))
    return torch.rad2deg(2.0 * torch.atan(0.5 / f))


def default_near_far(radius: Tensor) -> tuple[Tensor, Tensor]:
    """Near/far for an orbit camera of the given radius (metres) when none are given.

    Same relative depth range as the portrait camera: ``radius * (1 -/+ PORTRAIT_DEPTH_HALF_RANGE / PORTRAIT_RADIUS)``
    (about +/- 11.6 % of the radius).
    """
    half = radius * (C.PORTRAIT_DEPTH_HALF_RANGE / C.PORTRAIT_RADIUS)
    return radius - half, radius + half


def _dtype_of(*values) -> torch.dtype:
    for v in values:
        if torch.is_tensor(v) and v.is_floating_point():
            return v.dtype
    return torch.get_default_dtype()


def _device_of(*values) -> torch.device | None:
    for v in values:
        if torch.is_tensor(v):
            return v.device
    return None


def _as_batch(name: str, value, dtype, device, trailing: tuple[int, ...] = ()) -> Tensor:
    """Scalar / [B] (or [*trailing] / [B, *trailing]) -> tensor with a leading batch dim (size 1 if absent)."""
    t = torch.as_tensor(value, dtype=dtype, device=device)
    nt = len(trailing)
    if t.dim() == nt:
        t = t.unsqueeze(0)
    if t.dim() != nt + 1 or tuple(t.shape[1:]) != trailing:
        want = f"[{', '.join(map(str, trailing))}] or [B, {', '.join(map(str, trailing))}]" if nt else "a scalar or [B]"
        raise ValueError(f"Camera: {name} must be {want}, got shape {tuple(t.shape)}")
    return t


def _broadcast_batch(named: dict[str, Tensor]) -> dict[str, Tensor]:
    sizes = {n: t.shape[0] for n, t in named.items()}
    big = {s for s in sizes.values() if s != 1}
    if len(big) > 1:
        raise ValueError(f"Camera: batch sizes do not match: {sizes}")
    b = big.pop() if big else 1
    return {n: t.expand(b, *t.shape[1:]) for n, t in named.items()}


def orbit_cam2world(yaw: Tensor, pitch: Tensor, radius: Tensor, look_at: Tensor) -> Tensor:
    """Orbit pose -> OpenCV cam2world [B, 4, 4]. Inputs [B], [B], [B], [B, 3] (radians, metres).

    The axes are written in closed form (no cross product with the up vector), so the pose is smooth and
    defined for every (pitch, yaw), the poles included: right = (sin yaw, 0, -cos yaw),
    forward = -(sin p cos y, cos p, sin p sin y), down = forward x right.
    """
    sp, cp, sy, cy = torch.sin(pitch), torch.cos(pitch), torch.sin(yaw), torch.cos(yaw)
    zeros = torch.zeros_like(yaw)
    back = torch.stack([sp * cy, cp, sp * sy], dim=-1)  # unit vector from look_at to the camera
    x_axis = torch.stack([sy, zeros, -cy], dim=-1)
    z_axis = -back
    y_axis = torch.stack([cp * cy, -sp, cp * sy], dim=-1)  # = z x x
    origin = look_at + radius[:, None] * back
    R = torch.stack([x_axis, y_axis, z_axis], dim=-1)
    top = torch.cat([R, origin[:, :, None]], dim=-1)
    bottom = torch.zeros_like(top[:, :1, :])
    bottom[:, 0, 3] = 1.0
    return torch.cat([top, bottom], dim=1)


def _intrinsics_from_focal(focal: Tensor) -> Tensor:
    o, i, h = torch.zeros_like(focal), torch.ones_like(focal), torch.full_like(focal, 0.5)
    return torch.stack([focal, o, h, o, focal, h, o, o, i], dim=-1).reshape(-1, 3, 3)


@dataclass(eq=False)
class Camera:
    """A batch of pinhole cameras. See the module docstring for the conventions.

    Attributes: ``cam2world`` [B, 4, 4] (OpenCV, metres, canonical frame), ``intrinsics`` [B, 3, 3]
    (normalised by image size), ``near`` [B], ``far`` [B] (metres along the optical axis).
    """

    cam2world: Tensor
    intrinsics: Tensor
    near: Tensor
    far: Tensor

    def __post_init__(self) -> None:
        for name in ("cam2world", "intrinsics", "near", "far"):
            if not torch.is_tensor(getattr(self, name)):
                raise TypeError(f"Camera.{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        c2w, K = self.cam2world, self.intrinsics
        if c2w.dim() != 3 or tuple(c2w.shape[1:]) != (4, 4):
            raise ValueError(f"Camera.cam2world must be [B, 4, 4], got {tuple(c2w.shape)}")
        b = c2w.shape[0]
        if tuple(K.shape) != (b, 3, 3):
            raise ValueError(f"Camera.intrinsics must be [B={b}, 3, 3], got {tuple(K.shape)}")
        for name in ("near", "far"):
            t = getattr(self, name)
            if t.dim() == 0:
                t = t.expand(b)
                setattr(self, name, t)
            if tuple(t.shape) != (b,):
                raise ValueError(f"Camera.{name} must be [B={b}] (or a scalar), got {tuple(t.shape)}")
        if not (c2w.is_floating_point() and K.dtype == c2w.dtype):
            raise TypeError(f"Camera: cam2world and intrinsics must share a float dtype, got {c2w.dtype}, {K.dtype}")
        if K.device != c2w.device or self.near.device != c2w.device or self.far.device != c2w.device:
            raise ValueError("Camera: all tensors must be on the same device")
        self.near = self.near.to(c2w.dtype)
        self.far = self.far.to(c2w.dtype)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def orbit(
        cls,
        yaw: Tensor | Number,
        pitch: Tensor | Number,
        radius: Tensor | Number,
        look_at: Tensor | Sequence[float],
        fov_deg: Tensor | Number,
        near: Tensor | Number | None = None,
        far: Tensor | Number | None = None,
    ) -> Camera:
        """Orbit camera(s) looking at ``look_at`` with up = +Y.

        ``yaw``/``pitch`` (radians), ``radius`` (metres), ``fov_deg`` (full field of view, degrees), ``near``/``far``
        (metres) are scalars or [B]; ``look_at`` is [3] or [B, 3]. Size-1 batches broadcast. Without near/far the
        depth range is :func:`default_near_far`. Differentiable in all inputs.
        """
        dtype = _dtype_of(yaw, pitch, radius, look_at, fov_deg)
        device = _device_of(yaw, pitch, radius, look_at, fov_deg)
        t = {
            "yaw": _as_batch("yaw", yaw, dtype, device),
            "pitch": _as_batch("pitch", pitch, dtype, device),
            "radius": _as_batch("radius", radius, dtype, device),
            "fov_deg": _as_batch("fov_deg", fov_deg, dtype, device),
            "look_at": _as_batch("look_at", look_at, dtype, device, (3,)),
        }
        if near is not None:
            t["near"] = _as_batch("near", near, dtype, device)
        if far is not None:
            t["far"] = _as_batch("far", far, dtype, device)
        t = _broadcast_batch(t)
        d_near, d_far = default_near_far(t["radius"])
        c2w = orbit_cam2world(t["yaw"], t["pitch"], t["radius"], t["look_at"])
        K = _intrinsics_from_focal(fov_to_focal(t["fov_deg"]))
        return cls(c2w, K, t.get("near", d_near), t.get("far", d_far))

    @classmethod
    def portrait(
        cls,
        yaw: Tensor | Number = C.FRONTAL_YAW,
        pitch: Tensor | Number = C.FRONTAL_PITCH,
        batch: int | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Camera:
        """The generator's portrait camera: orbit around ``PORTRAIT_LOOK_AT`` at ``PORTRAIT_RADIUS``, fov
        ``PORTRAIT_FOV_DEG``, near/far = radius -/+ ``PORTRAIT_DEPTH_HALF_RANGE``. ``batch`` repeats a scalar pose."""
        dtype = dtype or _dtype_of(yaw, pitch)
        device = device if device is not None else _device_of(yaw, pitch)
        yaw = _as_batch("yaw", yaw, dtype, device)
        pitch = _as_batch("pitch", pitch, dtype, device)
        if batch is not None:
            yaw, pitch = _expand_to(batch, yaw=yaw, pitch=pitch)
        r = C.PORTRAIT_RADIUS
        look_at = torch.tensor(C.PORTRAIT_LOOK_AT, dtype=dtype, device=device)
        return cls.orbit(yaw, pitch, r, look_at, C.PORTRAIT_FOV_DEG,
                         r - C.PORTRAIT_DEPTH_HALF_RANGE, r + C.PORTRAIT_DEPTH_HALF_RANGE)

    @classmethod
    def face(
        cls,
        head_transform: Tensor,
        face_centre: Tensor | Sequence[float] = C.FACE_CENTRE,
        yaw: Tensor | Number = C.FRONTAL_YAW,
        pitch: Tensor | Number = C.FRONTAL_PITCH,
    ) -> Camera:
        """Face camera that follows the head.

        An orbit camera around the **canonical** face centre ``face_centre`` ([3] or [B, 3], metres) at
        ``FACE_RADIUS`` with fov ``FACE_FOV_DEG`` and near/far = radius -/+ ``FACE_DEPTH_HALF_RANGE``, then carried
        rigidly by ``head_transform`` [B, 4, 4] (or [4, 4]), the head's canonical->posed transform (G_15):
        ``cam2world = head_transform @ cam2world_canonical``. With an identity transform it is a plain orbit camera.
        """
        if not torch.is_tensor(head_transform):
            raise TypeError("Camera.face: head_transform must be a torch.Tensor [B, 4, 4]")
        G = head_transform if head_transform.dim() == 3 else head_transform.unsqueeze(0)
        if G.dim() != 3 or tuple(G.shape[1:]) != (4, 4):
            raise ValueError(f"Camera.face: head_transform must be [B, 4, 4], got {tuple(head_transform.shape)}")
        if not G.is_floating_point():
            raise TypeError(f"Camera.face: head_transform must be floating point, got {G.dtype}")
        with torch.no_grad():
            R = G[:, :3, :3]
            eye = torch.eye(3, dtype=G.dtype, device=G.device)
            err = (R.transpose(-1, -2) @ R - eye).abs().amax() if G.shape[0] else torch.zeros(())
            if not torch.isfinite(err) or err > _RIGID_TOL:
                raise ValueError(f"Camera.face: head_transform must be a rigid transform (orthonormal rotation); "
                                 f"max |R^T R - I| = {float(err):.3g}")
        r = C.FACE_RADIUS
        base = cls.orbit(
            _as_batch("yaw", yaw, G.dtype, G.device), _as_batch("pitch", pitch, G.dtype, G.device), r,
            _as_batch("face_centre", face_centre, G.dtype, G.device, (3,)), C.FACE_FOV_DEG,
            r - C.FACE_DEPTH_HALF_RANGE, r + C.FACE_DEPTH_HALF_RANGE,
        )
        b = max(base.batch_size, G.shape[0])
        if base.batch_size not in (1, b) or G.shape[0] not in (1, b):
            raise ValueError(f"Camera.face: batch sizes do not match: head_transform {G.shape[0]}, "
                             f"face_centre/yaw/pitch {base.batch_size}")
        base = base.expand(b)
        return cls(G.expand(b, 4, 4) @ base.cam2world, base.intrinsics, base.near, base.far)

    @classmethod
    def from_label25(
        cls,
        label: Tensor,
        near: Tensor | Number | None = None,
        far: Tensor | Number | None = None,
        look_at: Tensor | Sequence[float] | None = None,
    ) -> Camera:
        """EG3D/360°PHQ label [B, 25] (or [25]) -> Camera. Without near/far the range is :func:`default_near_far`
        of the distance from the camera to ``look_at`` (default: the canonical origin)."""
        lab = torch.as_tensor(label)
        if not lab.is_floating_point():
            lab = lab.to(torch.get_default_dtype())
        if lab.dim() == 1:
            lab = lab.unsqueeze(0)
        if lab.dim() != 2 or lab.shape[1] != 25:
            raise ValueError(f"Camera.from_label25: label must be [B, 25] (16 cam2world + 9 intrinsics), "
                             f"got {tuple(lab.shape)}")
        if not torch.isfinite(lab).all():
            raise ValueError("Camera.from_label25: label contains NaN or inf")
        c2w = lab[:, :16].reshape(-1, 4, 4)
        K = lab[:, 16:].reshape(-1, 3, 3)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=lab.dtype, device=lab.device)
        if not torch.allclose(c2w[:, 3], bottom.expand_as(c2w[:, 3]), atol=1e-5):
            raise ValueError("Camera.from_label25: label[12:16] (last cam2world row) must be (0, 0, 0, 1)")
        R = c2w[:, :3, :3]
        err = (R.transpose(-1, -2) @ R - torch.eye(3, dtype=lab.dtype, device=lab.device)).abs().amax()
        if err > _RIGID_TOL:
            raise ValueError(f"Camera.from_label25: cam2world rotation is not orthonormal (max |R^T R - I| = {float(err):.3g})")
        if not torch.allclose(K[:, 2], bottom[1:].expand_as(K[:, 2]), atol=1e-5):
            raise ValueError("Camera.from_label25: label[22:25] (last intrinsics row) must be (0, 0, 1)")
        if near is None or far is None:
            target = torch.zeros(3, dtype=lab.dtype, device=lab.device) if look_at is None else torch.as_tensor(
                look_at, dtype=lab.dtype, device=lab.device)
            d_near, d_far = default_near_far((c2w[:, :3, 3] - target).norm(dim=-1))
            near = d_near if near is None else near
            far = d_far if far is None else far
        b = lab.shape[0]
        near = _as_batch("near", near, lab.dtype, lab.device).expand(b)
        far = _as_batch("far", far, lab.dtype, lab.device).expand(b)
        return cls(c2w.clone(), K.clone(), near, far)

    @classmethod
    def cat(cls, cameras: Sequence[Camera]) -> Camera:
        """Concatenate batches of cameras."""
        if not cameras:
            raise ValueError("Camera.cat: no cameras given")
        return cls(
            torch.cat([c.cam2world for c in cameras]), torch.cat([c.intrinsics for c in cameras]),
            torch.cat([c.near for c in cameras]), torch.cat([c.far for c in cameras]),
        )

    # ------------------------------------------------------------------ batch helpers
    @property
    def batch_size(self) -> int:
        return self.cam2world.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def device(self) -> torch.device:
        return self.cam2world.device

    @property
    def dtype(self) -> torch.dtype:
        return self.cam2world.dtype

    @property
    def origin(self) -> Tensor:
        """Camera centres [B, 3] (metres, world)."""
        return self.cam2world[:, :3, 3]

    @property
    def rotation(self) -> Tensor:
        """Camera-to-world rotation [B, 3, 3]; columns are the OpenCV axes (right, down, forward) in world."""
        return self.cam2world[:, :3, :3]

    @property
    def forward(self) -> Tensor:
        """Viewing directions [B, 3] (camera +z in world)."""
        return self.cam2world[:, :3, 2]

    @property
    def world2cam(self) -> Tensor:
        """Inverse of ``cam2world`` [B, 4, 4] (rigid inverse)."""
        R_t = self.rotation.transpose(-1, -2)
        t = -(R_t @ self.origin[..., None])
        top = torch.cat([R_t, t], dim=-1)
        return torch.cat([top, self.cam2world[:, 3:, :]], dim=1)

    @property
    def fov_deg(self) -> Tensor:
        """Vertical field of view [B] in degrees (from fy)."""
        return focal_to_fov(self.intrinsics[:, 1, 1])

    def index(self, idx) -> Camera:
        """Select cameras by int, slice, list or bool/long tensor (keeps the batch dim)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return Camera(self.cam2world[idx], self.intrinsics[idx], self.near[idx], self.far[idx])

    __getitem__ = index

    def expand(self, batch: int) -> Camera:
        """Repeat a single camera to ``batch`` (no-op if already that size)."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"Camera.expand: cannot expand a batch of {self.batch_size} to {batch}")
        return Camera(self.cam2world.expand(batch, 4, 4), self.intrinsics.expand(batch, 3, 3),
                      self.near.expand(batch), self.far.expand(batch))

    def to(self, device=None, dtype: torch.dtype | None = None) -> Camera:
        """Move/cast all tensors (like ``Tensor.to``)."""
        kw = {"device": device, "dtype": dtype}
        return Camera(self.cam2world.to(**kw), self.intrinsics.to(**kw), self.near.to(**kw), self.far.to(**kw))

    def detach(self) -> Camera:
        return Camera(self.cam2world.detach(), self.intrinsics.detach(), self.near.detach(), self.far.detach())

    def with_near_far(self, near: Tensor | Number, far: Tensor | Number) -> Camera:
        """Same cameras with another depth range (scalars or [B], metres)."""
        b, dt, dev = self.batch_size, self.dtype, self.device
        return Camera(self.cam2world, self.intrinsics, _as_batch("near", near, dt, dev).expand(b),
                      _as_batch("far", far, dt, dev).expand(b))

    def validate(self, name: str = "camera") -> Camera:
        """Check values (finite, rigid cam2world, positive focal, 0 < near < far); raise ValueError naming ``name``."""
        for field in ("cam2world", "intrinsics", "near", "far"):
            if not torch.isfinite(getattr(self, field)).all():
                raise ValueError(f"{name}: {field} contains NaN or inf")
        R = self.rotation
        err = (R.transpose(-1, -2) @ R - torch.eye(3, dtype=self.dtype, device=self.device)).abs().amax()
        if err > _RIGID_TOL:
            raise ValueError(f"{name}: cam2world rotation is not orthonormal (max |R^T R - I| = {float(err):.3g})")
        if (torch.det(R) < 0).any():
            raise ValueError(f"{name}: cam2world rotation has determinant -1 (a reflection)")
        if (self.intrinsics[:, 0, 0] <= 0).any() or (self.intrinsics[:, 1, 1] <= 0).any():
            raise ValueError(f"{name}: intrinsics focal lengths must be positive")
        if (self.near <= 0).any() or (self.far <= self.near).any():
            raise ValueError(f"{name}: need 0 < near < far")
        return self

    # ------------------------------------------------------------------ labels and angles
    def to_label25(self) -> Tensor:
        """[B, 25]: row-major cam2world (16) + row-major normalised intrinsics (9)."""
        return torch.cat([self.cam2world.reshape(-1, 16), self.intrinsics.reshape(-1, 9)], dim=-1)

    def orbit_params(self, look_at: Tensor | Sequence[float] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(pitch [B], yaw [B], radius [B]) of the camera centre around ``look_at`` (default: the canonical origin).

        pitch = acos(dy / r) in [0, pi]; yaw = atan2(dz, dx) in (-pi, pi] (a back view at yaw 3pi/2 comes back as
        -pi/2). Only the position is used; the orientation is not checked.
        """
        target = torch.zeros(3, dtype=self.dtype, device=self.device) if look_at is None else torch.as_tensor(
            look_at, dtype=self.dtype, device=self.device)
        d = self.origin - target
        r = d.norm(dim=-1)
        pitch = torch.acos((d[:, 1] / r.clamp_min(1e-12)).clamp(-1.0, 1.0))
        yaw = torch.atan2(d[:, 2], d[:, 0])
        return pitch, yaw, r

    def pitch_yaw_radius(self, look_at: Tensor | Sequence[float] | None = None) -> Tensor:
        """:meth:`orbit_params` stacked as [B, 3] = (pitch, yaw, radius)."""
        return torch.stack(self.orbit_params(look_at), dim=-1)

    def mirror(self) -> Camera:
        """Mirror across the YZ plane (x -> -x): the camera that sees the left-right mirrored scene as the
        horizontally flipped image.

        ``cam2world' = diag(-1,1,1,1) @ cam2world @ diag(-1,1,1,1)``, i.e. negate entries (0,1), (0,2), (0,3), (1,0),
        (2,0) (3DPortraitGAN's flip rule); intrinsics get cx -> 1 - cx and skew -> -skew (unchanged for cx = 0.5).
        """
        s = torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=self.dtype, device=self.device)
        c2w = self.cam2world * s[:, None] * s[None, :]
        K = self.intrinsics.clone()
        K[:, 0, 1] = -K[:, 0, 1]
        K[:, 0, 2] = K[:, 2, 2] - K[:, 0, 2]
        return Camera(c2w, K, self.near, self.far)

    # ------------------------------------------------------------------ rays and projection
    def rays_at(self, uv: Tensor) -> tuple[Tensor, Tensor]:
        """Rays through normalised image coordinates ``uv`` [B, N, 2] (or [N, 2], shared by the batch).

        Returns origins [B, N, 3] and unit directions [B, N, 3] in world (metres).
        """
        if not torch.is_tensor(uv) or uv.shape[-1] != 2 or uv.dim() not in (2, 3):
            raise ValueError(f"Camera.rays_at: uv must be [B, N, 2] or [N, 2], got "
                             f"{tuple(uv.shape) if torch.is_tensor(uv) else type(uv).__name__}")
        uv = uv.to(self.dtype)
        if uv.dim() == 2:
            uv = uv.unsqueeze(0).expand(self.batch_size, -1, -1)
        if uv.shape[0] != self.batch_size:
            raise ValueError(f"Camera.rays_at: uv batch {uv.shape[0]} != camera batch {self.batch_size}")
        K = self.intrinsics
        fx, s, cx = K[:, 0, 0, None], K[:, 0, 1, None], K[:, 0, 2, None]
        fy, cy = K[:, 1, 1, None], K[:, 1, 2, None]
        y = (uv[..., 1] - cy) / fy
        x = (uv[..., 0] - cx - s * y) / fx
        d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [B, N, 3]
        d = d_cam @ self.rotation.transpose(-1, -2)
        d = d / d.norm(dim=-1, keepdim=True)
        o = self.origin[:, None, :].expand_as(d)
        return o, d

    def pixel_uv(self, height: int, width: int) -> Tensor:
        """Normalised coordinates of the pixel centres [H*W, 2], row-major: ((j + 0.5)/W, (i + 0.5)/H)."""
        _check_hw("Camera.pixel_uv", height, width)
        v = (torch.arange(height, dtype=self.dtype, device=self.device) + 0.5) / height
        u = (torch.arange(width, dtype=self.dtype, device=self.device) + 0.5) / width
        vv, uu = torch.meshgrid(v, u, indexing="ij")
        return torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=-1)

    def rays(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Rays through all pixel centres: origins [B, H*W, 3], unit directions [B, H*W, 3]; pixel (i, j) is
        entry ``i * W + j``."""
        return self.rays_at(self.pixel_uv(height, width))

    def project_normalised(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """World points [B, N, 3] (or [N, 3]) -> normalised image coordinates uv [B, N, 2] and depth [B, N]
        (camera z, metres; points behind the camera have depth <= 0 and meaningless uv)."""
        p = self._check_points("Camera.project_normalised", points)
        p_cam = (p - self.origin[:, None, :]) @ self.rotation  # R^T (p - t), row-vector form
        z = p_cam[..., 2]
        z_safe = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
        xy = p_cam[..., :2] / z_safe[..., None]
        K = self.intrinsics
        u = K[:, 0, 0, None] * xy[..., 0] + K[:, 0, 1, None] * xy[..., 1] + K[:, 0, 2, None]
        v = K[:, 1, 1, None] * xy[..., 1] + K[:, 1, 2, None]
        return torch.stack([u, v], dim=-1), z

    def project(self, points: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
        """World points [B, N, 3] (or [N, 3]) -> pixel coordinates [B, N, 2] and depth [B, N].

        Pixels: x right, y down, ``(x, y) = (u W - 0.5, v H - 0.5)`` so the centre of pixel (row i, column j) is at
        (j, i). Depth is the camera z (metres along the optical axis).
        """
        _check_hw("Camera.project", height, width)
        uv, z = self.project_normalised(points)
        scale = torch.tensor([width, height], dtype=self.dtype, device=self.device)
        return uv * scale - 0.5, z

    def _check_points(self, where: str, points: Tensor) -> Tensor:
        if not torch.is_tensor(points) or points.dim() not in (2, 3) or points.shape[-1] != 3:
            raise ValueError(f"{where}: points must be [B, N, 3] or [N, 3], got "
                             f"{tuple(points.shape) if torch.is_tensor(points) else type(points).__name__}")
        p = points.to(self.dtype)
        if p.dim() == 2:
            p = p.unsqueeze(0).expand(self.batch_size, -1, -1)
        if p.shape[0] != self.batch_size:
            raise ValueError(f"{where}: points batch {p.shape[0]} != camera batch {self.batch_size}")
        return p

    # ------------------------------------------------------------------ drawing helpers
    def frustum_corners(self, depth: Tensor | Number | None = None) -> Tensor:
        """World positions [B, 4, 3] of the image corners at camera depth ``depth`` (default: ``far``), in the order
        top-left, top-right, bottom-right, bottom-left."""
        uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=self.dtype, device=self.device)
        o, d = self.rays_at(uv)
        z = (d * self.forward[:, None, :]).sum(-1)  # cos of the angle to the axis
        depth_t = self.far if depth is None else _as_batch("depth", depth, self.dtype, self.device).expand(self.batch_size)
        return o + d * (depth_t[:, None] / z)[..., None]


def _check_hw(where: str, height: int, width: int) -> None:
    if not (isinstance(height, int) and isinstance(width, int)) or height <= 0 or width <= 0:
        raise ValueError(f"{where}: height and width must be positive ints, got {height!r}, {width!r}")


def _expand_to(batch: int, **tensors: Tensor) -> list[Tensor]:
    out = []
    for name, t in tensors.items():
        if t.shape[0] not in (1, batch):
            raise ValueError(f"Camera: {name} has batch {t.shape[0]} but batch={batch} was requested")
        out.append(t.expand(batch, *t.shape[1:]))
    return out

