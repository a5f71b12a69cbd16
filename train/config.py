"""Typed, frozen training configs, named presets and ``key=value`` overrides.

A run is fully described by one :class:`TrainConfig` (written to ``config.json`` in the run folder). Presets are
complete configs; the command line only overrides fields (``optim.batch=8``, ``stage=2``). Unknown keys and
presets raise :class:`ConfigError` with the closest matches.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any


class ConfigError(ValueError):
    """A bad preset name, override key or value."""


OBJECTIVES = ("adversarial", "supervised")


@dataclass(frozen=True)
class DataConfig:
    root: str = "runs/data/synth32"
    """Dataset folder (Busto format: labels.json, images/, masks/, faces/)."""
    resolution: int = 32
    """Portrait resolution seen by the discriminators (stage 1: the generator's low-res render size)."""
    face_resolution: int = 32
    """Face-crop resolution seen by the face discriminator and the face reconstruction network."""
    mirror: bool = True
    """x-flip augmentation of reals (with mirrored labels)."""
    workers: int = 0
    """DataLoader worker processes (0 = load in the training process)."""
    generate_count: int = 0
    """If > 0 and ``root`` has no labels.json, render this many images with ``python -m portrait_core.data synth``."""
    extra_roots: str = ""
    """Supervised objective: comma-separated further dataset folders, loaded before ``root`` (identities never span
    folders)."""
    holdout: int = 0
    """Supervised objective: the last ``holdout`` identities of ``root`` are held out of training and evaluated."""
    pose_label_noise: float = 0.0
    """Adversarial objective: make the neck and head pose labels coarse, as estimated labels of real photos are: each
    record's neck and head labels are rotated by this many degrees about a random axis drawn from
    (``pose_label_noise_seed``, record index) alone (``train.data.coarse_pose``). The coarse labels feed the fake
    inputs, the pose prior and D's pose regression on reals; the true labels stay in each real batch as
    ``true_pose`` and are what ``train.evaluate --metrics pose`` measures against. 0 = the labels as stored."""
    pose_label_noise_seed: int = 0
    """Seed of the ``pose_label_noise`` axes (independent of ``seed``: runs with different seeds share the labels)."""


@dataclass(frozen=True)
class ModelConfig:
    generator: str = "tiny"
    """Generator preset of ``portrait_core.generator.generator_config``."""
    generator_overrides: str = "{}"
    """JSON object of GeneratorConfig field overrides, e.g. '{"num_levels": 8}'."""
    d_channel_base: int = 1024
    """Discriminator width: channels at resolution r are min(channel_base // r, channel_max)."""
    d_channel_max: int = 64
    """Upper bound of discriminator channels."""
    torso_fraction: float = 0.25
    """The torso discriminator sees the bottom ``torso_fraction`` of the portrait."""
    init_from: str = ""
    """A run folder, checkpoint folder or generator .safetensors. Stage 2: its generator (EMA) initialises and
    freezes stage 1. Stage 1: its generator initialises the whole generator, which is fine-tuned (``generator`` is
    then ignored; ``generator_overrides`` still apply, e.g. more levels). An appearance-code generator (the shipped
    default, ``train.supervised`` runs) draws its noise from its label samplers, copied into the run folder."""
    face_recon: str = ""
    """Checkpoint of the face reconstruction network (``python -m train.face_recon``); '' = train one on the fly
    into the run folder before GAN training starts."""


@dataclass(frozen=True)
class LossConfig:
    whole: float = 0.1
    """Weight of the whole-portrait discriminator's adversarial loss (D_whole)."""
    face: float = 1.0
    """Weight of the face-camera discriminator's adversarial loss (D_face)."""
    torso: float = 0.5
    """Weight of the torso (bottom strip) discriminator's adversarial loss (D_torso)."""
    r1_gamma: float = 1.0
    """R1 gamma on reals, applied to each discriminator (penalty 0.5*gamma*|grad|^2)."""
    r1_interval: int = 4
    """Lazy R1: every ``r1_interval`` steps, scaled by the interval (1 = every step)."""
    camera: float = 1.0
    """Camera (pitch/yaw) regression on D, reals (D only) and fakes (G and D)."""
    pose: float = 1.0
    """Joint-pose regression on D (reals and fakes; 360 mode: fakes only against the G pose branch)."""
    landmark: float = 1.0
    """3DMM landmark loss: frozen face-reconstruction landmarks of the face render vs the requested 3DMM's."""
    expression_coeff: float = 0.1
    """Expression coefficients recovered by the frozen face reconstruction net vs the requested ones."""
    imitation: float = 1e4
    """3DMM imitation: the generator's expression deformation at 3DMM vertices vs the 3DMM expression offsets, an
    error in metres^2: 1e4 makes a (1 cm)^2 error cost 1 (calibrated on the shipped model's runs)."""
    smooth_expression: float = 0.05
    """Smoothness of the expression deformation (finite differences under small jitter; a squared Jacobian, so a
    weight near 1 would forbid a 1.5 cm jaw drop)."""
    smooth_pose: float = 1.0
    """The paper's smoother loss ||D(T) - AvgPool(T)||_1 on the inverse-LBS entries T of the pose grid."""
    minimal_deformation: float = 100.0
    """Minimal deformation: mean |delta|^2 (metres^2) of the expression deformation at random head-box points
    (100: a 1 cm deformation everywhere costs 0.01)."""
    shading: float = 0.01
    """Expression shading sparsity: mean |logit| at the same points (generators with ``expression.shading``)."""
    consistency: float = 3.0
    """Stage 2: cross-resolution consistency |down(HR) - LR|^2 (image and alpha)."""
    shading_imitation: float = 0.0
    """The 3DMM's open mouth as the expression shading's target (``regularisers.mouth_interior_shading``, MSE of
    logits); generators with ``expression.shading``."""
    smooth_jitter: float = 0.01
    """Jitter (metres) for the smoothness finite differences."""
    num_reg_points: int = 256
    """Random points per sample for the deformation regularisers."""
    imitation_moving_fraction: float = 0.0
    """Fraction of the imitation vertices drawn where the 3DMM moves (per image, by offset length; rest uniform)."""
    imitation_sweep_fraction: float = 0.0
    """Fraction of the regularisers' expressions replaced by one named control alone, uniform over the range its
    labels reach (``regularisers.sweep_expressions``)."""
    imitation_warmup: int = 0
    """Render-free steps fitting only the expression branch to the 3DMM (imitation, smoothness, minimal
    deformation, shading terms) before the first training step of a fresh run."""


@dataclass(frozen=True)
class SupervisedConfig:
    """Loss weights and sampling of the supervised objective (``objective=supervised``): regression of renders
    with the records' own labels onto the labelled images (L1)."""

    image: float = 1.0
    """L1 of the portrait render (ray resolution ``data.resolution``) vs the area-downsampled image."""
    alpha: float = 1.0
    """L1 of the render's alpha vs the mask."""
    grad: float = 0.2
    """L1 of image gradients (finite differences)."""
    face: float = 0.5
    """L1 of the face-camera render (``data.face_resolution``) vs the face crop."""
    face_grad: float = 0.0
    """L1 of the face render's image gradients."""
    patch_prob: float = 0.5
    """Probability that a step renders random windows of the portrait at ``patch_scale`` times the density."""
    patch_scale: int = 2
    face_patch_prob: float = 0.0
    """The same for the face term (capped at the face crops' own resolution)."""
    face_patch_scale: int = 2
    face_mouth_weight: float = 1.0
    """Weight of the face L1 inside the box around the projected 3DMM lip landmarks (1: uniform)."""
    multiview: float = 0.0
    """Weight of multi-view consistency on whole-portrait steps: the render reprojected through its own (detached)
    depth into a second render from ``multiview_yaw`` radians of camera yaw to a random side, mean |colour
    difference| over the pixels both see (the ``consistency`` metric of ``train.evaluate``, as a loss)."""
    multiview_yaw: float = 0.2
    face_depth: float = 0.0
    """Weight of the face-surface depth term: mean |face render's depth - the record's 3DMM depth| (metres) over the
    inner face (jaw line to brows) where the render is opaque (``portrait_core.metrics.face_surface``)."""
    face_depth_alpha: float = 0.5
    """Pixels whose rendered alpha is at or below this are left out of the face-depth term (0.01: only empty ones,
    so that the term cannot be lowered by making the face transparent)."""
    eval_resolution: int = 64
    """Resolution of the held-out evaluation and the sample sheets."""


@dataclass(frozen=True)
class OptimConfig:
    batch: int = 4
    """Global batch (all ranks together); per-GPU batch = batch / world size."""
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    lr_mapping_scale: float = 0.05
    """Learning-rate multiplier for the generator's mapping networks (param group 'mapping')."""
    beta1: float = 0.0
    beta2: float = 0.99
    grad_clip: float = 1.0
    """Global-norm gradient clipping of G and of each D (0 = off)."""
    ema_half_life_kimg: float = 10.0
    """EMA half-life in thousands of images."""
    ema_rampup: float = 0.05
    """EMA ramp-up: half-life <= step * batch * rampup (0 = off)."""
    amp: bool = True
    """Mixed precision (fp16 autocast + GradScaler) on CUDA; ignored on CPU."""
    lr_manifold_scale: float = 1.0
    """Learning-rate multiplier of the manifold network (param group 'manifold')."""
    lr_colour_head_scale: float = 1.0
    """Learning-rate multiplier of the modulated colour head (radiance.modulated_colour), its own group if != 1."""
    lr_face_texture_scale: float = 10.0
    """Learning-rate multiplier of the shared face texture (param group 'face_texture'; ``face_texture.enabled``):
    each texel is seen by few rays per step, so it moves faster than the networks."""
    train_groups: str = ""
    """Comma-separated generator parameter groups to train (e.g. ``face_texture,face_texture_net``: a texture-only
    fine-tune that leaves every other weight bit-identical); empty = every group of the stage."""
    lr_min_fraction: float = 1.0
    """Cosine decay of every learning rate to this fraction at ``run.steps`` (1 = constant)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up over the first steps."""


@dataclass(frozen=True)
class PoseLearningConfig:
    enabled: bool = False
    """3DPortraitGAN body-pose self-learning: a G-side pose branch proposes neck/head pose, D predicts it."""
    full_yaw: bool = False
    """Sample portrait cameras over the full yaw circle (360 mode) from the dataset's camera labels."""
    symmetry: bool = True
    """Symmetry trick: pose branches see only one half of the yaw circle (mirror, predict, mirror back)."""
    prior_weight: float = 0.5
    """Initial weight of |p_G - p_data|^2 pulling the G pose branch toward the coarse labels."""
    prior_hold_kimg: float = 200.0
    """Hold the prior weight for this many thousand images ..."""
    prior_decay_kimg: float = 200.0
    """... then decay it linearly to 0 over this many thousand images (then free)."""
    d_pose_weight: float = 1.0
    """|p_D(fake) - p_G|^2 on fakes, trains D's pose branch."""
    hidden: int = 128
    """Width of the G pose branch MLP."""
    max_angle: float = 1.0
    """tanh bound (radians) of each predicted axis-angle component."""


@dataclass(frozen=True)
class FaceReconConfig:
    steps: int = 300
    """Training steps of the face reconstruction network when trained on the fly."""
    batch: int = 32
    lr: float = 2e-3
    width: int = 32
    """Channels of the first conv layer (doubles per block)."""
    val_fraction: float = 0.1


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs"
    """Parent folder of run folders (``<out>/<NNNNN>-<preset>``)."""
    name: str = ""
    """Explicit run folder name (default: auto-numbered)."""
    steps: int = 100
    """Total optimisation steps."""
    log_every: int = 10
    image_every: int = 100
    """Sample grid, rotating strip and pose/expression sweep every N steps (0 = off)."""
    ckpt_every: int = 50
    keep_last: int = 3
    """Keep the last K checkpoints (plus the best)."""
    eval_every: int = 0
    """Cheap SWD on a fixed batch every N steps to track the 'best' checkpoint (0 = at checkpoints)."""
    eval_images: int = 16
    minutes: float = 0.0
    """Wall-clock budget of this invocation (0 = none): saves a checkpoint and stops when spent (resume later)."""
    progress: bool = True
    """Rich progress bar with ETA."""
    tensorboard: bool = True


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "tiny"
    objective: str = "adversarial"
    """'adversarial': the GAN (three discriminators + regularisers); 'supervised': regression of renders with the
    records' own labels onto a fully labelled dataset (SynthPortrait) - the warm start."""
    stage: int = 1
    """1: low-res portrait+face+torso training; 2: super-resolution with stage 1 frozen."""
    seed: int = 0
    device: str = "auto"
    """'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N'."""
    threads: int = 0
    """torch CPU threads (0 = leave torch's default)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pose: PoseLearningConfig = field(default_factory=PoseLearningConfig)
    face_recon: FaceReconConfig = field(default_factory=FaceReconConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self, world_size: int = 1) -> TrainConfig:
        """Check cross-field constraints; raise ConfigError. Returns self."""
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {self.stage}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not 0 < self.optim.lr_min_fraction <= 1:
            raise ConfigError("optim.lr_min_fraction must be in (0, 1]")
        if self.data.pose_label_noise < 0:
            raise ConfigError("data.pose_label_noise must be >= 0 (degrees)")
        if self.data.pose_label_noise > 0 and self.objective != "adversarial":
            raise ConfigError("data.pose_label_noise applies to the adversarial objective only")
        if self.objective == "supervised" and self.data.holdout < 0:
            raise ConfigError("data.holdout must be >= 0")
        if self.optim.batch <= 0 or self.optim.batch % world_size:
            raise ConfigError(f"optim.batch={self.optim.batch} (global) must be a positive multiple of the "
                              f"world size {world_size}")
        for name in ("resolution", "face_resolution"):
            r = getattr(self.data, name)
            if self.objective == "adversarial" and (r < 8 or r & (r - 1)):
                raise ConfigError(f"data.{name}={r} must be a power of two >= 8 (the discriminators halve it)")
            if r < 4:
                raise ConfigError(f"data.{name}={r} must be >= 4")
        if not 0 < self.model.torso_fraction <= 1:
            raise ConfigError("model.torso_fraction must be in (0, 1]")
        if self.loss.r1_interval < 1:
            raise ConfigError("loss.r1_interval must be >= 1")
        if self.run.steps < 0 or self.run.ckpt_every < 1 or self.run.log_every < 1 or self.run.keep_last < 1:
            raise ConfigError("run.steps >= 0 and run.ckpt_every, run.log_every, run.keep_last >= 1 are required")
        try:
            over = json.loads(self.model.generator_overrides)
        except json.JSONDecodeError as e:
            raise ConfigError(f"model.generator_overrides is not valid JSON: {e}") from None
        if not isinstance(over, dict):
            raise ConfigError("model.generator_overrides must be a JSON object")
        if self.stage == 2 and not self.model.init_from:
            raise ConfigError("stage 2 needs model.init_from=<stage-1 run folder or checkpoint>")
        return self

    def batch_per_gpu(self, world_size: int = 1) -> int:
        return self.optim.batch // world_size


# ---------------------------------------------------------------------------------------------- presets
def _tiny() -> TrainConfig:
    return TrainConfig(
        preset="tiny",
        threads=1,  # tiny ops: one thread is as fast as two and does not fight other processes
        data=DataConfig(root="runs/data/synth32", resolution=32, face_resolution=32, generate_count=64),
        model=ModelConfig(generator="tiny", d_channel_base=256, d_channel_max=32),
        loss=LossConfig(num_reg_points=64),
        optim=OptimConfig(batch=2, lr_g=1e-3, lr_d=1e-3, ema_half_life_kimg=0.05),
        face_recon=FaceReconConfig(steps=200, batch=16, width=16),
        run=RunConfig(steps=20, log_every=5, image_every=10, ckpt_every=10, keep_last=2, eval_images=8),
    )


def _synth128() -> TrainConfig:
    return TrainConfig(
        preset="synth128",
        data=DataConfig(root="runs/data/synth128", resolution=128, face_resolution=128),
        model=ModelConfig(generator="paper", d_channel_base=16384, d_channel_max=400),
        loss=LossConfig(r1_interval=4, r1_gamma=1.0),
        optim=OptimConfig(batch=32, lr_g=2e-5, lr_d=2e-4, beta2=0.9, grad_clip=0.3, ema_half_life_kimg=10.0),
        face_recon=FaceReconConfig(steps=5000, batch=64, width=32),
        run=RunConfig(steps=150_000, log_every=100, image_every=2000, ckpt_every=5000, keep_last=3,
                      eval_every=5000, eval_images=256),
    )


def _synth512() -> TrainConfig:
    base = _synth128()
    return replace(
        base, preset="synth512", stage=2,
        # the paper renders stage-2 faces at 256^2 (the face crops of a 512^2 portrait dataset)
        data=replace(base.data, root="runs/data/synth512", resolution=512, face_resolution=256),
        model=replace(base.model, d_channel_base=32768, d_channel_max=400, init_from="runs/synth128"),
        loss=replace(base.loss, r1_gamma=5.0, consistency=3.0),
        optim=replace(base.optim, batch=16, lr_g=2e-4, lr_d=2e-4, grad_clip=0.3),
        run=replace(base.run, steps=50_000),
    )


def _shhq128() -> TrainConfig:
    base = _synth128()
    return replace(base, preset="shhq128", data=replace(base.data, root="data/shhq-hs"))


def _shhq512() -> TrainConfig:
    base = _synth512()
    return replace(base, preset="shhq512", data=replace(base.data, root="data/shhq-hs"),
                   model=replace(base.model, init_from="runs/shhq128"))


def _phq360() -> TrainConfig:
    base = _synth128()
    return replace(
        base, preset="phq360",
        data=replace(base.data, root="data/360phq"),
        # back views need the full-sphere texture parametrisation (portrait_core.generator: render.mode)
        model=replace(base.model, generator_overrides=json.dumps({"render": {"mode": "360"}})),
        # 360 PHQ has no expression labels and no face crops from behind: the face and landmark terms still apply
        # to the sampled (front-facing) face camera, the pose branch learns neck/head pose.
        pose=PoseLearningConfig(enabled=True, full_yaw=True, symmetry=True),
    )


def _warm128() -> TrainConfig:
    """Supervised warm start on SynthPortrait (the shipped default model's recipe, portrait_core/assets/
    MODEL_CARD.md): the ``small`` generator regressed at 32^2 rays (+ 32^2 face camera) onto 128^2 renders."""
    return TrainConfig(
        preset="warm128",
        objective="supervised",
        threads=2,
        data=DataConfig(root="runs/data/synth_default", extra_roots="runs/data/synth_extra", resolution=32,
                        face_resolution=32, mirror=False, holdout=16),
        model=ModelConfig(generator="small"),
        loss=LossConfig(num_reg_points=128),
        optim=OptimConfig(batch=3, lr_g=4e-4, lr_mapping_scale=1.0, lr_manifold_scale=0.3, beta1=0.9, beta2=0.99,
                          grad_clip=10.0, ema_half_life_kimg=0.0, lr_min_fraction=0.1, warmup_steps=20),
        run=RunConfig(steps=4500, log_every=10, image_every=50, ckpt_every=200, keep_last=3, eval_images=0),
    )


def _warm128_sr() -> TrainConfig:
    """Supervised stage 2: only the super-resolution, regressed onto the renders at their full density (a random
    64^2 window of the 128^2 portrait from 32^2 rays, the whole face crop from half its size in rays)."""
    base = _warm128()
    return replace(base, preset="warm128-sr", stage=2, model=replace(base.model, init_from="runs/warm128"),
                   supervised=SupervisedConfig(image=1.0, alpha=1.0, grad=0.2, face=0.5, face_grad=0.0),
                   optim=replace(base.optim, lr_g=1e-3, lr_min_fraction=1.0), run=replace(base.run, steps=450))


def _adv64() -> TrainConfig:
    """Adversarial stage 1 from scratch at 64^2 sized for a 2-core CPU (about 3 s per step at batch 8): the
    ``small`` generator with 32^2 level textures read during training and a 96-wide radiance network, light
    discriminators. The learning proof of docs/training.md was made with it."""
    return TrainConfig(
        preset="adv64",
        threads=2,
        data=DataConfig(root="runs/data/synth64", resolution=64, face_resolution=64, generate_count=2048),
        model=ModelConfig(generator="small", d_channel_base=1024, d_channel_max=64, generator_overrides=json.dumps(
            {"render": {"train_radiance": "textures", "texture_resolution": 32}, "radiance": {"width": 96}})),
        loss=LossConfig(num_reg_points=128),
        optim=OptimConfig(batch=8, lr_g=1e-4, lr_d=2e-4, ema_half_life_kimg=2.0),
        face_recon=FaceReconConfig(steps=800, batch=64, width=32),
        run=RunConfig(steps=2600, log_every=10, image_every=200, ckpt_every=200, keep_last=100, eval_images=32),
    )


PRESETS: dict[str, typing.Callable[[], TrainConfig]] = {
    "tiny": _tiny,
    "adv64": _adv64,
    "warm128": _warm128,
    "warm128-sr": _warm128_sr,
    "synth128": _synth128,
    "synth512": _synth512,
    "shhq128": _shhq128,
    "shhq512": _shhq512,
    "phq360": _phq360,
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; available: {', '.join(PRESETS)}")
    return PRESETS[name]()


# -------------------------------------------------------------------------------------------- overrides
def _all_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        keys += _all_keys(v, prefix + f.name + ".") if is_dataclass(v) else [prefix + f.name]
    return keys


def _field_type(cls: type, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[name]


def _coerce(key: str, text: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        typ = args[0]
    try:
        if typ is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if typ is int:
            return int(text.replace("_", ""))
        if typ is float:
            return float(text)
        if typ is str:
            return text
    except ValueError:
        raise ConfigError(f"{key}: cannot parse {text!r} as {typ.__name__}") from None
    raise ConfigError(f"{key}: unsupported field type {typ}")


def apply_override(cfg: Any, key: str, text: str, _path: str = "") -> Any:
    """Return ``cfg`` with the dotted ``key`` set from the string ``text`` (typed by the dataclass field)."""
    head, _, rest = key.partition(".")
    names = {f.name for f in fields(cfg)}
    full = _path + head
    if head not in names:
        candidates = _all_keys(cfg)
        close = difflib.get_close_matches(key, candidates, n=3)
        hint = f"; did you mean {', '.join(_path + c for c in close)}?" if close else ""
        raise ConfigError(f"unknown config key {full!r}{hint}")
    value = getattr(cfg, head)
    if is_dataclass(value):
        if not rest:
            raise ConfigError(f"{full!r} is a group; set one of its fields, e.g. {full}.{fields(value)[0].name}=...")
        return replace(cfg, **{head: apply_override(value, rest, text, full + ".")})
    if rest:
        raise ConfigError(f"{full!r} is not a group (no field {rest!r})")
    return replace(cfg, **{head: _coerce(full, text, _field_type(type(cfg), head))})


def parse_overrides(cfg: TrainConfig, items: list[str]) -> TrainConfig:
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        cfg = apply_override(cfg, k.strip(), v.strip())
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict, cls: type = TrainConfig) -> Any:
    """Rebuild a config from ``to_dict`` output; unknown keys raise ConfigError (missing keys take defaults)."""
    kw = {}
    known = {f.name: f for f in fields(cls)}
    for k, v in d.items():
        if k not in known:
            raise ConfigError(f"{cls.__name__}: unknown key {k!r} in stored config")
        sub = _field_type(cls, k)
        kw[k] = from_dict(v, sub) if is_dataclass(sub) else v
    return cls(**kw)


def to_json(cfg: TrainConfig) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=False)


def describe(cfg: TrainConfig, world_size: int = 1) -> str:
    """Human-readable resolved config (used by --dry-run)."""
    d = to_dict(cfg)
    d["optim"]["batch_per_gpu"] = cfg.batch_per_gpu(world_size)
    d["optim"]["batch_global"] = cfg.optim.batch
    d["world_size"] = world_size
    return json.dumps(d, indent=2)
