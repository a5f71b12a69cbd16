"""The training loop: one TrainState, step functions, and the short loop that calls them.

    data -> fake inputs (+ G pose branch) -> render portrait + face (one generator pass each)
         -> D step (+ lazy R1) -> G step (+ regularisers) -> EMA -> log -> atomic checkpoint

Stage 1 trains everything at the generator's ray resolution with three discriminators (whole portrait, face
camera, torso strip). Stage 2 freezes stage 1 and trains the super-resolution network with new high-resolution
discriminators and the cross-resolution consistency loss. See docs/training.md for the loss table.

Exactness: all randomness comes from torch's global RNG (generator internals), the fake-input generator and the
data order, whose states are saved; sample images and evaluations run under ``torch.random.fork_rng`` so they do
not perturb training. A resumed run therefore reproduces the uninterrupted run's losses exactly on CPU.

Test hooks (environment): ``BUSTO_INJECT_NAN="STEP:NAME"`` makes the loss NAME non-finite at STEP;
``BUSTO_CKPT_SLEEP`` (see train/checkpoint.py).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from portrait_core import conventions as C
from portrait_core.assets import DefaultSamplers
from portrait_core.generator import Generator, generator_config
from portrait_core.generator.checkpoint import transfer_weights
from portrait_core.geometry.camera import Camera
from train import checkpoint as ck
from train import data as tdata
from train import dist
from train import losses as L
from train import schedules as S
from train.config import TrainConfig, from_dict, to_json
from train.data import FakeInputs, GlobalOrder, LabelTable, RealStream, ensure_dataset, sample_fake_inputs
from train.gen import Controls, Latents, build_generator, load_generator, save_generator
from train.networks import NECK_HEAD, Discriminator, PoseBranch, ema_update, label_pitch_yaw
from train.run import Logger, default_device, find_resumable, image_grid, new_run_dir, write_run_files

D_NAMES = ("whole", "face", "torso")


class NonFiniteLossError(RuntimeError):
    def __init__(self, name: str, step: int):
        super().__init__(f"non-finite loss {name!r} at step {step}")
        self.name, self.step = name, step


class StopRequested(Exception):
    pass


# ------------------------------------------------------------------------------------------- the state
@dataclass
class TrainState:
    """Everything resumable. ``state_dict()`` is plain tensors/numbers (loadable with weights_only=True)."""

    cfg: TrainConfig
    G: nn.Module
    G_ema: nn.Module
    D: nn.ModuleDict
    pose_branch: PoseBranch | None
    pose_branch_ema: PoseBranch | None
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    scaler_G: torch.amp.GradScaler
    scaler_D: torch.amp.GradScaler
    order: GlobalOrder
    fake_gen: torch.Generator
    step: int = 0
    best: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {
            "format": ck.STATE_FORMAT, "format_version": ck.STATE_FORMAT_VERSION,
            "config": to_json(self.cfg), "step": self.step,
            "G": self.G.state_dict(), "G_ema": self.G_ema.state_dict(), "D": self.D.state_dict(),
            "pose_branch": self.pose_branch.state_dict() if self.pose_branch is not None else {},
            "pose_branch_ema": self.pose_branch_ema.state_dict() if self.pose_branch_ema is not None else {},
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "scaler_G": self.scaler_G.state_dict(), "scaler_D": self.scaler_D.state_dict(),
            "order": self.order.state_dict(), "fake_gen": self.fake_gen.get_state(),
            "rng": capture_rng(), "best": json.dumps(self.best),
        }

    def load_state_dict(self, s: dict, restore_rng: bool = True) -> None:
        self.G.load_state_dict(s["G"])
        self.G_ema.load_state_dict(s["G_ema"])
        self.D.load_state_dict(s["D"])
        if self.pose_branch is not None:
            if not s["pose_branch"]:
                raise ck.CheckpointError("resume: the checkpoint has no pose branch but pose.enabled=true")
            self.pose_branch.load_state_dict(s["pose_branch"])
            self.pose_branch_ema.load_state_dict(s["pose_branch_ema"])
        self.opt_G.load_state_dict(s["opt_G"])
        self.opt_D.load_state_dict(s["opt_D"])
        self.scaler_G.load_state_dict(s["scaler_G"])
        self.scaler_D.load_state_dict(s["scaler_D"])
        self.order.load_state_dict(s["order"])
        self.fake_gen.set_state(s["fake_gen"])
        self.step = int(s["step"])
        self.best = json.loads(s.get("best", "{}"))
        if restore_rng:
            restore_rng_state(s["rng"])


def capture_rng() -> dict:
    np_state = np.random.get_state()
    out = {
        "python": json.dumps(random.getstate()),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng_state(r: dict) -> None:
    st = json.loads(r["python"])
    random.setstate((st[0], tuple(st[1]), st[2]))
    meta = r["numpy_meta"]
    np.random.set_state((meta[0], r["numpy_keys"].numpy().astype(np.uint32), int(meta[1]), int(meta[2]),
                         float(meta[3])))
    torch.set_rng_state(r["torch"])
    if "cuda" in r and torch.cuda.is_available() and len(r["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(r["cuda"])


# ---------------------------------------------------------------------------------------- the context
@dataclass
class Context:
    """Non-resumable things built from the config: device, data, frozen helper nets, logger."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    run_dir: Path | None
    dataset: object
    stream: RealStream
    table: LabelTable
    recon: nn.Module | None
    projector: nn.Module | None
    logger: Logger
    amp: bool
    stop_signal: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _make_ds(cfg: TrainConfig, res: int, face_res: int, in_ch: int = 3) -> nn.ModuleDict:
    m = cfg.model
    sym = cfg.pose.enabled and cfg.pose.symmetry
    torso_h = max(4, round(res * m.torso_fraction))
    return nn.ModuleDict({
        "whole": Discriminator(res, res, m.d_channel_base, m.d_channel_max, in_ch, symmetric=sym),
        "face": Discriminator(face_res, face_res, m.d_channel_base, m.d_channel_max, in_ch),
        "torso": Discriminator(torso_h, res, m.d_channel_base, m.d_channel_max, in_ch),
    })


def trainable_generator_params(G: nn.Module, stage: int) -> dict[str, list[nn.Parameter]]:
    """Named parameter groups the stage trains (stage 2: only the super-resolution network and its mapping)."""
    groups = G.param_groups()
    if stage == 2:
        groups = {k: v for k, v in groups.items() if k in ("superres", "superres_mapping")}
        if not groups:
            raise ValueError("stage 2 needs a generator with super-resolution (superres.enabled)")
    return groups


def build_state(cfg: TrainConfig, device: torch.device, label_identities: Tensor | None = None) -> TrainState:
    """Fresh models and optimizers (seeded by cfg.seed; identical on every rank)."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.stage == 2:
        G = load_generator(_generator_file(cfg.model.init_from), device="cpu")
    elif cfg.model.init_from:  # stage-1 fine-tuning of a trained generator (e.g. the supervised warm start)
        G = load_generator(_generator_file(cfg.model.init_from), device="cpu")
        overrides = json.loads(cfg.model.generator_overrides)
        if overrides:
            info, state = G.checkpoint_info, G.state_dict()
            G = Generator(generator_config(G.cfg, **overrides))
            transfer_weights(G, state, f"model.init_from={cfg.model.init_from} with model.generator_overrides")
            G.checkpoint_info = info
        if label_identities is not None and not tdata.uses_appearance_codes(G):
            G.update_w_avg(n=1024, identities=label_identities)
    else:
        G = build_generator(cfg.model.generator, json.loads(cfg.model.generator_overrides))
        if label_identities is not None:
            G.update_w_avg(n=1024, identities=label_identities)
    G = G.to(device)
    res = G.cfg.output_resolution if cfg.stage == 2 else G.cfg.render.resolution
    if cfg.data.resolution != res:
        raise ValueError(f"data.resolution={cfg.data.resolution} must equal the generator's "
                         f"{'super-resolved' if cfg.stage == 2 else 'ray'} resolution {res} "
                         f"(generator preset {cfg.model.generator!r}, stage {cfg.stage})")
    D = _make_ds(cfg, cfg.data.resolution, cfg.data.face_resolution).to(device)
    pose_branch = pose_ema = None
    if cfg.pose.enabled:
        pose_branch = PoseBranch(G.cfg.identity_dim + G.cfg.noise_dim, cfg.pose.hidden, cfg.pose.max_angle,
                                 cfg.pose.symmetry).to(device)
        pose_ema = copy.deepcopy(pose_branch).eval().requires_grad_(False)
    G.requires_grad_(False)
    groups = trainable_generator_params(G, cfg.stage)
    o = cfg.optim
    param_groups = []
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(True)
        lr = o.lr_g * (o.lr_mapping_scale if name == "mapping" else 1.0)
        param_groups.append({"params": params, "lr": lr, "name": name})
    if pose_branch is not None and cfg.stage == 1:
        param_groups.append({"params": list(pose_branch.parameters()), "lr": o.lr_g, "name": "pose_branch"})
    elif pose_branch is not None:
        pose_branch.requires_grad_(False)
    opt_G = torch.optim.Adam(param_groups, betas=(o.beta1, o.beta2), eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2), eps=1e-8)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    use_amp = o.amp and device.type == "cuda"
    scaler_G = torch.amp.GradScaler("cuda", enabled=use_amp)
    scaler_D = torch.amp.GradScaler("cuda", enabled=use_amp)
    fake_gen = torch.Generator().manual_seed(cfg.seed + 12345)
    return TrainState(cfg, G, G_ema, D, pose_branch, pose_ema, opt_G, opt_D, scaler_G, scaler_D,
                      GlobalOrder(1, cfg.seed), fake_gen)


def _generator_file(path: str) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    try:
        return ck.resolve(p) / ck.GENERATOR_FILE
    except ck.CheckpointError:
        raise ck.CheckpointError(f"model.init_from={path}: no stage-1 generator found (a run folder, a checkpoint "
                                 f"folder or a .safetensors file)") from None


# ------------------------------------------------------------------------------------------ rendering
@dataclass
class Fakes:
    inputs: FakeInputs
    pose: Tensor  # pose actually rendered [B, 6, 3]
    pose_g: Tensor | None  # G pose branch output (360 mode)
    portrait: object  # RenderOutput
    face: object  # RenderOutput
    face_camera: Camera


def render_fakes(st: TrainState, ctx: Context, inputs: FakeInputs, generator: nn.Module | None = None,
                 pose_branch: nn.Module | None = None) -> Fakes:
    cfg = st.cfg
    G = generator or st.G
    pb = pose_branch if pose_branch is not None else st.pose_branch
    pose, pose_g = inputs.pose, None
    if pb is not None:
        pose_g = pb(torch.cat([inputs.identity, inputs.noise], 1), inputs.camera)
        mask = torch.zeros(1, 6, 1, device=pose.device, dtype=pose.dtype)
        mask[:, list(NECK_HEAD)] = 1
        pose = pose * (1 - mask) + pose_g * mask
    latents = Latents(inputs.identity, inputs.noise)
    controls = Controls(pose, inputs.expression, inputs.body_shape)
    cam = portrait_camera(inputs.camera)
    sr = cfg.stage == 2
    with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=ctx.amp):
        portrait = G(latents, controls, cam, super_resolve=sr)
        face_cam = G.face_camera(controls)
        face_res = cfg.data.face_resolution // (G.cfg.superres.scale if sr else 1)
        face = G(latents, controls, face_cam, super_resolve=sr, resolution=face_res)
    return Fakes(inputs, pose, pose_g, portrait, face, face_cam)


def portrait_camera(label: Tensor) -> Camera:
    """Camera of a 25-float portrait label with the depth range radius -/+ PORTRAIT_DEPTH_HALF_RANGE around the
    portrait look-at point (any radius: SynthPortrait's 2.23 m or 360PHQ's 2.7 m)."""
    cam = Camera.from_label25(label)
    r = (cam.origin - cam.origin.new_tensor(C.PORTRAIT_LOOK_AT)).norm(dim=-1)
    return cam.with_near_far(r - C.PORTRAIT_DEPTH_HALF_RANGE, r + C.PORTRAIT_DEPTH_HALF_RANGE)


def front_facing(labels: Tensor) -> Tensor:
    """Cameras in front of the subject (camera centre z > 0, i.e. within 90 degrees of frontal yaw): bool [B]."""
    return labels[:, 11] > 0


def _rgba(out) -> tuple[Tensor, Tensor]:
    return torch.cat([out.image, out.alpha * 2 - 1], 1), torch.cat([out.image_lr, out.alpha_lr * 2 - 1], 1)


def _camera_targets(labels: Tensor) -> Tensor:
    pitch, yaw = label_pitch_yaw(labels.float(), C.PORTRAIT_LOOK_AT)
    return L.camera_target(pitch, yaw)


# ------------------------------------------------------------------------------------------ step functions
def d_losses(st: TrainState, ctx: Context, reals: dict[str, Tensor], fakes: Fakes,
             do_r1: bool) -> dict[str, Tensor]:
    """The discriminators' loss terms on detached fakes and reals (+ lazy R1 on every discriminator); the weighted
    sum is ``D/total``."""
    cfg, lc = st.cfg, st.cfg.loss
    st.D.requires_grad_(True)
    frac = cfg.model.torso_fraction
    fake_img = fakes.portrait.image.detach().float()
    fake_face = fakes.face.image.detach().float()
    real_img, real_face = reals["image"], reals["face"]
    inputs = {
        "whole": (real_img, fake_img, reals["camera"], fakes.inputs.camera),
        "face": (real_face, fake_face, None, None),
        "torso": (L.lower_strip(real_img, frac), L.lower_strip(fake_img, frac), None, None),
    }
    losses: dict[str, Tensor] = {}
    total = 0.0
    r1_scale = 0.5 * lc.r1_gamma * lc.r1_interval
    with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=ctx.amp):
        for name in D_NAMES:
            D = st.D[name]
            real_x, fake_x, real_cam, fake_cam = inputs[name]
            real_x = real_x.detach().requires_grad_(do_r1 and lc.r1_gamma > 0)
            out_r, out_f = D(real_x, real_cam), D(fake_x, fake_cam)
            real_w = None
            if name == "face" and cfg.pose.full_yaw:
                # back views have no face: their "face crops" (the back of the head) are not face reals
                real_w = front_facing(reals["camera"]).to(out_r.logit.dtype)
            adv = L.d_logistic(out_r.logit, out_f.logit, real_w)
            losses[f"D/{name}/adv"] = adv
            total = total + adv
            if name == "whole":
                cam_l = L.mse(out_r.camera, _camera_targets(reals["camera"])) + \
                    L.mse(out_f.camera, _camera_targets(fakes.inputs.camera))
                losses["D/whole/camera"] = cam_l
                total = total + lc.camera * cam_l
                if cfg.pose.enabled:  # 3DPortraitGAN: D's pose branch learns from fakes only
                    pose_l = L.pose_prediction(out_f.pose, fakes.pose.detach())
                    losses["D/whole/pose"] = pose_l
                    total = total + cfg.pose.d_pose_weight * pose_l
                else:
                    pose_l = L.mse(out_r.pose, reals["pose"]) + L.mse(out_f.pose, fakes.pose.detach())
                    losses["D/whole/pose"] = pose_l
                    total = total + lc.pose * pose_l
            if do_r1 and lc.r1_gamma > 0:
                with torch.autocast(ctx.device.type, enabled=False):
                    r1 = L.r1_penalty(out_r.logit, real_x)
                losses[f"D/{name}/r1"] = r1
                total = total + r1_scale * r1
    losses["D/total"] = total
    return losses


def d_step(st: TrainState, ctx: Context, reals: dict[str, Tensor], fakes: Fakes, do_r1: bool) -> dict[str, Tensor]:
    """One discriminator update (Adam, per-D gradient clipping)."""
    cfg = st.cfg
    losses = d_losses(st, ctx, reals, fakes, do_r1)
    _inject_nan(st.step, losses)
    _check_finite(st.step, losses)
    st.opt_D.zero_grad(set_to_none=True)
    st.scaler_D.scale(losses["D/total"]).backward()
    dist.allreduce_grads(st.D.parameters(), ctx.world)
    st.scaler_D.unscale_(st.opt_D)
    for name in D_NAMES:
        norm = torch.nn.utils.clip_grad_norm_(st.D[name].parameters(), cfg.optim.grad_clip or math.inf)
        _check_grad_norm(st, f"D/{name}", norm, st.scaler_D)
    st.scaler_D.step(st.opt_D)
    st.scaler_D.update()
    return losses


def deformation_regularisers(st: TrainState, ctx: Context, fakes: Fakes) -> dict[str, Tensor]:
    """3DMM imitation, expression smoothness, minimal deformation and pose-deformation smoothness."""
    lc = st.cfg.loss
    G = st.G
    inp = fakes.inputs
    b = inp.identity.shape[0]
    out: dict[str, Tensor] = {}
    n = lc.num_reg_points
    face = G.face
    # 3DMM imitation at a random subset of the 3DMM's vertices, placed in canonical-pose space (face frame ->
    # canonical: BodyModel.face_transform with no pose; a pure translation)
    with torch.no_grad():
        nv = face.num_vertices
        idx = torch.randint(nv, (n,), generator=st.fake_gen).to(ctx.device)
        verts = face.vertices(inp.identity, inp.expression)[:, idx]
        offsets = face.expression_offsets(inp.identity, inp.expression)[:, idx]
        T = G.body.face_transform(inp.body_shape)
        pts = verts @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
        target = -(offsets @ T[:, :3, :3].transpose(1, 2))
        half = G.head_box_half
        # regularisation points are shared by the batch, so the result does not depend on how the global batch
        # is split across ranks
        box_pts = G.head_box_centre + (torch.rand(1, n, 3, generator=st.fake_gen).to(ctx.device) * 2 - 1) * half
        box_pts = box_pts.expand(b, -1, -1)
        jitter = torch.randn(1, 2 * n, 3, generator=st.fake_gen).to(ctx.device).expand(b, -1, -1) * lc.smooth_jitter
    all_pts = torch.cat([pts, box_pts], 1)
    fields = G.expression_fields(torch.cat([all_pts, all_pts + jitter], 1), inp.identity, inp.expression)
    delta, delta_j = fields[:, :2 * n, :3], fields[:, 2 * n:, :3]
    out["G/imitation"] = L.imitation(delta[:, :n], target)
    out["G/smooth_expression"] = L.smoothness(delta, delta_j, lc.smooth_jitter)
    out["G/minimal_deformation"] = L.minimal_deformation(delta[:, n:])
    if fields.shape[-1] > 3:
        out["G/shading"] = L.shading_sparsity(fields[:, n:2 * n, 3])
    if lc.smooth_pose > 0 and any(p.requires_grad for p in G.pose_smoother.parameters()):
        state = G.body.posed(inp.body_shape, fakes.pose.detach())
        out["G/smooth_pose"] = L.grid_smoothness(G.pose_volume(state))
    return out


def g_losses(st: TrainState, ctx: Context, fakes: Fakes) -> dict[str, Tensor]:
    """The generator's loss terms: weighted adversarial terms from the three Ds, camera/pose regression, 3DMM
    landmark and expression terms through the frozen face reconstruction net, deformation regularisers, pose prior
    (stage 2: adversarial + cross-resolution consistency). The weighted sum is ``G/total``."""
    cfg, lc = st.cfg, st.cfg.loss
    st.D.requires_grad_(False)
    frac = cfg.model.torso_fraction
    img, face_img = fakes.portrait.image, fakes.face.image
    losses: dict[str, Tensor] = {}
    total = 0.0
    weights = {"whole": lc.whole, "face": lc.face, "torso": lc.torso}
    with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=ctx.amp):
        out_w = st.D["whole"](img, fakes.inputs.camera)
        out_f = st.D["face"](face_img, None)
        out_t = st.D["torso"](L.lower_strip(img, frac), None)
        for name, o in (("whole", out_w), ("face", out_f), ("torso", out_t)):
            adv = L.g_nonsaturating(o.logit)
            losses[f"G/{name}/adv"] = adv
            total = total + weights[name] * adv
        cam_l = L.mse(out_w.camera, _camera_targets(fakes.inputs.camera))
        losses["G/camera"] = cam_l
        total = total + lc.camera * cam_l
        if not cfg.pose.enabled:
            pose_l = L.mse(out_w.pose, fakes.pose)
            losses["G/pose"] = pose_l
            total = total + lc.pose * pose_l
        if cfg.stage == 1:
            if ctx.recon is not None and (lc.landmark > 0 or lc.expression_coeff > 0):
                pred = ctx.recon(face_img.float())
                if ctx.projector is not None and lc.landmark > 0:
                    with torch.no_grad():
                        tgt = ctx.projector(fakes.inputs.identity, fakes.inputs.expression, fakes.inputs.body_shape,
                                            fakes.pose, fakes.face_camera)
                    lm = L.landmark_loss(pred["landmarks"], tgt) * 100.0
                    losses["G/landmark"] = lm
                    total = total + lc.landmark * lm
                ex = L.mse(pred["expression"], fakes.inputs.expression)
                losses["G/expression_coeff"] = ex
                total = total + lc.expression_coeff * ex
            reg = deformation_regularisers(st, ctx, fakes)
            losses.update(reg)
            total = total + lc.imitation * reg["G/imitation"] + lc.smooth_expression * reg["G/smooth_expression"] + \
                lc.minimal_deformation * reg["G/minimal_deformation"]
            if "G/shading" in reg:
                total = total + lc.shading * reg["G/shading"]
            if "G/smooth_pose" in reg:
                total = total + lc.smooth_pose * reg["G/smooth_pose"]
            if fakes.pose_g is not None:
                w = S.pose_prior_weight(st.step, cfg.optim.batch, cfg.pose.prior_weight, cfg.pose.prior_hold_kimg,
                                        cfg.pose.prior_decay_kimg)
                prior = L.pose_prior(fakes.pose_g[:, list(NECK_HEAD)], fakes.inputs.pose[:, list(NECK_HEAD)])
                losses["G/pose_prior"] = prior
                losses["G/pose_prior_weight"] = torch.tensor(w)
                total = total + w * prior
        else:
            hr, lr = _rgba(fakes.portrait)
            cons = L.cross_resolution_consistency(hr, lr.detach())
            hr_f, lr_f = _rgba(fakes.face)
            cons = cons + L.cross_resolution_consistency(hr_f, lr_f.detach())
            losses["G/consistency"] = cons
            total = total + lc.consistency * cons
    losses["G/total"] = total
    return losses


def g_step(st: TrainState, ctx: Context, fakes: Fakes) -> dict[str, Tensor]:
    """One generator update (Adam, global gradient clipping) of the stage's trainable parameters."""
    cfg = st.cfg
    losses = g_losses(st, ctx, fakes)
    _inject_nan(st.step, losses)
    _check_finite(st.step, losses)
    st.opt_G.zero_grad(set_to_none=True)
    st.scaler_G.scale(losses["G/total"]).backward()
    params = [p for g in st.opt_G.param_groups for p in g["params"]]
    dist.allreduce_grads(params, ctx.world)
    st.scaler_G.unscale_(st.opt_G)
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or math.inf)
    _check_grad_norm(st, "G", norm, st.scaler_G)
    st.scaler_G.step(st.opt_G)
    st.scaler_G.update()
    return losses


def ema_step(st: TrainState) -> float:
    o = st.cfg.optim
    beta = S.ema_beta(st.step, o.batch, o.ema_half_life_kimg, o.ema_rampup)
    ema_update(st.G_ema, st.G, beta)
    if st.pose_branch is not None:
        ema_update(st.pose_branch_ema, st.pose_branch, beta)
    return beta


def train_step(st: TrainState, ctx: Context) -> dict[str, float]:
    """One full iteration; returns the logged scalars. Raises NonFiniteLossError before any update it would
    poison."""
    cfg = st.cfg
    reals = {k: v.to(ctx.device, non_blocking=True) for k, v in ctx.stream.next().items()}
    per = cfg.batch_per_gpu(ctx.world)
    # sample the global batch of fake inputs on every rank (same generator state), keep this rank's slice
    inputs = sample_fake_inputs(ctx.table, cfg.optim.batch, st.fake_gen, cfg.data.mirror)
    inputs = inputs.slice(ctx.rank * per, (ctx.rank + 1) * per).to(ctx.device)
    fakes = render_fakes(st, ctx, inputs)
    d_losses = d_step(st, ctx, reals, fakes, S.r1_due(st.step, cfg.loss.r1_interval))
    g_losses = g_step(st, ctx, fakes)
    beta = ema_step(st)
    st.step += 1
    out = {k: float(v.detach()) for k, v in {**d_losses, **g_losses}.items()}
    out["ema_beta"] = beta
    return dist.average_scalars(out, ctx.world)


def _check_finite(step: int, losses: dict[str, Tensor]) -> None:
    """Raise on every rank if any rank has a non-finite loss (a lone raise would dead-lock the others)."""
    bad = L.all_finite(losses)
    if dist.any_flag(bad is not None):
        raise NonFiniteLossError(bad or "<a loss on another rank>", step)


def _check_grad_norm(st: TrainState, name: str, norm: Tensor, scaler) -> None:
    """Finite losses can still give non-finite gradients; without AMP that is fatal (with AMP the GradScaler skips
    the step and lowers its scale)."""
    if not scaler.is_enabled() and dist.any_flag(not bool(torch.isfinite(norm))):
        raise NonFiniteLossError(f"{name} gradient norm", st.step)


def _inject_nan(step: int, losses: dict[str, Tensor]) -> None:
    spec = os.environ.get("BUSTO_INJECT_NAN", "")
    if not spec:
        return
    s, _, name = spec.partition(":")
    if int(s) == step and name in losses:
        losses[name] = losses[name] * float("nan")


# --------------------------------------------------------------------------------------- images and eval
def fixed_inputs(ctx: Context, n: int, seed: int) -> FakeInputs:
    g = torch.Generator().manual_seed(seed)
    return sample_fake_inputs(ctx.table, n, g, mirror=False).to(ctx.device)


@torch.no_grad()
def log_images(st: TrainState, ctx: Context) -> None:
    """Fixed-seed sample grid, a rotating-view strip, and a pose/expression sweep (EMA generator)."""
    cfg = st.cfg
    G = st.G_ema
    sr = cfg.stage == 2
    n = 8
    inp = fixed_inputs(ctx, n, seed=1234)
    fakes = render_fakes(st, ctx, inp, generator=G, pose_branch=st.pose_branch_ema)
    ctx.logger.image("samples/portrait", st.step, image_grid(fakes.portrait.image.float(), 4))
    ctx.logger.image("samples/face", st.step, image_grid(fakes.face.image.float(), 4))
    one = inp.slice(0, 1)
    lat = Latents(one.identity, one.noise)
    k = 8
    span = math.pi if cfg.pose.full_yaw else 0.6
    yaws = C.FRONTAL_YAW + torch.linspace(-span, span, k, device=ctx.device)
    cams = Camera.portrait(yaws, C.FRONTAL_PITCH, device=ctx.device)
    rep = Controls(fakes.pose[:1].expand(k, -1, -1), one.expression.expand(k, -1), one.body_shape.expand(k, -1))
    lat_k = Latents(lat.identity.expand(k, -1), lat.noise.expand(k, -1))
    strip = G(lat_k, rep, cams, super_resolve=sr).image.float()
    ctx.logger.image("samples/rotate", st.step, image_grid(strip, k))
    # pose sweep (head turn) and expression sweep (first expression component)
    pose = torch.zeros(k, 6, 3, device=ctx.device)
    pose[:, 3, 1] = torch.linspace(-0.6, 0.6, k, device=ctx.device)
    expr = torch.zeros(k, 64, device=ctx.device)
    expr[:, 0] = torch.linspace(-2, 2, k, device=ctx.device)
    front = Camera.portrait(C.FRONTAL_YAW, C.FRONTAL_PITCH, batch=k, device=ctx.device)
    sweep_p = G(lat_k, Controls(pose, one.expression.expand(k, -1), one.body_shape.expand(k, -1)), front,
                super_resolve=sr).image.float()
    sweep_e = G(lat_k, Controls(torch.zeros_like(pose), expr, one.body_shape.expand(k, -1)), front,
                super_resolve=sr).image.float()
    ctx.logger.image("samples/sweep", st.step, image_grid(torch.cat([sweep_p, sweep_e]), k))


@torch.no_grad()
def quick_swd(st: TrainState, ctx: Context) -> float:
    """SWD between EMA samples and reals on a fixed batch (the 'best' checkpoint tracker)."""
    from portrait_core.metrics.swd import sliced_wasserstein

    n = st.cfg.run.eval_images
    inp = fixed_inputs(ctx, n, seed=4321)
    fakes = []
    for a in range(0, n, 8):
        fakes.append(render_fakes(st, ctx, inp.slice(a, a + 8), generator=st.G_ema,
                                  pose_branch=st.pose_branch_ema).portrait.image.float().cpu())
    reals = torch.stack([ctx.dataset[i % len(ctx.dataset)]["image"] for i in range(n)]).float()
    return float(sliced_wasserstein(torch.cat(fakes), reals, seed=0))


# -------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(st: TrainState, ctx: Context) -> Path | None:
    if not ctx.is_main:
        return None
    state = st.state_dict()
    info = {"step": st.step, "preset": st.cfg.preset, "stage": st.cfg.stage}
    if ctx.table.noise is not None:  # carry the appearance-code contract on (train.evaluate, the assets read it)
        info["noise_latent"] = (getattr(st.G, "checkpoint_info", None) or {}).get("noise_latent",
                                                                                 {"kind": "appearance_code"})

    def export(path: Path) -> None:
        save_generator(path, st.G_ema, info=info)

    protect = {st.best["checkpoint"]} if st.best.get("checkpoint") else set()
    path = ck.write_checkpoint(ctx.run_dir / "checkpoints", st.step, state, export, st.cfg.run.keep_last, protect)
    return path


# ------------------------------------------------------------------------------------------------ main
def _restore_signal_handlers(old: dict) -> None:
    for sig, h in old.items():
        signal.signal(sig, h)


def _install_signal_handlers(flags: list) -> dict:
    """SIGINT/SIGTERM append to ``flags``; the loop checks it after each step, saves and exits."""
    old = {}

    def handler(signum, frame):  # noqa: ARG001
        flags.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    return old


def prepare(cfg: TrainConfig, resume: str | None = None, log=print) -> tuple[TrainState, Context]:
    """Build (or resume) the state and the context. ``resume``: None, 'auto', or a run/checkpoint path."""
    rank, world = dist.rank(), dist.world_size()
    device = torch.device(default_device(cfg.device))
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank()) if cfg.device in ("auto", "cuda") else device
        torch.cuda.set_device(device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    resume_from = None
    run_dir = None
    if resume:
        src = find_resumable(cfg) if resume == "auto" else Path(resume)
        if src is not None:
            resume_from = ck.resolve(src)
            stored = ck.load_state(resume_from)
            stored_cfg = from_dict(json.loads(stored["config"]))
            merged = _merge_resume_config(stored_cfg, cfg)
            ignored = _differences(merged, cfg)
            if ignored and rank == 0:
                log(f"resume: keeping the checkpoint's config; ignoring command-line values for {', '.join(ignored)}")
            cfg = merged
            run_dir = resume_from.parent.parent
        elif resume != "auto":
            raise ck.CheckpointError(f"--resume {resume}: nothing to resume")
    cfg.validate(world)
    if run_dir is None:
        run_dir = new_run_dir(cfg) if rank == 0 else None
        run_dir = dist.broadcast_path(run_dir)
    root = ensure_dataset(cfg.data.root, cfg.data.resolution, cfg.data.generate_count if rank == 0 else 0, log) \
        if rank == 0 else Path(cfg.data.root)
    dist.barrier()
    dataset = tdata.open_dataset(root, cfg.data.resolution, cfg.data.face_resolution, cfg.data.mirror)
    table = LabelTable.from_dataset(dataset)
    st = build_state(cfg, device, table.identity)
    if tdata.uses_appearance_codes(st.G):  # noise = appearance codes from the init generator's samplers
        stored = run_dir / "samplers.safetensors" if run_dir is not None else None
        src = stored if stored is not None and stored.is_file() else \
            tdata.find_samplers(_generator_file(cfg.model.init_from))
        samplers = DefaultSamplers.load(src)
        table.noise = samplers.appearance
        if rank == 0 and src != stored:
            samplers.save(stored)
    st.order = GlobalOrder(len(dataset), cfg.seed)
    stream = RealStream(dataset, st.order, cfg.optim.batch, rank, world, cfg.data.workers)
    is_main = rank == 0
    logger = Logger(run_dir if is_main else None, cfg.run.steps, 0, cfg.run.progress, cfg.run.tensorboard, is_main)
    if is_main:
        write_run_files(run_dir, cfg, world, str(device))
    recon, projector = _face_recon(cfg, run_dir, root, device, logger, rank)
    ctx = Context(cfg, device, rank, world, run_dir, dataset, stream, table, recon, projector, logger,
                  amp=cfg.optim.amp and device.type == "cuda")
    if resume_from is not None:
        st.load_state_dict(ck.load_state(resume_from, map_location=device))
        logger.info(f"resumed from {resume_from} at step {st.step}")
    dist.broadcast_module_states([st.G, st.G_ema, st.D] + ([st.pose_branch] if st.pose_branch else []))
    return st, ctx


def _differences(a, b, prefix: str = "") -> list[str]:
    from dataclasses import fields, is_dataclass

    out = []
    for f in fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if is_dataclass(va):
            out += _differences(va, vb, prefix + f.name + ".")
        elif va != vb and f.name != "preset":
            out.append(prefix + f.name)
    return out


def _merge_resume_config(stored: TrainConfig, cli: TrainConfig) -> TrainConfig:
    """Resume keeps the stored config but takes the CLI's run length, logging and device fields."""
    from dataclasses import replace

    return replace(stored, device=cli.device, threads=cli.threads,
                   run=replace(stored.run, steps=cli.run.steps, progress=cli.run.progress,
                               tensorboard=cli.run.tensorboard))


def _face_recon(cfg: TrainConfig, run_dir: Path | None, root: Path, device, logger: Logger, rank: int):
    from train import face_recon as FR

    if cfg.stage == 2:
        return None, None
    path = Path(cfg.model.face_recon) if cfg.model.face_recon else (run_dir / "face_recon.pt")
    if not path.exists():
        if cfg.model.face_recon:
            raise FileNotFoundError(f"model.face_recon={path}: file not found")
        if rank == 0:
            logger.info(f"training the face reconstruction network ({cfg.face_recon.steps} steps) -> {path}")
            fc = cfg.face_recon
            t0 = time.time()
            with torch.random.fork_rng():
                report = FR.train_from_dataset(str(root), path, cfg.data.face_resolution, fc.steps, fc.batch, fc.lr,
                                               fc.width, cfg.seed, "cpu", log=logger.info)
            logger.info(f"face reconstruction: {json.dumps(report)} ({time.time() - t0:.1f}s)")
        dist.barrier()
    net = FR.load(path, device)
    proj = FR.default_projector()
    return net, (proj.to(device) if proj is not None else None)


def train(cfg: TrainConfig, resume: str | None = None) -> int:
    """Run training; returns a process exit code (0 done, 1 non-finite loss, 130/143 stopped by a signal)."""
    dist.init()
    pending: list = []
    old = _install_signal_handlers(pending)
    try:
        st, ctx = prepare(cfg, resume)
    except BaseException:
        _restore_signal_handlers(old)
        raise
    ctx.stop_signal = pending  # a signal during set-up stops after the first step (with a checkpoint)
    cfg = st.cfg
    lg = ctx.logger
    lg.info(f"run folder {ctx.run_dir}; preset {cfg.preset}, stage {cfg.stage}, device {ctx.device}, world "
            f"{ctx.world}, batch {cfg.optim.batch} global / {cfg.batch_per_gpu(ctx.world)} per GPU")
    t_start, step0 = time.time(), st.step
    code = 0
    try:
        while st.step < cfg.run.steps:
            scalars = train_step(st, ctx)
            s = st.step
            if S.every(s, cfg.run.log_every) or s == cfg.run.steps:
                rate = (s - step0) / max(time.time() - t_start, 1e-9)
                scalars["perf/steps_per_s"] = rate
                lg.scalars(s, scalars)
                lg.info(f"step {s}/{cfg.run.steps} D {scalars['D/total']:.4f} G {scalars['G/total']:.4f} "
                        f"({rate:.2f} steps/s, eta {S.eta_seconds(s - step0, cfg.run.steps - step0, time.time() - t_start):.0f}s)")
            lg.progress(s, f"D {scalars['D/total']:.3f} G {scalars['G/total']:.3f}")
            if ctx.is_main and S.every(s, cfg.run.image_every):
                with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
                    log_images(st, ctx)
            stop = dist.any_flag(bool(ctx.stop_signal))
            if S.every(s, cfg.run.ckpt_every) or s == cfg.run.steps or stop:
                _maybe_eval_best(st, ctx)
                path = save_checkpoint(st, ctx)
                dist.barrier()
                if path is not None:
                    lg.info(f"checkpoint {path}")
            if stop:
                sig = ctx.stop_signal[0] if ctx.stop_signal else signal.SIGTERM
                lg.info(f"stopped by signal {signal.Signals(sig).name} at step {s}; checkpoint saved")
                code = 128 + int(sig)
                break
    except NonFiniteLossError as e:
        last = ck.latest_checkpoint(ctx.run_dir / "checkpoints") if ctx.run_dir else None
        lg.info(f"ERROR: {e}; stopping without saving. Last good checkpoint: {last or 'none'}")
        code = 1
    finally:
        _restore_signal_handlers(old)
        lg.close()
    dist.shutdown()
    return code


def _maybe_eval_best(st: TrainState, ctx: Context) -> None:
    if not ctx.is_main or st.cfg.run.eval_images <= 0:
        return
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        value = quick_swd(st, ctx)
    ctx.logger.scalars(st.step, {"eval/swd": value})
    if not st.best or value < st.best.get("value", math.inf):
        st.best = {"checkpoint": ck.step_name(st.step), "metric": "swd", "value": value, "step": st.step}
        ck.write_best(ctx.run_dir / "checkpoints", st.best["checkpoint"], "swd", value, st.step)
