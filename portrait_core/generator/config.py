"""Typed, frozen generator configs and named presets (``paper``, ``small``, ``tiny``).

Lengths are metres in the canonical frame (origin at the canonical neck joint J12, +Y up, subject faces +Z)
unless a field says "network units" (1 unit = ``conventions.UNIT_METRES`` = 1.1775 m, origin at the face centre).
A config round-trips through plain JSON (:func:`config_to_json` / :func:`config_from_json`); that JSON is what a
checkpoint stores.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Literal

from portrait_core import conventions as C

__all__ = [
    "MappingConfig", "RadianceConfig", "ManifoldConfig", "ExpressionDeformConfig", "PoseDeformConfig",
    "SuperResConfig", "RenderConfig", "GeneratorConfig", "PRESETS", "generator_config", "config_to_json",
    "config_from_json", "config_to_dict", "config_from_dict",
]

RenderMode = Literal["frontal", "360"]


@dataclass(frozen=True)
class MappingConfig:
    """A latent mapping MLP: Linear -> LeakyReLU(0.2), ``layers`` hidden layers of ``hidden`` units, then Linear."""

    hidden: int = 256
    layers: int = 3


@dataclass(frozen=True)
class RadianceConfig:
    """FiLM-SIREN radiance field evaluated at canonical manifold intersections (GRAM / GRAM-HD ``GramRF``)."""

    width: int = 256
    """Units per FiLM-SIREN trunk layer."""
    depth: int = 8
    """Number of trunk layers; the rgb/sigma/feature heads are summed over trunk layers 1..depth-1."""
    feature_dim: int = 32
    """Extra feature channels baked into the textures for super-resolution."""
    input_scale: float = 2.0 / 0.24
    """Network units -> SIREN input scale (the official ``UniformBoxWarp(0.24)``)."""
    body_prior_strength: float = 20.0
    """Added to the raw sigma at canonical points near the canonical mean-shape body surface (a fixed buffer
    computed at construction and stored in checkpoints), so an untrained generator already renders the head and
    shoulders. 0 disables it (the official transparent start)."""
    body_prior_thickness: float = 0.025
    """Distance to the nearest body vertex (metres) at which the prior falls to half strength."""
    body_prior_softness: float = 0.01
    """Width (metres) of the prior's sigmoid fall-off."""
    modulated_colour: bool = False
    """Add a style-modulated colour head: ``rgb += W (h * A(style))`` on the colour layer's output ``h`` (``W``
    zero-initialised, so enabling it on a trained model changes nothing until it trains). A bilinear shortcut
    from the latents to region colours (clothing, hair) that the FiLM-SIREN alone learns only over long GAN
    training; the shipped CPU-trained model uses it. Off in the presets (the paper's architecture)."""
    mapping: MappingConfig = field(default_factory=MappingConfig)


@dataclass(frozen=True)
class ManifoldConfig:
    """Latent-free manifold field ``s(x) = |(x - centre) / axes| + MLP(x)`` (metres) and its K levels.

    The MLP's last layer starts at zero, so the K levels start as nested ellipsoidal shells around the head,
    wider than deep (``axes``) so that shoulders in the frame corners are crossed at a slant rather than grazed.
    s grows outwards; level k is ``s = linspace(radius_max, radius_min, K)[k]`` (the shell's half-depth along Z).
    Shells are closed and star-shaped about the centre, so back views (360 degree mode) cross them like front
    views and the spherical texture map is one-to-one.
    """

    levels: int = 24
    width: int = 128
    hidden_layers: int = 3
    centre: tuple[float, float, float] = C.PORTRAIT_LOOK_AT
    """Shell centre, metres (canonical frame): the portrait camera's look-at point (0, 0.129, 0), mid-depth of
    the torso, so that views from every yaw see the same shells and the front and back of the shoulders are
    crossed in front of each ray's closest approach to the centre (not at grazing incidence)."""
    axes: tuple[float, float, float] = (1.8, 1.3, 1.0)
    """Relative semi-axes of the initial shells (x, y, z)."""
    radius_max: float = 0.25
    """Half-depth (along Z) of the outermost level at initialisation, metres."""
    radius_min: float = 0.04
    """Half-depth of the innermost level at initialisation, metres."""
    input_scale: float = 4.0
    """Network units (relative to the centre) -> MLP input scale."""


@dataclass(frozen=True)
class ExpressionDeformConfig:
    """Expression deformation (FiLM-SIREN, zero-initialised output, 3-d input; Delta in metres).

    Delta is multiplied by a smooth window that is 1 inside the head box and fades to 0 at its faces, so the
    deformation is confined to the head; a grid over the same box bakes it exactly up to trilinear error.
    """

    width: int = 128
    depth: int = 3
    input_scale: float = 2.0 / 0.24
    head_box_centre: tuple[float, float, float] = C.FACE_CENTRE
    """Centre of the head box (metres, canonical pose)."""
    head_box_half_extent: tuple[float, float, float] = (0.16, 0.18, 0.16)
    """Half-size of the head box along x, y, z (metres)."""
    fade: float = 0.25
    """Fraction of each half-extent over which the window falls from 1 to 0."""
    shading: bool = False
    """Expression shading: a fourth, zero-initialised output channel, a log colour factor relative to the neutral
    expression (``rgb * 2 sigmoid(-d)``, so 1 at neutral), which lets an open mouth's interior and creases darken
    although the canonical radiance is the neutral face (a Busto addition; see docs/generator.md)."""
    mapping: MappingConfig = field(default_factory=lambda: MappingConfig(hidden=128))


@dataclass(frozen=True)
class PoseDeformConfig:
    """Pose deformation: inverse LBS transforms on a posed-space grid, smoothed by a learnable 3D CNN.

    A deliberate deviation from the official screen-space smoother (view-independent; any resolution).
    """

    kernel_size: int = 5
    """Side of the depthwise conv3d kernel (odd)."""
    passes: int = 2
    """How many times the (shared-kernel-per-pass) smoothing conv is applied."""
    box_centre: tuple[float, float, float] = C.PORTRAIT_LOOK_AT
    """Centre of the posed-space grid (metres): the portrait camera's look-at point."""
    box_half_extent: float = 0.32
    """Half-size of the cubic posed-space grid (metres); covers the portrait frustum between near and far."""


@dataclass(frozen=True)
class SuperResConfig:
    """Manifold super-resolution ``StyleRRDBNet``: RRDB trunk + modulated/demodulated conv upsampling.

    ``scale`` must equal ``2 ** len(up_channels)``. Input: the baked RGBA + feature textures; output RGBA
    (sigmoid on all four channels, so LR and HR share the [0, 1] colour range for the consistency loss).
    """

    enabled: bool = True
    scale: int = 4
    nf: int = 64
    nb: int = 4
    gc: int = 32
    up_channels: tuple[int, ...] = (64, 32)
    mapping: MappingConfig = field(default_factory=MappingConfig)


@dataclass(frozen=True)
class RenderConfig:
    """Rendering resolutions, sample counts, grid sizes and the manifold parametrisation."""

    mode: RenderMode = "frontal"
    """'frontal': orthographic (x, y) textures, for near-frontal cameras; '360': spherical (azimuth, elevation)
    textures about the shell centre, valid from every direction."""
    resolution: int = 128
    """Ray (low-resolution) image size; the super-resolved image is ``resolution * superres.scale``."""
    samples_per_ray: int = 64
    """Uniform samples between the camera's near and far planes (no interpolation step)."""
    texture_resolution: int = 128
    """Side of the baked per-level textures."""
    bake_samples: int = 96
    """Samples along each texture-parametrisation ray when baking."""
    texture_half_extent: float = 0.30
    """'frontal': half-size of the (x, y) texture square around the shell centre, metres."""
    bake_radius: float = 0.45
    """Where bake rays start (metres from the shell centre); must enclose every level surface."""
    manifold_grid: int = 96
    """Side of the baked manifold-field grid (avatars); 0 evaluates the MLP directly."""
    manifold_grid_half_extent: float = 0.45
    """Half-size of the cubic manifold grid (and of the body-prior grid) around the shell centre, metres."""
    prior_grid: int = 48
    """Side of the body-prior grid."""
    expression_grid: int = 32
    """Side of the per-frame expression-deformation grid over the head box; 0 evaluates the network directly."""
    pose_grid: int = 32
    """Side of the per-frame posed-space inverse-LBS grid."""
    alpha_delta: float = 0.04
    """alpha = (1 - exp(-alpha_delta * softplus(sigma))) * valid."""
    chunk_size: int = 65536
    """Points per chunk for network evaluation without gradients (bakes, export fields)."""
    train_manifold: Literal["direct", "grid"] = "direct"
    """Training path: evaluate the manifold MLP at every ray sample ('direct', the official way) or on the
    manifold grid, differentiably, and read it trilinearly like an avatar does ('grid': cost independent of batch
    size and resolution)."""
    train_radiance: Literal["direct", "textures"] = "direct"
    """Training path, low-resolution image: radiance network at the (valid) ray intersections ('direct', the
    official way) or through level textures baked differentiably inside the call, read like an avatar does
    ('textures': radiance cost per identity = K * T^2 points, independent of the ray resolution)."""


@dataclass(frozen=True)
class GeneratorConfig:
    """All generator settings. Build presets with :func:`generator_config`."""

    name: str = "custom"
    identity_dim: int = C.IDENTITY_DIM
    noise_dim: int = C.NOISE_DIM
    expression_dim: int = C.EXPRESSION_DIM
    radiance: RadianceConfig = field(default_factory=RadianceConfig)
    manifold: ManifoldConfig = field(default_factory=ManifoldConfig)
    expression: ExpressionDeformConfig = field(default_factory=ExpressionDeformConfig)
    pose: PoseDeformConfig = field(default_factory=PoseDeformConfig)
    superres: SuperResConfig = field(default_factory=SuperResConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def output_resolution(self) -> int:
        """Side of the super-resolved image (the ray resolution when super-resolution is disabled)."""
        return self.render.resolution * (self.superres.scale if self.superres.enabled else 1)


def _validate(cfg: GeneratorConfig) -> None:
    problems = []
    if cfg.render.mode not in ("frontal", "360"):
        problems.append(f"render.mode must be 'frontal' or '360', got {cfg.render.mode!r}")
    if cfg.superres.scale != 2 ** len(cfg.superres.up_channels):
        problems.append(f"superres.scale ({cfg.superres.scale}) must be 2 ** len(superres.up_channels) "
                        f"({2 ** len(cfg.superres.up_channels)})")
    if cfg.pose.kernel_size % 2 != 1:
        problems.append(f"pose.kernel_size must be odd, got {cfg.pose.kernel_size}")
    if cfg.radiance.depth < 2:
        problems.append(f"radiance.depth must be >= 2, got {cfg.radiance.depth}")
    if cfg.manifold.levels < 1:
        problems.append(f"manifold.levels must be >= 1, got {cfg.manifold.levels}")
    if not 0 < cfg.manifold.radius_min < cfg.manifold.radius_max:
        problems.append("need 0 < manifold.radius_min < manifold.radius_max")
    if cfg.render.bake_radius <= cfg.manifold.radius_max:
        problems.append("render.bake_radius must exceed manifold.radius_max")
    for name in ("resolution", "samples_per_ray", "texture_resolution", "bake_samples", "pose_grid", "prior_grid",
                 "chunk_size"):
        if getattr(cfg.render, name) < 2:
            problems.append(f"render.{name} must be >= 2, got {getattr(cfg.render, name)}")
    if cfg.render.train_manifold not in ("direct", "grid"):
        problems.append(f"render.train_manifold must be 'direct' or 'grid', got {cfg.render.train_manifold!r}")
    if cfg.render.train_radiance not in ("direct", "textures"):
        problems.append(f"render.train_radiance must be 'direct' or 'textures', got {cfg.render.train_radiance!r}")
    for name in ("manifold_grid", "expression_grid"):
        v = getattr(cfg.render, name)
        if v != 0 and v < 2:
            problems.append(f"render.{name} must be 0 (direct) or >= 2, got {v}")
    if problems:
        raise ValueError("invalid GeneratorConfig: " + "; ".join(problems))


# --- presets ------------------------------------------------------------------------------------------------

def _paper() -> GeneratorConfig:
    """Official sizes: 8x256 SIREN, 24 manifolds, 128^2 rays, x4 SR to 512^2, 128^2 textures."""
    return GeneratorConfig(name="paper")


def _small() -> GeneratorConfig:
    """Fast: interactive previews on a laptop CPU and a ~1 hour CPU training run."""
    return GeneratorConfig(
        name="small",
        radiance=RadianceConfig(width=128, depth=5, feature_dim=16, mapping=MappingConfig(hidden=128)),
        manifold=ManifoldConfig(levels=12, width=64),
        expression=ExpressionDeformConfig(width=64, mapping=MappingConfig(hidden=64)),
        pose=PoseDeformConfig(kernel_size=3, passes=2),
        superres=SuperResConfig(scale=2, nf=32, nb=1, gc=16, up_channels=(32,), mapping=MappingConfig(hidden=128)),
        render=RenderConfig(resolution=64, samples_per_ray=24, texture_resolution=64, bake_samples=64,
                            manifold_grid=48, expression_grid=20, pose_grid=16, prior_grid=40,
                            train_manifold="grid"),
    )


def _tiny() -> GeneratorConfig:
    """CPU tests: everything very small."""
    return GeneratorConfig(
        name="tiny",
        radiance=RadianceConfig(width=32, depth=3, feature_dim=4, mapping=MappingConfig(hidden=32, layers=2)),
        manifold=ManifoldConfig(levels=6, width=16, hidden_layers=2),
        expression=ExpressionDeformConfig(width=16, depth=2, mapping=MappingConfig(hidden=16, layers=2)),
        pose=PoseDeformConfig(kernel_size=3, passes=1),
        superres=SuperResConfig(scale=2, nf=8, nb=1, gc=8, up_channels=(8,), mapping=MappingConfig(hidden=16, layers=2)),
        render=RenderConfig(resolution=32, samples_per_ray=24, texture_resolution=32, bake_samples=32,
                            manifold_grid=32, expression_grid=12, pose_grid=12, prior_grid=16,
                            chunk_size=16384),
    )


PRESETS = {"paper": _paper, "small": _small, "tiny": _tiny}


def generator_config(name: str | GeneratorConfig, **overrides: Any) -> GeneratorConfig:
    """Preset ``name`` (or an existing config) with overrides.

    An override is a top-level field (``name="x"``), a sub-config instance (``render=RenderConfig(...)``) or a dict
    merged into the preset's sub-config (``render={"mode": "360"}``; nested dicts merge recursively).
    """
    if isinstance(name, GeneratorConfig):
        return _merge(name, overrides, "GeneratorConfig")
    if name not in PRESETS:
        raise ValueError(f"unknown generator preset {name!r}; available presets: {', '.join(sorted(PRESETS))}")
    return _merge(PRESETS[name](), overrides, "GeneratorConfig")


def _merge(obj: Any, overrides: dict[str, Any], where: str) -> Any:
    names = {f.name for f in fields(obj)}
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"{where}: unknown field {key!r}; fields: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if is_dataclass(current) and isinstance(value, dict):
            value = _merge(current, value, f"{where}.{key}")
        changes[key] = value
    return replace(obj, **changes)


# --- JSON round trip ----------------------------------------------------------------------------------------

def config_to_dict(cfg: GeneratorConfig) -> dict[str, Any]:
    """Plain nested dict (tuples become lists)."""
    return dataclasses.asdict(cfg)


def config_to_json(cfg: GeneratorConfig) -> str:
    return json.dumps(config_to_dict(cfg), sort_keys=True)


def config_from_dict(data: dict[str, Any], cls: type = GeneratorConfig, where: str = "config") -> Any:
    """Inverse of :func:`config_to_dict`; unknown keys raise ``ValueError`` naming them, missing keys take defaults."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    kwargs = {}
    defaults = cls()
    for key, value in data.items():
        current = getattr(defaults, key)
        if is_dataclass(current):
            kwargs[key] = config_from_dict(value, type(current), f"{where}.{key}")
        elif isinstance(current, tuple):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def config_from_json(text: str) -> GeneratorConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config is not valid JSON: {e}") from e
    return config_from_dict(data)
