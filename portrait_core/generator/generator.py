"""The generator: one pipeline that reads like the paper's figure.

    rays -> pose deformation -> expression deformation -> manifold intersections -> radiance -> composite
         -> (manifold super-resolution)

``Generator.forward`` is the training path (every stage differentiable, radiance evaluated at the canonical
intersections). ``Generator.make_avatar`` bakes the per-identity work once (see ``avatar.py``); the avatar renders
frames through the same :meth:`Generator.render_scene` with baked grids and textures in place of the networks.

Frames: observed space (posed, expressive) --inverse LBS + smoothing--> canonical pose (expressive)
--+Delta--> canonical (neutral). All points are metres in the canonical frame (origin at the canonical neck
joint J12, +Y up, subject faces +Z).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from portrait_core import conventions as C
from portrait_core.geometry.camera import Camera

from . import expression_3dmm as E3
from . import rendering as R
from .config import GeneratorConfig
from .face_texture import FaceDetail, FaceTexture, face_coordinate_volume
from .fast_composite import composite_fast
from .fast_superres import superres_frame, superres_frame_reference
from .networks import (
    ExpressionDeformNet,
    ManifoldField,
    MappingNetwork,
    PoseSmoother,
    RadianceField,
    StyleRRDBNet,
    TextureCNN,
    box_window,
    combine_basis,
    inference_chunk,
)
from .precision import superres_bake_dtype
from .structures import Controls, Latents, RenderOutput

if TYPE_CHECKING:
    from portrait_core.body.model import BodyModel, BodyState

    from .avatar import Avatar

__all__ = ["Generator", "SceneFields"]

#: Radiance fn: canonical hits [B, P, L, 3], valid [B, P, L] -> rgb [B, P, L, 3] in [0, 1], alpha [B, P, L],
#: features [B, P, L, C] or None.
RadianceFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, "Tensor | None"]]


@dataclass
class ExpressionBake:
    """An identity's expression work done once (:meth:`Generator.expression_bake`)."""

    network: list[Tensor]
    """Per expression grid: the basis volumes [1 or B, r, C, G, G, G] (``expression.basis``) or the neutral
    expression's raw fields [1 or B, C, G, G, G]."""
    surface: SurfaceBake | None
    """With ``expression.follow_3dmm``: the 3DMM's neighbours and weights of the finest grid's nodes."""


@dataclass
class SurfaceBake:
    """The 3DMM's forward field's support on the expression grids (:meth:`Generator.expression_bake`)."""

    index: Tensor
    """[B, N, k] the k nearest neutral vertices of each node of the finest grid."""
    weight: Tensor
    """[B, N, k] their weights (``expression_3dmm.surface_weights``; 0 beyond its reach)."""
    active: list[Tensor]
    """Per expression grid, the nodes [A] (flat indices, any identity of the batch) the forward field can move:
    elsewhere F(x) = 0, so the fixed-point iteration stays at y = x and Delta = 0 exactly."""


FACE_GRID_FADE = 0.25
"""Fraction of the face box's half-extents over which the face grid hands over to the head-box grid."""

SUPERRES_LEVEL_CHUNK = 2
"""Levels super-resolved per pass in a bake (:meth:`Generator.super_resolve_textures`): `paper` at 512² textures,
1 thread, peaks at 848 MB with 2 (bfloat16; 1,387 MB with 4) and 796 MB (float32; 900 MB with 4), no slower."""

SUPERRES_LEVEL_LOOP_PIXELS = 160 * 160
"""With several torch threads, super-resolved frames (all frames of a call together) smaller than this many pixels
take :func:`fast_superres.superres_frame_reference`: one level's maps are then too small for the level-by-level
pass's many small operations to pay (2 threads, 128²: 11.8 ms vs 10.1 ms; 192²: 21.0 vs 28.7 ms). Not for frames
with a face texture: the level pass corrects only near the face (the shipped model, 2 threads, whole frame at 128²:
64.1 ms vs 71.1 ms)."""

SUPERRES_LEVELS_PER_PASS = 4
"""Levels :func:`fast_superres.superres_frame` upsamples, looks up and composites per pass: one call over 4 levels'
maps instead of 4 small ones (fewer dispatches, and work large enough for several threads). The shipped model's
128² frame, median of 3 rounds of 8: 77.7 -> 74.3 ms with 1 thread, 55.3 -> 49.7 ms with 2."""


@dataclass
class SceneFields:
    """How a batch of frames evaluates each stage of the pipeline: networks (training) or bakes (avatars)."""

    pose_volume: Tensor
    """[B, 3, G, G, G] smoothed observed->canonical-pose displacements on the posed-space grid (metres)."""
    expression_fields: Callable[[Tensor], Tensor]
    """Canonical-pose points [B, P, 3] -> [B, P, 3 or 4]: Delta (metres), then the expression shading logit when
    the config has ``expression.shading`` (see :func:`rendering.expression_shading_factor`)."""
    manifold: Callable[[Tensor], Tensor]
    """Canonical points [B, P, 3] -> manifold field s [B, P]."""
    radiance: RadianceFn
    """At ray resolution."""
    radiance_hr: RadianceFn | None = None
    """Super-resolved textures (None: no super-resolution)."""
    face_detail: Callable[[Tensor, Tensor], Tensor] | None = None
    """(canonical hits [B, R, L, 3], rgb [B, R, L, 3]) -> rgb with the face texture's correction (None: no
    ``face_texture`` in the config). A :class:`FaceDetail` (what :meth:`face_detail_fn` makes) also gives its
    weights, so super-resolution corrects only the pixels near the face; any other callable corrects every pixel."""
    textures_hr: Tensor | None = None
    """The super-resolved textures [1 or B, L, C, T, T] that ``radiance_hr`` reads, when it is a plain lookup: the
    frontal layout then renders the super-resolved frame level-major (:func:`fast_superres.superres_frame`)."""


class Generator(nn.Module):
    """AniPortraitGAN-style generator. Public inputs/outputs: see docs/DESIGN.md and docs/generator.md.

    ``body`` (a :class:`~portrait_core.body.model.BodyModel`, default the synthetic one) and ``face`` are helpers
    held outside the state dict (they are not trained and a user may swap in the licensed SMPL/BFM files).
    """

    def __init__(self, cfg: GeneratorConfig, body: BodyModel | None = None, face=None):
        super().__init__()
        self.cfg = cfg
        latent_dim = cfg.identity_dim + cfg.noise_dim
        # per identity
        self.radiance = (TextureCNN(cfg.radiance, cfg.manifold.levels) if cfg.radiance.kind == "cnn"
                         else RadianceField(cfg.radiance))
        self.radiance_mapping = MappingNetwork(latent_dim, self.radiance.style_dim, cfg.radiance.mapping, last_gain=0.25)
        self.manifold = ManifoldField(cfg.manifold)
        self.face_texture = FaceTexture(cfg.face_texture, latent_dim) if cfg.face_texture.enabled else None
        # per frame
        self.expression_deform = ExpressionDeformNet(cfg.expression, cfg.expression_dim)
        # the basis fields (``expression.basis`` > 0) depend on the identity alone; the expression weights them
        mapping_in = cfg.identity_dim + (0 if cfg.expression.basis else cfg.expression_dim)
        self.expression_mapping = MappingNetwork(mapping_in, self.expression_deform.style_dim, cfg.expression.mapping,
                                                 last_gain=0.25)
        self.pose_smoother = PoseSmoother(cfg.pose)
        # super-resolution
        if cfg.superres.enabled:
            self.superres = StyleRRDBNet(4 + cfg.radiance.feature_dim, cfg.superres)
            self.superres_mapping = MappingNetwork(latent_dim, self.superres.style_dim, cfg.superres.mapping)
        else:
            self.superres = self.superres_mapping = None
        # truncation averages (tracked, saved)
        self.register_buffer("radiance_style_avg", torch.zeros(self.radiance.style_dim))
        self.register_buffer("superres_style_avg", torch.zeros(self.superres.style_dim if self.superres else 0))
        # fixed geometry (not saved: derived from the config)
        self.register_buffer("shell_centre", torch.tensor(cfg.manifold.centre), persistent=False)
        self.register_buffer("pose_box_centre", torch.tensor(cfg.pose.box_centre), persistent=False)
        self.register_buffer("head_box_centre", torch.tensor(cfg.expression.head_box_centre), persistent=False)
        self.register_buffer("head_box_half", torch.tensor(cfg.expression.head_box_half_extent), persistent=False)
        self.register_buffer("face_box_centre", torch.tensor(cfg.expression.face_box_centre), persistent=False)
        self.register_buffer("face_box_half", torch.tensor(cfg.expression.face_box_half_extent), persistent=False)
        # Built under ``torch.device("meta")`` (checkpoint.load_generator's shape check) only the parameter and
        # buffer shapes matter: no body model, body prior or truncation averages are computed.
        shapes_only = torch.empty(()).device.type == "meta"
        if body is None and not shapes_only:
            from portrait_core.body.model import BodyModel

            body = BodyModel.synthetic()
        self._helpers = {"body": body, "face": face}
        self._bake_cache: dict[str, tuple[tuple, object]] = {}
        if shapes_only:
            self.register_buffer("body_prior", torch.empty(1, 1, *(cfg.render.prior_grid,) * 3))
            return
        self.register_buffer("body_prior", self._body_prior_volume())
        self.update_w_avg(n=1024)

    # ------------------------------------------------------------------ helpers held outside the state dict
    @property
    def body(self) -> BodyModel:
        return self._helpers["body"]

    @property
    def face(self):
        """The 3DMM face model (built on first use; the synthetic one unless given)."""
        if self._helpers["face"] is None:
            from portrait_core.face.model import FaceModel

            self._helpers["face"] = FaceModel.synthetic().to(self.device)
        return self._helpers["face"]

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for helper in self._helpers.values():
            if helper is not None:
                helper._apply(fn)
        self._bake_cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        return self.radiance_style_avg.device

    @property
    def levels(self) -> Tensor:
        """[L] manifold levels (decreasing: outermost shell first)."""
        return self.manifold.levels

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by name: mapping (radiance + expression mappings), manifold, radiance, deform
        (expression deformation), smoother (pose), superres (trunk + upsampler), superres_mapping."""
        groups = {
            "mapping": [*self.radiance_mapping.parameters(), *self.expression_mapping.parameters()],
            "manifold": list(self.manifold.parameters()),
            "radiance": list(self.radiance.parameters()),
            "deform": list(self.expression_deform.parameters()),
            "smoother": list(self.pose_smoother.parameters()),
        }
        if self.face_texture is not None:
            groups["face_texture"] = [self.face_texture.texture]
            groups["face_texture_net"] = [p for n, p in self.face_texture.named_parameters() if n != "texture"]
        if self.superres is not None:
            groups["superres"] = list(self.superres.parameters())
            groups["superres_mapping"] = list(self.superres_mapping.parameters())
        return groups

    @torch.no_grad()
    def _body_prior_volume(self) -> Tensor:
        """[1, 1, G, G, G] in [0, 1]: a thick shell around the canonical mean-shape body surface,
        ``sigmoid((thickness - distance to the nearest vertex) / softness)``, over the manifold-grid box."""
        rc, rad = self.cfg.render, self.cfg.radiance
        g = rc.prior_grid
        nodes = R.grid_points(self.shell_centre, rc.manifold_grid_half_extent, g).reshape(-1, 3)
        vertices = self.body.canonical(torch.zeros(1, C.BODY_SHAPE_DIM, device=self.shell_centre.device)).vertices[0].to(nodes)
        dist = torch.cat([torch.cdist(chunk, vertices).amin(-1) for chunk in nodes.split(4096)])
        prior = torch.sigmoid((rad.body_prior_thickness - dist) / rad.body_prior_softness)
        return prior.reshape(1, 1, g, g, g)

    def canonical_radiance(self, points: Tensor, radiance_styles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The radiance field at canonical points [B, P, 3] (metres) plus the body prior on sigma:
        rgb [B, P, 3] in [0, 1], sigma [B, P, 1] (raw), features [B, P, C]. FiLM-SIREN generators only."""
        if self.cfg.radiance.kind != "siren":
            raise ValueError(f"canonical_radiance needs a field at points; radiance.kind={self.cfg.radiance.kind!r} "
                             "makes level textures (use bake_textures)")
        rgb, sigma, feats = self.radiance(points, radiance_styles)
        return rgb, self._with_body_prior(sigma, points), feats

    def _with_body_prior(self, sigma: Tensor, points: Tensor) -> Tensor:
        """Raw sigma [B, P, 1] + ``body_prior_strength`` x the body prior at canonical points [B, P, 3]."""
        strength = self.cfg.radiance.body_prior_strength
        if not strength:
            return sigma
        prior = R.sample_grid(self.body_prior.expand(points.shape[0], -1, -1, -1, -1), points, self.shell_centre,
                              self.cfg.render.manifold_grid_half_extent, "zeros")
        return sigma + strength * prior

    # ------------------------------------------------------------------ mapping and truncation
    def face_detail_fn(self, latents: Latents, body_shape: Tensor, volume: Tensor | None = None,
                       baked: bool = False) -> FaceDetail | None:
        """The face texture's (hits, rgb) -> rgb for a batch of identities (None without ``face_texture``): their
        (u, v, weight) grid over the head box is baked here (no grad; or passed in as ``volume``, from
        :meth:`face_coordinate_volume`), the correction stays differentiable. ``baked`` (avatars): the correction is
        also baked per identity into a colour texture (:meth:`FaceTexture.bake`), so a frame costs two lookups
        per hit and no network."""
        if self.face_texture is None:
            return None
        if volume is None:
            volume = self.face_coordinate_volume(latents.identity, body_shape)
        texture = self.face_texture
        bias = texture.latent_bias(torch.cat([latents.identity, latents.noise], -1))
        if baked:
            colours = texture.bake(bias)

            def correct(rgb: Tensor, coords: Tensor) -> Tensor:
                return texture.correct_baked(rgb, coords, colours.expand(rgb.shape[0], -1, -1, -1))
        else:
            def correct(rgb: Tensor, coords: Tensor) -> Tensor:
                return texture.correct(rgb, coords, bias)

        return FaceDetail(volume, self.head_box_centre, self.head_box_half, correct)

    @torch.no_grad()
    def face_coordinate_volume(self, identity: Tensor, body_shape: Tensor) -> Tensor:
        """[B, 3, G, G, G] (u, v, weight) of :func:`face_texture.face_coordinates` over the head box."""
        face = self.face
        neutral = face.neutral_vertices(identity)
        mean = face.neutral_vertices(torch.zeros_like(identity[:1]))[0]
        transform = self.body.face_transform(body_shape).to(neutral)
        return face_coordinate_volume(neutral, mean, transform, self.cfg.face_texture, self.head_box_centre,
                                      self.head_box_half)

    def radiance_styles(self, latents: Latents, truncation: float = 1.0) -> Tensor:
        """[B, radiance.style_dim] FiLM freq/phase (raw), truncated towards the tracked average."""
        raw = self.radiance_mapping(torch.cat([latents.identity, latents.noise], -1))
        return _truncate(raw, self.radiance_style_avg, truncation)

    def superres_styles(self, latents: Latents, truncation: float = 1.0) -> Tensor:
        raw = self.superres_mapping(torch.cat([latents.identity, latents.noise], -1))
        return _truncate(raw, self.superres_style_avg, truncation)

    def expression_styles(self, identity: Tensor, expression: Tensor) -> Tensor:
        """[B, deform style_dim]; no truncation on the deformation mapping. With ``expression.basis`` the styles
        depend on the identity alone (``expression`` is ignored)."""
        if self.cfg.expression.basis:
            return self.expression_mapping(identity)
        return self.expression_mapping(torch.cat([identity, expression], -1))

    @torch.no_grad()
    def update_w_avg(self, n: int = 10000, identities: Tensor | None = None, seed: int = 0, batch: int = 4096) -> None:
        """Recompute the truncation averages from ``n`` (identity, noise) pairs: ``identities`` [M, 80] rows drawn
        with replacement (e.g. the dataset's table) or standard-normal identities; standard-normal noise."""
        g = torch.Generator().manual_seed(seed)
        rad_sum = torch.zeros_like(self.radiance_style_avg, dtype=torch.float64)
        sr_sum = torch.zeros_like(self.superres_style_avg, dtype=torch.float64)
        for start in range(0, n, batch):
            m = min(batch, n - start)
            if identities is None:
                identity = torch.randn(m, self.cfg.identity_dim, generator=g)
            else:
                identity = identities[torch.randint(0, identities.shape[0], (m,), generator=g)].cpu().float()
            noise = torch.randn(m, self.cfg.noise_dim, generator=g)
            z = torch.cat([identity, noise], -1).to(self.device, self.radiance_style_avg.dtype)
            rad_sum += self.radiance_mapping(z).sum(0).double()
            if self.superres_mapping is not None:
                sr_sum += self.superres_mapping(z).sum(0).double()
        self.radiance_style_avg.copy_(rad_sum / n)
        self.superres_style_avg.copy_(sr_sum / n)

    # ------------------------------------------------------------------ stages (each usable on its own)
    def pose_volume(self, state: BodyState) -> Tensor:
        """Observed -> canonical-pose displacements on the posed-space grid: [B, 3, G, G, G] (metres).

        Inverse LBS (nearest valid posed vertex, ``BodyModel.inverse_lbs``) gives an affine map per grid node; the
        learnable smoothing CNN filters its 12 entries; the smoothed map is applied to the node itself and stored
        as a displacement ``T_smooth(x) x - x``. Trilinear lookups of 3 displacement channels are 4x cheaper than
        of 12 matrix entries, exact wherever the map is locally affine (rigid body parts), and a zero pose gives
        exactly zero. Differentiable in the smoother's kernels and in the pose code.
        """
        return self.pose_volume_from_entries(self.pose_entries(state))

    def pose_entries(self, state: BodyState) -> Tensor:
        """The unsmoothed inverse-LBS affine maps (nearest valid posed vertex) on the posed-space grid: their 12
        entries [B, 12, G, G, G]. No learnable parameters (cacheable per pose); differentiable in the pose code."""
        g = self.cfg.render.pose_grid
        nodes = R.grid_points(self.pose_box_centre, self.cfg.pose.box_half_extent, g)  # [G, G, G, 3]
        b = state.vertices.shape[0]
        flat = nodes.reshape(1, -1, 3).expand(b, -1, -1).contiguous()
        # the nearest-vertex choice is discrete; the chosen vertex transforms carry gradients to the pose code
        # (needed by 360-degree pose self-learning), and cost nothing when the pose needs no gradient
        transforms = self.body.inverse_lbs(state, flat)
        return R.affine_entries(transforms.to(nodes.dtype)).reshape(b, g, g, g, 12).permute(0, 4, 1, 2, 3).contiguous()

    def pose_volume_from_entries(self, entries: Tensor) -> Tensor:
        """:meth:`pose_volume` from :meth:`pose_entries`: the learnable smoother filters the entries, the smoothed
        map is applied to each grid node and stored as a displacement [B, 3, G, G, G]."""
        g = self.cfg.render.pose_grid
        nodes = R.grid_points(self.pose_box_centre, self.cfg.pose.box_half_extent, g)
        smoothed = self.pose_smoother(entries).permute(0, 2, 3, 4, 1)  # [B, G, G, G, 12]
        displacement = R.apply_affine(smoothed, nodes.expand(entries.shape[0], -1, -1, -1, -1)) - nodes
        return displacement.permute(0, 4, 1, 2, 3).contiguous()

    def pose_deformation(self, pose_volume: Tensor, points: Tensor) -> Tensor:
        """Observed points [B, P, 3] -> canonical-pose points [B, P, 3] (trilinear displacement; outside the grid
        the border displacement continues)."""
        return points + R.sample_grid(pose_volume, points, self.pose_box_centre, self.cfg.pose.box_half_extent,
                                      "border")

    def expression_fields(self, points: Tensor, identity: Tensor, expression: Tensor,
                          body_shape: Tensor | None = None) -> Tensor:
        """Direct, differentiable expression fields at arbitrary canonical-pose points.

        points [B, P, 3] metres (canonical pose, expressive), identity [B, 80], expression [B, 64] ->
        [B, P, 3 or 4]: Delta in metres (``points + Delta`` is the neutral canonical point), then the shading logit
        when the config has ``expression.shading``. A neutral expression is exactly the identity deformation with no
        shading (the baked textures are the neutral face): the single field is taken relative to the neutral
        expression, ``f(x; id, exp) - f(x; id, 0)``; the basis fields are weighted by coefficients linear in the
        expression. Zero outside the head box. With ``expression.follow_3dmm`` Delta is the 3DMM's (read from the
        grids, which that setting requires; ``body_shape`` [B, 10] places the face, default zeros) and only the
        shading comes from the network.
        """
        if self.cfg.expression.basis:
            basis = self.expression_deform.basis(points, self.expression_styles(identity, expression))
            fields = combine_basis(basis.transpose(1, 2), self.expression_deform.coefficients(expression))
        else:
            styles = self.expression_styles(torch.cat([identity, identity]),
                                             torch.cat([expression, torch.zeros_like(expression)]))
            raw = self.expression_deform(torch.cat([points, points]), styles)
            fields = raw[: points.shape[0]] - raw[points.shape[0]:]
        if not self.cfg.expression.follow_3dmm:
            return fields
        surface = self._surface_weights(identity, body_shape)
        delta = self.sample_expression_volumes(self._followed_3dmm(expression, surface), points)
        return torch.cat([delta.to(fields.dtype), fields[..., 3:]], -1)

    def expression_deformation(self, points: Tensor, identity: Tensor, expression: Tensor,
                               body_shape: Tensor | None = None) -> Tensor:
        """Delta [B, P, 3] metres of :meth:`expression_fields` (the geometry only)."""
        return self.expression_fields(points, identity, expression, body_shape)[..., :3]

    def expression_grids(self) -> list[tuple[Tensor, Tensor, int]]:
        """(centre, half-extent, side) of each expression grid: the head box (``render.expression_grid``), then the
        face box when ``render.face_grid`` > 0. Empty when the grid is 0 (the network is read directly)."""
        r = self.cfg.render
        if not r.expression_grid:
            return []
        grids = [(self.head_box_centre, self.head_box_half, r.expression_grid)]
        if r.face_grid:
            grids.append((self.face_box_centre, self.face_box_half, r.face_grid))
        return grids

    def expression_volumes(self, identity: Tensor, expression: Tensor) -> list[Tensor]:
        """The network's raw output on each of :meth:`expression_grids`: the single field ``f(x; id, exp)``
        [B, C, G, G, G], or with ``expression.basis`` the r basis fields [B, r, C, G, G, G] (``expression`` is then
        ignored). C: Delta in metres, then the shading logit. With ``expression.follow_3dmm`` only the head-box
        grid (the network gives the shading alone, which needs no finer grid)."""
        styles = self.expression_styles(identity, expression)
        volumes = []
        grids = self.expression_grids()
        for centre, half, g in grids[:1] if self.cfg.expression.follow_3dmm else grids:
            nodes = R.grid_points(centre, half, g).reshape(1, -1, 3).expand(styles.shape[0], -1, -1)
            raw = self.expression_deform.basis(nodes, styles)  # [B, G^3, fields, C]
            raw = raw.permute(0, 2, 3, 1).reshape(*raw.shape[:1], raw.shape[2], raw.shape[3], g, g, g)
            volumes.append((raw if self.cfg.expression.basis else raw[:, 0]).contiguous())
        return volumes

    def expression_bake(self, identity: Tensor, body_shape: Tensor | None = None) -> ExpressionBake | None:
        """What an avatar keeps per identity [1 or B, 80] (and body shape [1 or B, 10], default zeros) so that a
        frame's expression grids are cheap: the network's basis volumes (``expression.basis``) or its neutral
        expression's volumes, and with ``expression.follow_3dmm`` the 3DMM weights of the finest grid's nodes;
        None without a grid."""
        if not self.expression_grids():
            return None
        network = []
        if self._network_expression_grids():
            network = self.expression_volumes(identity, identity.new_zeros(identity.shape[0], self.cfg.expression_dim))
        surface = self._surface_weights(identity, body_shape) if self.cfg.expression.follow_3dmm else None
        return ExpressionBake(network, surface)

    def _network_expression_grids(self) -> bool:
        """Whether the frame's expression grids read the network (not with ``follow_3dmm`` and no shading)."""
        return not self.cfg.expression.follow_3dmm or self.expression_deform.shading_head is not None

    def _surface_weights(self, identity: Tensor, body_shape: Tensor | None) -> SurfaceBake:
        """:func:`expression_3dmm.surface_weights` of the finest expression grid's nodes for each identity, the
        nodes taken to each face's frame (a translation, ``face_transform`` of the body shape), and the nodes of
        every grid where the forward field can be non-zero."""
        grids = self.expression_grids()
        if not grids:
            raise ValueError("expression.follow_3dmm needs render.expression_grid > 0")
        centre, half, g = grids[-1]
        nodes = R.grid_points(centre, half, g).reshape(-1, 3)
        b = identity.shape[0]
        if body_shape is None:
            body_shape = identity.new_zeros(b, C.BODY_SHAPE_DIM)
        # one training step asks for the same batch up to three times (scene, regularisers, shading target)
        key = (identity.detach().cpu().numpy().tobytes(), body_shape.detach().expand(b, -1).cpu().numpy().tobytes(),
               tuple(g for _, _, g in grids), tuple(self.face_box_half.tolist()), tuple(self.face_box_centre.tolist()),
               str(identity.device))
        cached = self._bake_cache.get("surface")
        if cached is not None and cached[0] == key:
            return cached[1]  # type: ignore[return-value]
        with torch.no_grad():
            origin = self.body.face_transform(body_shape.expand(b, -1))[:, :3, 3]  # [B, 3] (rotation: identity)
            neutral = self.face.neutral_vertices(identity)
            pairs = [E3.surface_weights(nodes - origin[i], neutral[i]) for i in range(b)]
            index, weight = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
            support = (weight.sum(-1) > 0).any(0)  # [N] on the finest grid
            mask = support.to(nodes.dtype).reshape(1, 1, g, g, g)
            active = []
            for centre_i, half_i, g_i in grids[:-1]:  # a coarser node moves if a finest-grid cell around it can
                near = R.sample_grid(mask, R.grid_points(centre_i, half_i, g_i).reshape(1, -1, 3), centre, half,
                                     "zeros")
                active.append((near.reshape(-1) > 0).nonzero().squeeze(1))
            active.append(support.nonzero().squeeze(1))
        bake = SurfaceBake(index, weight, active)
        self._bake_cache["surface"] = (key, bake)
        return bake

    def _followed_3dmm(self, expression: Tensor, surface: SurfaceBake) -> list[Tensor]:
        """The 3DMM's backward deformation for expressions [B, 64] on each expression grid, [B, 3, G, G, G]
        (metres): the forward field on the finest grid's nodes (``surface``: :meth:`_surface_weights`), inverted
        by ``render.expression_iterations`` fixed-point steps at every grid's active nodes (0 elsewhere)."""
        grids = self.expression_grids()
        b = expression.shape[0]
        offsets = self.face.expression_offsets(None, expression)  # [B, V, 3]: face axes = canonical axes
        forward = E3.forward_field(offsets, surface.index.expand(b, -1, -1), surface.weight.expand(b, -1, -1))
        centre, half, g = grids[-1]
        forward_volume = forward.transpose(1, 2).reshape(b, 3, g, g, g).contiguous()
        volumes = []
        for (centre_i, half_i, g_i), active in zip(grids, surface.active):
            nodes = R.grid_points(centre_i, half_i, g_i).reshape(-1, 3)[active].to(forward.dtype)
            moved = E3.invert_grid(forward_volume, centre, half, nodes.expand(b, -1, -1),
                                   self.cfg.render.expression_iterations)
            delta = forward.new_zeros(b, g_i ** 3, 3)
            delta[:, active] = moved
            volumes.append(delta.transpose(1, 2).reshape(b, 3, g_i, g_i, g_i).contiguous())
        return volumes

    def expression_frame_volumes(self, identity: Tensor, expression: Tensor, baked: ExpressionBake | None = None,
                                 body_shape: Tensor | None = None) -> list[Tensor]:
        """The fields of expressions [B, 64] on each of :meth:`expression_grids`, [B, C, G, G, G] each, relative to
        the neutral expression; ``baked``: :meth:`expression_bake` of the identity, when cached."""
        if baked is None:
            if not self.cfg.expression.basis and not self.cfg.expression.follow_3dmm:
                both = self.expression_volumes(torch.cat([identity, identity]),
                                               torch.cat([expression, torch.zeros_like(expression)]))
                return [v[: identity.shape[0]] - v[identity.shape[0]:] for v in both]
            baked = self.expression_bake(identity, body_shape)
            assert baked is not None
        followed = None if baked.surface is None else self._followed_3dmm(expression, baked.surface)
        if followed is not None and not self._network_expression_grids():
            return followed
        if self.cfg.expression.basis:
            coefficients = self.expression_deform.coefficients(expression)
            volumes = [combine_basis(v, coefficients) for v in baked.network]
        else:
            volumes = [v - n for v, n in zip(self.expression_volumes(identity, expression), baked.network)]
        if followed is None:
            return volumes
        # the shading (channel 3) on the head-box grid only; the face grid carries Delta alone
        head = torch.cat([followed[0].to(volumes[0].dtype), volumes[0][:, 3:].expand(followed[0].shape[0], -1, -1, -1, -1)],
                         1)
        return [head, *followed[1:]]

    def expression_fields_fn(self, identity: Tensor, expression: Tensor, baked: ExpressionBake | None = None,
                             body_shape: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        """Points -> :meth:`expression_fields` for a batch of frames (identity [B, 80], expression [B, 64], body
        shape [B, 10] or None): trilinear in the expression grids (``baked``: :meth:`expression_bake`, when
        cached), or direct when the grid is 0."""
        if not self.expression_grids():
            return lambda points: self.expression_fields(points, identity, expression, body_shape)
        volumes = self.expression_frame_volumes(identity, expression, baked, body_shape)
        return lambda points: self.sample_expression_volumes(volumes, points)

    def sample_expression_volumes(self, volumes: list[Tensor], points: Tensor) -> Tensor:
        """Trilinear lookup of :meth:`expression_frame_volumes` at points [B, P, 3] -> [B, P, C]: the head-box grid,
        and inside the face box the face grid, blended by the face box's window (zero outside the boxes). A face grid
        with fewer channels (Delta alone) leaves the head grid's other channels as they are."""
        grids = self.expression_grids()
        head = R.sample_grid(volumes[0], points, grids[0][0], grids[0][1], "zeros")
        if len(volumes) == 1:
            return head
        centre, half, _ = grids[1]
        face = R.sample_grid(volumes[1], points, centre, half, "zeros")
        weight = box_window(points, centre.to(points.dtype), half.to(points.dtype), FACE_GRID_FADE)
        c = face.shape[-1]
        blended = head[..., :c] + weight * (face - head[..., :c])
        return blended if c == head.shape[-1] else torch.cat([blended, head[..., c:]], -1)

    def expression_offsets_fn(self, identity: Tensor, expression: Tensor, baked: ExpressionBake | None = None,
                              body_shape: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        """Delta(points) [B, P, 3] metres of :meth:`expression_fields_fn` (the geometry only)."""
        fields = self.expression_fields_fn(identity, expression, baked, body_shape)
        return lambda points: fields(points)[..., :3]

    def manifold_volume(self) -> Tensor:
        """The learned part of the manifold field on its grid, [1, 1, G, G, G] (cached while the manifold
        parameters are unchanged and no gradient is recorded)."""
        key = self._manifold_key()
        cached = self._bake_cache.get("manifold")
        if cached is not None and cached[0] == key:
            return cached[1]
        g = self.cfg.render.manifold_grid
        nodes = R.grid_points(self.shell_centre, self.cfg.render.manifold_grid_half_extent, g).reshape(-1, 3)
        residual = torch.cat([self.manifold.residual(chunk) for chunk in nodes.split(self.cfg.render.chunk_size)])
        volume = residual.reshape(1, 1, g, g, g)
        if not torch.is_grad_enabled():
            self._bake_cache["manifold"] = (key, volume)
        return volume

    def baked_manifold_fn(self) -> Callable[[Tensor], Tensor]:
        """s(points) with the learned part trilinear in the baked grid (the analytic shell part stays exact)."""
        if self.cfg.render.manifold_grid == 0:
            return self.manifold
        volume = self.manifold_volume()
        half = self.cfg.render.manifold_grid_half_extent

        def field(points: Tensor) -> Tensor:
            b = points.shape[0]
            learned = R.sample_grid(volume.expand(b, -1, -1, -1, -1), points, self.shell_centre, half, "border")
            return self.manifold.radial(points) + learned[..., 0]

        return field

    def bake_intersections(self) -> tuple[Tensor, Tensor]:
        """Canonical intersections of the texture-parametrisation rays with every level (no deformation):
        points [T*T, L, 3] and validity [T*T, L]. Latent-free, so cached on the generator (under no_grad)."""
        key = self._manifold_key()
        cached = self._bake_cache.get("bake_hits")
        if cached is not None and cached[0] == key:
            return cached[1]
        rc = self.cfg.render
        points, depths = R.texture_rays(rc.texture_resolution, rc.texture_layout, self.shell_centre,
                                        rc.texture_half_extent, rc.bake_radius, rc.bake_samples)
        rays_per_chunk = max(1, rc.chunk_size // rc.bake_samples)
        s = torch.cat([self.manifold(chunk) for chunk in points.split(rays_per_chunk)])
        crossings = R.intersect_levels(s, depths, self.levels)
        hits = R.interpolate_at_crossings(points, crossings)
        result = (hits, crossings.valid)
        if not torch.is_grad_enabled():
            self._bake_cache["bake_hits"] = (key, result)
        return result

    def bake_textures(self, radiance_styles: Tensor) -> Tensor:
        """Canonical radiance baked on the level textures: [G, L, 4 + C, T, T] = (rgb in [0, 1], alpha, features)
        for G style vectors; alpha is 0 where a texel's ray misses the level."""
        hits, valid = self.bake_intersections()
        t, n_levels = self.cfg.render.texture_resolution, self.levels.shape[0]
        g = radiance_styles.shape[0]
        flat = hits.reshape(1, -1, 3).expand(g, -1, -1)
        if self.cfg.radiance.kind == "cnn":  # [G, L, c, T, T] -> per bake point [G, T*T*L, c], as the field gives
            rgb, sigma, feats = (x.permute(0, 3, 4, 1, 2).reshape(g, t * t * n_levels, -1)
                                 for x in self.radiance(radiance_styles))
            sigma = self._with_body_prior(sigma, hits.reshape(1, -1, 3)).expand(g, -1, -1)
        elif torch.is_grad_enabled():
            rgb, sigma, feats = self.canonical_radiance(flat, radiance_styles)
        else:
            chunk = inference_chunk(flat.shape[1], g, self.cfg.radiance.width, flat.device, self.cfg.render.chunk_size)
            parts = [self.canonical_radiance(part, radiance_styles) for part in flat.split(chunk, dim=1)]
            rgb, sigma, feats = (torch.cat(p, dim=1) for p in zip(*parts))
        alpha = R.alpha_from_sigma(sigma[..., 0], valid.reshape(1, -1), self.cfg.render.alpha_delta)
        texels = torch.cat([rgb, alpha[..., None], feats], -1)  # [G, T*T*L, 4 + C]
        return texels.reshape(g, t, t, n_levels, -1).permute(0, 3, 4, 1, 2).contiguous()

    def super_resolve_textures(self, textures: Tensor, superres_styles: Tensor, level_chunk: int | None = None
                               ) -> Tensor:
        """[G, L, 4 + C, T, T] -> [G, L, 4, sT, sT] RGBA in [0, 1].

        In '360' mode the textures are first padded (:func:`rendering.pad_texture`, :func:`superres_pad` texels)
        with what lies beyond their edges on the sphere, so the convolutions see across the octahedral fold (or the
        spherical seam) as they do inside the texture, and the result's margins are blended back onto the texels
        they continue (:func:`rendering.unpad_texture`), so both sides of an edge meet. The network treats each level
        on its own, so bakes (no gradients) run ``level_chunk`` levels at a time (default
        :data:`SUPERRES_LEVEL_CHUNK`; 0: all at once), which bounds the activations' memory and equals one pass, in
        the precision :func:`precision.superres_bake_dtype` picks (bfloat16 on CPUs that compute it natively)."""
        if self.superres is None:
            raise ValueError("super-resolution is disabled in this generator's config (superres.enabled=False)")
        if level_chunk is None:
            level_chunk = 0 if torch.is_grad_enabled() else SUPERRES_LEVEL_CHUNK
        layout, pad = self.cfg.render.texture_layout, superres_pad(textures.shape[-1])
        if layout != "frontal":
            textures = R.pad_texture(textures, layout, pad)
        dtype = torch.float32 if torch.is_grad_enabled() else superres_bake_dtype(textures.device)

        def run(chunk: Tensor) -> Tensor:
            if dtype == torch.float32:
                return self.superres(chunk, superres_styles)
            with torch.autocast(chunk.device.type, dtype=dtype):
                return self.superres(chunk, superres_styles).float()

        if 0 < level_chunk < textures.shape[1]:
            out = torch.cat([run(chunk) for chunk in textures.split(level_chunk, 1)], 1)
        else:
            out = run(textures)
        return out if layout == "frontal" else R.unpad_texture(out, layout, pad * self.cfg.superres.scale)

    def texture_radiance_fn(self, textures: Tensor, with_features: bool = False) -> RadianceFn:
        """Radiance by texture lookup at the canonical hits' parametrisation coordinates (RGBA only unless
        ``with_features``)."""
        rc = self.cfg.render
        if not with_features:
            textures = textures[:, :, :4]

        def radiance(hits: Tensor, valid: Tensor):
            uv = R.texture_coords(hits, rc.texture_layout, self.shell_centre, rc.texture_half_extent)
            texels = R.sample_textures(textures, uv, rc.texture_layout)
            alpha = texels[..., 3] * valid.to(texels.dtype)
            feats = texels[..., 4:] if texels.shape[-1] > 4 else None
            return texels[..., :3], alpha, feats

        return radiance

    def network_radiance_fn(self, radiance_styles: Tensor) -> RadianceFn:
        """Radiance by evaluating the FiLM-SIREN at the valid canonical hits (differentiable; invalid hits get
        zeros, their alpha is 0 anyway). Convolutional textures (``radiance.kind='cnn'``) are generated and read."""
        if self.cfg.radiance.kind == "cnn":
            return self.texture_radiance_fn(self.bake_textures(radiance_styles), with_features=True)
        n_feat = self.cfg.radiance.feature_dim

        def radiance(hits: Tensor, valid: Tensor):
            b = hits.shape[0]
            out = hits.new_zeros(*hits.shape[:-1], 4 + n_feat)  # rgb, sigma, features
            for i in range(b):  # per identity: its own styles, only the valid hits
                rgb, sigma, feats = self.canonical_radiance(hits[i][valid[i]][None], radiance_styles[i:i + 1])
                out = out.index_put((torch.full_like(valid[i].nonzero()[:, 0], i), *valid[i].nonzero().unbind(-1)),
                                    torch.cat([rgb, sigma, feats], -1)[0])
            alpha = R.alpha_from_sigma(out[..., 3], valid, self.cfg.render.alpha_delta)
            return out[..., :3], alpha, out[..., 4:]

        return radiance

    # ------------------------------------------------------------------ the pipeline
    def render_scene(self, scene: SceneFields, camera: Camera, resolution: int | None = None,
                     super_resolve: bool = False, low_resolution: bool = True) -> RenderOutput:
        """Render a batch of frames: the paper's figure, top to bottom. ``low_resolution=False`` with
        ``super_resolve``: only the super-resolved frame is made (no ray-resolution radiance, face correction or
        compositing; ``image_lr``, ``alpha_lr``, ``depth_lr``, ``features`` and ``aux['weights']`` are None/absent)."""
        rc = self.cfg.render
        h = w = resolution or rc.resolution
        b = camera.batch_size
        # 1. rays and samples in observed space
        origins, directions = camera.rays(h, w)
        depths = R.sample_depths(camera.near, camera.far, rc.samples_per_ray)  # [B, 1, N]
        observed = R.ray_points(origins, directions, camera.forward, depths)  # [B, R, N, 3]
        n = observed.shape[2]
        # 2. pose deformation: observed -> canonical pose (smoothed inverse LBS)
        canonical_pose = self.pose_deformation(scene.pose_volume, observed.reshape(b, -1, 3))
        # 3. expression deformation: canonical pose (expressive) -> canonical (neutral), and expression shading
        expression = scene.expression_fields(canonical_pose)
        delta = expression[..., :3]
        canonical = (canonical_pose + delta).reshape(b, h * w, n, 3)
        # 4. manifold intersections: first crossing of every level along every ray
        s = scene.manifold(canonical.reshape(b, -1, 3)).reshape(b, h * w, n)
        crossings = R.intersect_levels(s, depths, self.levels)
        hits = R.interpolate_at_crossings(canonical, crossings)  # [B, R, L, 3]
        # 5. radiance at the canonical intersections (the neutral face), shaded by the expression
        shading = None
        if expression.shape[-1] > 3:
            logits = R.interpolate_at_crossings(expression[..., 3:].reshape(b, h * w, n, 1), crossings)
            shading = R.expression_shading_factor(logits)  # [B, R, L, 1]
        face_weight = None  # [B, R, L]: where super-resolution must add the face texture's correction
        lr = image_lr = alpha_lr = depth_lr = features = None
        if low_resolution or not super_resolve:
            rgb, alpha, feats = scene.radiance(hits, crossings.valid)
            if isinstance(scene.face_detail, FaceDetail):  # the face texture's correction near the 3DMM surface
                rgb, face_weight = scene.face_detail.apply(hits, rgb)
            elif scene.face_detail is not None:
                rgb = scene.face_detail(hits, rgb)
            if shading is not None:
                rgb = (rgb * shading).clamp(max=1.0)
            # 6. sorted front-to-back compositing over white
            lr = composite_fast(rgb, alpha, crossings.depth, crossings.valid, C.BACKGROUND, feats, camera.far[:, None])
            image_lr, alpha_lr = R.rays_to_image(lr.rgb, h, w), R.rays_to_image(lr.opacity[..., None], h, w)
            depth_lr = R.rays_to_image(lr.depth[..., None], h, w)
            features = R.rays_to_image(lr.features, h, w) if lr.features is not None else None
        elif isinstance(scene.face_detail, FaceDetail):
            face_weight = scene.face_detail.weights(hits)
        if face_weight is not None:
            face_weight = face_weight.detach()
        image, alpha_img, depth_img = image_lr, alpha_lr, depth_lr
        # 7. manifold super-resolution: the same intersections, upsampled, read from super-resolved textures
        if super_resolve:
            if scene.radiance_hr is None:
                raise ValueError("super_resolve=True needs super-resolved textures (superres.enabled in the config)")
            scale = self.cfg.superres.scale
            level_loop = (torch.get_num_threads() == 1 or face_weight is not None
                          or b * (h * scale) * (w * scale) >= SUPERRES_LEVEL_LOOP_PIXELS)
            if scene.textures_hr is not None and rc.texture_layout == "frontal" and level_loop:
                image, alpha_img, depth_img = superres_frame(
                    hits, crossings.valid, crossings.depth, shading, (h, w), scale, scene.textures_hr,
                    self.shell_centre, rc.texture_half_extent, C.BACKGROUND, camera.far[:, None], scene.face_detail,
                    face_weight, SUPERRES_LEVELS_PER_PASS)
            else:
                image, alpha_img, depth_img = superres_frame_reference(
                    hits, crossings.valid, crossings.depth, shading, (h, w), scale, scene.radiance_hr, C.BACKGROUND,
                    camera.far[:, None], scene.face_detail)
        aux = {
            "valid": crossings.valid.permute(0, 2, 1).reshape(b, -1, h, w),
            "expression_offsets": delta.reshape(b, h * w, n, 3),
            "canonical_pose_points": canonical_pose.reshape(b, h * w, n, 3),
        }
        if lr is not None:
            aux["weights"] = lr.weights.permute(0, 2, 1).reshape(b, -1, h, w)
        return RenderOutput(image * 2 - 1, alpha_img, depth_img, None if image_lr is None else image_lr * 2 - 1,
                            alpha_lr, depth_lr, features, aux)

    def training_scene(self, latents: Latents, controls: Controls, *, truncation: float = 1.0,
                       super_resolve: bool = False, pose_volume: Tensor | None = None) -> SceneFields:
        """The differentiable scene of :meth:`forward` for a batch (styles, pose and expression grids, manifold,
        radiance; with ``super_resolve`` the super-resolved textures): build it once and render it from several
        cameras with :meth:`render_scene` (training renders the portrait and the face camera from one scene).
        ``pose_volume``: a precomputed :meth:`pose_volume` (e.g. from cached inverse-LBS entries)."""
        radiance_styles = self.radiance_styles(latents, truncation)
        rc = self.cfg.render
        textures = radiance_hr = hr_textures = None
        if super_resolve or rc.train_radiance == "textures":
            textures = self.bake_textures(radiance_styles)
        if super_resolve:
            hr_textures = self.super_resolve_textures(textures, self.superres_styles(latents, truncation))
            radiance_hr = self.texture_radiance_fn(hr_textures)
        if pose_volume is None:
            pose_volume = self.pose_volume(self.body.posed(controls.body_shape, controls.pose))
        return SceneFields(
            pose_volume=pose_volume,
            expression_fields=self.expression_fields_fn(latents.identity, controls.expression,
                                                        body_shape=controls.body_shape),
            manifold=self.baked_manifold_fn() if rc.train_manifold == "grid" else self.manifold,
            radiance=(self.texture_radiance_fn(textures, with_features=True) if rc.train_radiance == "textures"
                      else self.network_radiance_fn(radiance_styles)),
            radiance_hr=radiance_hr,
            face_detail=self.face_detail_fn(latents, controls.body_shape),
            textures_hr=hr_textures if super_resolve else None,
        )

    def forward(self, latents: Latents, controls: Controls, camera: Camera, *, truncation: float = 1.0,
                super_resolve: bool = False, resolution: int | None = None) -> RenderOutput:
        """Training path: render a batch (B identities x their controls x their cameras), differentiable.

        Low-resolution radiance: the network at the valid canonical intersections (``render.train_radiance =
        'direct'``) or lookups in level textures baked differentiably in this call ('textures'). With
        ``super_resolve`` the level textures are baked for each sample, super-resolved, and read at the bilinearly
        upsampled intersections, exactly as an avatar does. The manifold field: the MLP at every sample ('direct')
        or its differentiable grid ('grid'). Pose and expression deformations use their per-frame grids, as
        avatars do. With 'grid' and 'textures' (the ``small`` preset) this is the avatar computation itself.
        """
        latents = latents.validate("Generator.forward: latents")
        controls = controls.validate("Generator.forward: controls")
        b = latents.batch_size
        if controls.batch_size != b:
            raise ValueError(f"Generator.forward: latents batch {b} != controls batch {controls.batch_size}")
        camera = _camera_for_batch("Generator.forward", camera, b)
        scene = self.training_scene(latents, controls, truncation=truncation, super_resolve=super_resolve)
        return self.render_scene(scene, camera, resolution, super_resolve)

    # ------------------------------------------------------------------ avatars and cameras
    def make_avatar(self, latents: Latents, body_shape: Tensor | None = None, *, truncation: float = 0.7,
                    super_resolve: bool = True) -> Avatar:
        """Bake one identity (mapping, textures, super-resolved textures, manifold grid, canonical body)."""
        from .avatar import Avatar

        return Avatar(self, latents, body_shape, truncation=truncation, super_resolve=super_resolve)

    def face_camera(self, controls: Controls, yaw: Tensor | float = C.FRONTAL_YAW,
                    pitch: Tensor | float = C.FRONTAL_PITCH) -> Camera:
        """The face camera for these controls: orbits the canonical face centre, carried by the head's
        canonical->posed transform (follows the head)."""
        state = self.body.posed(controls.body_shape, controls.pose)
        face_centre = self.body.face_transform(controls.body_shape)[:, :3, 3]
        return Camera.face(state.bone_transforms[:, C.HEAD], face_centre, yaw, pitch)

    # ------------------------------------------------------------------ internals
    def _manifold_key(self) -> tuple:
        params = list(self.manifold.parameters())
        return (tuple(p._version for p in params), tuple(p.data_ptr() for p in params), self.device,
                self.radiance_style_avg.dtype)


def superres_pad(texture_resolution: int) -> int:
    """Texels of sphere padding around a '360' texture before super-resolution: 1/16 of its side, at least 2
    (about 27% more super-resolution work at any size; the seam no longer shows, docs/generator.md)."""
    return max(2, texture_resolution // 16)


def _truncate(raw: Tensor, average: Tensor, psi: float) -> Tensor:
    if psi == 1.0:
        return raw
    return average + psi * (raw - average)


def _camera_for_batch(where: str, camera: Camera, batch: int) -> Camera:
    if not isinstance(camera, Camera):
        raise TypeError(f"{where}: camera must be a portrait_core.geometry.camera.Camera, got {type(camera).__name__}")
    if camera.batch_size not in (1, batch):
        raise ValueError(f"{where}: camera batch {camera.batch_size} must be 1 or {batch}")
    camera.validate(f"{where}: camera")
    return camera.expand(batch)
