"""Avatar: one identity with all its per-identity work baked once, rendered frame by frame.

Baked at construction (no grad): truncated radiance/SR styles, canonical radiance textures [L, 4 + C, T, T],
super-resolved textures [L, 4, sT, sT], the latent-free manifold grid (shared through the generator's cache) and
the canonical body. A frame then costs: inverse LBS on the posed-space grid + smoothing, expression grid (cached
per expression), grid lookups at the ray samples, vectorised level intersections, texture lookups and sorted
compositing. The radiance network never runs per frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from portrait_core import conventions as C
from portrait_core.geometry.camera import Camera

from . import rendering as R
from .generator import ExpressionBake, SceneFields, _camera_for_batch
from .structures import Latents, RenderOutput, check_tensor

if TYPE_CHECKING:
    from .generator import Generator

__all__ = ["Avatar", "level_slab_occupancy"]


def level_slab_occupancy(s: Tensor, alpha: Tensor, levels: Tensor) -> Tensor:
    """Accumulated opacity [P] at points with manifold values ``s`` [P] (smaller inside) given each level's
    texel opacity ``alpha`` [P, L] there (``levels`` [L], evenly spaced). Level l is a slab of thickness
    ``h = |levels[1] - levels[0]|`` centred on ``s = l``; the fraction ``f = clamp((l - s) / h + 1/2, 0, 1)``
    of it lies between the point and the outside and contributes ``1 - (1 - alpha)^f``, so the occupancy is
    continuous in ``s`` and equals the hard "all enclosing levels" value half a spacing away from every level."""
    spacing = (levels[0] - levels[1]).abs() if levels.numel() > 1 else levels.new_tensor(1.0)
    fraction = ((levels[None, :] - s[:, None]) / spacing + 0.5).clamp(0.0, 1.0)
    log_transmittance = fraction * torch.log1p(-alpha.clamp(0.0, 1.0 - 1e-6))
    return 1.0 - log_transmittance.sum(-1).exp()


class Avatar:
    """Per-identity cache. Build with :meth:`Generator.make_avatar`; all methods run without gradients.

    Attributes: ``textures`` [1, L, 4 + C, T, T] (rgb in [0, 1], alpha, features), ``textures_hr``
    [1, L, 4, sT, sT] or None, ``body_shape`` [1, 10], ``truncation``.
    """

    def __init__(self, generator: Generator, latents: Latents, body_shape: Tensor | None = None, *,
                 truncation: float = 0.7, super_resolve: bool = True):
        where = "make_avatar"
        latents = latents.validate(f"{where}: latents")
        if latents.batch_size != 1:
            raise ValueError(f"{where}: an avatar is one identity; got a latents batch of {latents.batch_size} "
                             f"(use latents.index(i))")
        device = generator.device
        if body_shape is None:
            body_shape = torch.zeros(1, C.BODY_SHAPE_DIM, device=device)
        if body_shape.dim() == 1:
            body_shape = body_shape[None]
        check_tensor(where, "body_shape", body_shape, (1, C.BODY_SHAPE_DIM))
        self.generator = generator
        self.latents = latents.to(device)
        self.body_shape = body_shape.to(device)
        self.truncation = float(truncation)
        with torch.no_grad():
            self.radiance_styles = generator.radiance_styles(self.latents, truncation)
            self.textures = generator.bake_textures(self.radiance_styles)
            self.textures_hr = None
            if super_resolve and generator.superres is not None:
                sr_styles = generator.superres_styles(self.latents, truncation)
                self.textures_hr = generator.super_resolve_textures(self.textures, sr_styles)
            self.manifold = generator.baked_manifold_fn()
            self.face_detail = generator.face_detail_fn(self.latents, self.body_shape, baked=True)
            self.canonical_body = generator.body.canonical(self.body_shape)
            # the basis volumes (``expression.basis``) or the neutral expression's volumes; None without a grid
            self._expression_bake = generator.expression_bake(self.latents.identity, self.body_shape)
        self._pose_cache: tuple[bytes, Tensor] | None = None
        self._expression_cache: tuple[bytes, object] | None = None

    @property
    def device(self) -> torch.device:
        return self.textures.device

    @property
    def expression_bake(self) -> ExpressionBake | None:
        """:meth:`Generator.expression_bake` of this identity and body shape (batch 1); None without an expression
        grid."""
        return self._expression_bake

    # ------------------------------------------------------------------ per-frame inputs (cached by value)
    def _pose_volume(self, pose: Tensor) -> Tensor:
        key = pose.detach().cpu().numpy().tobytes()
        if self._pose_cache is None or self._pose_cache[0] != key:
            betas = self.body_shape.expand(pose.shape[0], -1)
            state = self.generator.body.posed(betas, pose)
            self._pose_cache = (key, self.generator.pose_volume(state))
        return self._pose_cache[1]

    def _expression_fn(self, expression: Tensor):
        key = expression.detach().cpu().numpy().tobytes()
        if self._expression_cache is None or self._expression_cache[0] != key:
            identity = self.latents.identity.expand(expression.shape[0], -1)
            self._expression_cache = (key, self.generator.expression_fields_fn(identity, expression,
                                                                                self._expression_bake))
        return self._expression_cache[1]

    def _check_controls(self, where: str, pose: Tensor, expression: Tensor) -> tuple[Tensor, Tensor]:
        if torch.is_tensor(pose) and pose.dim() == 2:
            pose = pose[None]
        if torch.is_tensor(expression) and expression.dim() == 1:
            expression = expression[None]
        check_tensor(where, "pose", pose, (None, *C.POSE_SHAPE))
        check_tensor(where, "expression", expression, (None, C.EXPRESSION_DIM))
        b = max(pose.shape[0], expression.shape[0])
        if pose.shape[0] not in (1, b) or expression.shape[0] not in (1, b):
            raise ValueError(f"{where}: pose batch {pose.shape[0]} and expression batch {expression.shape[0]} differ")
        dt = self.textures.dtype
        return (pose.to(self.device, dt).expand(b, -1, -1).contiguous(),
                expression.to(self.device, dt).expand(b, -1).contiguous())

    # ------------------------------------------------------------------ rendering
    @torch.no_grad()
    def render(self, pose: Tensor, expression: Tensor, camera: Camera, *, super_resolve: bool | None = None,
               resolution: int | None = None, low_resolution: bool = True) -> RenderOutput:
        """Render B frames: pose [B, 6, 3] (axis-angle, canonical-relative), expression [B, 64], camera (batch 1
        or B; one pose and expression may also be seen by B cameras). ``super_resolve`` defaults to True when the
        avatar has super-resolved textures; ``resolution`` is the ray resolution (default the config's), the
        super-resolved image is ``scale`` times larger. ``low_resolution=False``: a super-resolved render skips
        the ray-resolution image (``image_lr``, ``alpha_lr``, ``depth_lr`` are None), which players and the
        viewport do not show."""
        pose, expression = self._check_controls("Avatar.render", pose, expression)
        b = pose.shape[0]
        if b == 1 and isinstance(camera, Camera) and camera.batch_size > 1:  # one pose seen by several cameras
            b = camera.batch_size
            pose, expression = pose.expand(b, -1, -1), expression.expand(b, -1)
        camera = _camera_for_batch("Avatar.render", camera, b)
        if super_resolve is None:
            super_resolve = self.textures_hr is not None
        if super_resolve and self.textures_hr is None:
            raise ValueError("Avatar.render: super_resolve=True but this avatar was baked without super-resolved "
                             "textures (make_avatar(..., super_resolve=True) with superres enabled)")
        scene = self.scene(pose, expression, super_resolve)
        return self.generator.render_scene(scene, camera.to(self.device, self.textures.dtype), resolution, super_resolve,
                                           low_resolution)

    def scene(self, pose: Tensor, expression: Tensor, super_resolve: bool = True) -> SceneFields:
        """The baked :class:`SceneFields` of B frames (pose [B, 6, 3] and expression [B, 64], checked by
        :meth:`render`) for ``Generator.render_scene``."""
        g = self.generator
        super_resolve = super_resolve and self.textures_hr is not None
        return SceneFields(
            pose_volume=self._pose_volume(pose),
            expression_fields=self._expression_fn(expression),
            manifold=self.manifold,
            radiance=g.texture_radiance_fn(self.textures),
            radiance_hr=g.texture_radiance_fn(self.textures_hr) if super_resolve else None,
            face_detail=self.face_detail,
            textures_hr=self.textures_hr if super_resolve else None,
        )

    # ------------------------------------------------------------------ fields for mesh export and blendshapes
    @torch.no_grad()
    def to_canonical(self, points: Tensor, pose: Tensor | None = None, expression: Tensor | None = None) -> Tensor:
        """Observed points [N, 3] (posed with ``pose`` [6, 3], expressive with ``expression`` [64]) -> canonical
        (neutral) points [N, 3], metres. Without pose/expression the points are taken as canonical already."""
        points = check_tensor("Avatar.to_canonical", "points", points, (None, 3)).to(self.device, self.textures.dtype)
        chunk = self.generator.cfg.render.chunk_size
        out = points[None]
        if pose is not None:
            pose, _ = self._check_controls("Avatar.to_canonical", pose, torch.zeros(C.EXPRESSION_DIM))
            volume = self._pose_volume(pose[:1])
            out = torch.cat([self.generator.pose_deformation(volume, c) for c in out.split(chunk, dim=1)], dim=1)
        if expression is not None:
            _, expression = self._check_controls("Avatar.to_canonical", torch.zeros(*C.POSE_SHAPE), expression)
            delta_fn = self._expression_fn(expression[:1])
            out = torch.cat([c + delta_fn(c) for c in out.split(chunk, dim=1)], dim=1)
        return out[0]

    @torch.no_grad()
    def density_field(self, points: Tensor, pose: Tensor | None = None, expression: Tensor | None = None) -> Tensor:
        """Occupancy [N] in [0, 1] for mesh extraction (threshold 0.5): the opacity accumulated over the levels
        that enclose the point, read from the level textures at the point's parametrisation coordinates. It is the
        opacity a viewer along the parametrisation ray (frontal: along -Z; 360: towards the shell centre) has
        accumulated on reaching the point, so its 0.5 level set is the rendered surface (to within half a level
        spacing). Each level counts as a slab one level spacing thick centred on its surface, through which its opacity
        builds up continuously (:func:`level_slab_occupancy`); a hard "inside the level or not" would make the
        occupancy a staircase over the nested levels and the extracted surface a terrace of level patches.
        ``points`` [N, 3] metres, observed if ``pose``/``expression`` are given, else canonical."""
        canonical = self.to_canonical(points, pose, expression)
        g, rc = self.generator, self.generator.cfg.render
        textures = self.textures_hr if self.textures_hr is not None else self.textures
        out = []
        for chunk in canonical.split(rc.chunk_size):
            s = self.manifold(chunk[None])[0]  # [P]
            uv = R.texture_coords(chunk, rc.texture_layout, g.shell_centre, rc.texture_half_extent)
            uv = uv[None, :, None, :].expand(1, -1, g.levels.shape[0], 2)
            alpha = R.sample_textures(textures[:, :, 3:4], uv, rc.texture_layout)[0, :, :, 0]  # [P, L]
            out.append(level_slab_occupancy(s, alpha, g.levels.to(s.dtype)))
        return torch.cat(out)

    @torch.no_grad()
    def color_field(self, points: Tensor, normals: Tensor, offset: float = 0.03, samples: int = 16) -> Tensor:
        """Colour [N, 3] in [0, 1] seen when looking at canonical surface points [N, 3] against their outward
        ``normals`` [N, 3]: short rays from ``points + offset * n`` to ``points - offset * n`` are intersected with
        the levels and composited without background (falls back to the nearest level's texel where empty)."""
        points = check_tensor("Avatar.color_field", "points", points, (None, 3)).to(self.device, self.textures.dtype)
        normals = check_tensor("Avatar.color_field", "normals", normals, (points.shape[0], 3)).to(points)
        normals = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        g, rc = self.generator, self.generator.cfg.render
        radiance = g.texture_radiance_fn(self.textures_hr if self.textures_hr is not None else self.textures)
        t = torch.linspace(-offset, offset, samples, dtype=points.dtype, device=points.device)
        out = []
        for p, n in zip(points.split(rc.chunk_size // samples), normals.split(rc.chunk_size // samples)):
            ray = p[:, None, :] - t[None, :, None] * n[:, None, :]  # from outside in, [P, M, 3]
            s = self.manifold(ray.reshape(1, -1, 3)).reshape(1, p.shape[0], samples)
            crossings = R.intersect_levels(s, (t + offset)[None, None, :], g.levels)
            hits = R.interpolate_at_crossings(ray[None], crossings)
            rgb, alpha, _ = radiance(hits, crossings.valid)
            if self.face_detail is not None:
                rgb = self.face_detail(hits, rgb)
            comp = R.composite(rgb, alpha, crossings.depth, crossings.valid, background=0.0)
            colour = comp.rgb / comp.opacity[..., None].clamp_min(1e-6)
            # fallback: the texel of the level nearest to the point
            s_here = self.manifold(p[None])[0]
            nearest = (s_here[:, None] - g.levels.to(s_here.dtype)).abs().argmin(-1)
            all_levels = radiance(p[None, :, None, :].expand(1, -1, g.levels.shape[0], 3),
                                  torch.ones(1, p.shape[0], g.levels.shape[0], dtype=torch.bool, device=p.device))[0]
            fallback = all_levels[0].gather(1, nearest[:, None, None].expand(-1, 1, 3))[:, 0]
            out.append(torch.where(comp.opacity[0, :, None] > 1e-3, colour[0], fallback))
        return torch.cat(out).clamp(0.0, 1.0)

    @torch.no_grad()
    def expression_deformation(self, points: Tensor, expression: Tensor) -> Tensor:
        """Backward offsets Delta [N, 3] (metres) at canonical-pose points [N, 3] of the expressive face:
        ``points + Delta`` is the neutral canonical point (zero for a neutral expression). Exact network
        evaluation (no grid), chunked."""
        points = check_tensor("Avatar.expression_deformation", "points", points, (None, 3)).to(self.device)
        _, expression = self._check_controls("Avatar.expression_deformation", torch.zeros(*C.POSE_SHAPE), expression)
        g = self.generator
        return torch.cat([g.expression_deformation(c[None], self.latents.identity, expression[:1], self.body_shape)[0]
                          for c in points.split(g.cfg.render.chunk_size)])

    @torch.no_grad()
    def expression_displacement(self, neutral_points: Tensor, expression: Tensor, iterations: int = 6) -> Tensor:
        """Forward displacements D [N, 3] (metres) for blendshapes: ``y = x + D`` solves ``y + Delta(y) = x`` for
        neutral canonical points x (fixed-point iterations ``y <- x - Delta(y)``; converges where Delta is a contraction,
        |grad Delta| < 1, as smooth expression deformations are)."""
        x = check_tensor("Avatar.expression_displacement", "neutral_points", neutral_points, (None, 3)).to(self.device)
        y = x.clone()
        for _ in range(iterations):
            y = x - self.expression_deformation(y, expression)
        return y - x
