"""The training loop: one TrainState, one Context, and the short loop that asks the config's objective
(train/objectives.py: adversarial or supervised) for one step at a time.

    objective.step (forward, backward, optimizer updates) -> EMA -> log -> images -> eval -> atomic checkpoint

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
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from portrait_core import conventions as C
from portrait_core.data.samplers import LabelSampler
from portrait_core.generator import Generator, generator_config
from portrait_core.generator.checkpoint import replaced_keys, transfer_weights
from portrait_core.geometry.camera import Camera
from train import checkpoint as ck
from train import data as tdata
from train import dist
from train import objectives as O
from train import schedules as S
from train.config import TrainConfig, from_dict, to_json
from train.data import FakeInputs, GlobalOrder, LabelTable, RealStream, ensure_dataset, sample_fake_inputs
from train.gen import Controls, Latents, build_generator, load_generator, save_generator
from train.networks import Discriminator, PoseBranch
from train.objectives import D_NAMES, NonFiniteLossError, render_fakes
from train.run import Logger, default_device, find_resumable, image_grid, new_run_dir, write_run_files

__all__ = ["TrainState", "Context", "prepare", "train", "train_step", "build_state", "NonFiniteLossError",
           "D_NAMES"]


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
    opt_D: torch.optim.Optimizer | None  # None: an objective without discriminators
    scaler_G: torch.amp.GradScaler
    scaler_D: torch.amp.GradScaler
    order: GlobalOrder
    fake_gen: torch.Generator
    step: int = 0
    best: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    """Training wall time before this process (resumed runs)."""

    def state_dict(self) -> dict:
        return {
            "format": ck.STATE_FORMAT, "format_version": ck.STATE_FORMAT_VERSION,
            "config": to_json(self.cfg), "step": self.step,
            "G": self.G.state_dict(), "G_ema": self.G_ema.state_dict(), "D": self.D.state_dict(),
            "pose_branch": self.pose_branch.state_dict() if self.pose_branch is not None else {},
            "pose_branch_ema": self.pose_branch_ema.state_dict() if self.pose_branch_ema is not None else {},
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict() if self.opt_D is not None else {},
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
        if self.opt_D is not None:
            self.opt_D.load_state_dict(s["opt_D"])
        self.scaler_G.load_state_dict(s["scaler_G"])
        self.scaler_D.load_state_dict(s["scaler_D"])
        self.order.load_state_dict(s["order"])
        self.fake_gen.set_state(s["fake_gen"])
        self.step = int(s["step"])
        self.best = json.loads(s.get("best", "{}"))
        self.wall_seconds = float(s.get("wall_seconds", 0.0))
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
    stream: object  # RealStream (adversarial) or labelled.LabelledStream (supervised): .next() -> batch dict
    table: LabelTable
    recon: nn.Module | None
    projector: nn.Module | None
    logger: Logger
    amp: bool
    objective: object = None  # train.objectives.AdversarialObjective / SupervisedObjective
    stop_signal: list = field(default_factory=list)
    t_start: float = field(default_factory=time.time)
    last_losses: dict = field(default_factory=dict)

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


def trainable_generator_params(G: nn.Module, stage: int, colour_head_group: bool = False, only: str = ""
                               ) -> dict[str, list[nn.Parameter]]:
    """Named parameter groups the stage trains (stage 2: only the super-resolution network and its mapping);
    ``colour_head_group``: the modulated colour head gets its own group (out of 'radiance'); ``only``: comma-separated
    group names to keep (``optim.train_groups``; empty = all; ``radiance_mapping`` / ``expression_mapping`` name the
    two halves of ``mapping``), an unknown or empty-for-this-stage name is an error."""
    groups = dict(G.param_groups())
    if colour_head_group and G.cfg.radiance.modulated_colour:
        head = [*G.radiance.colour_modulation.parameters(), *G.radiance.modulated_rgb.parameters()]
        groups["radiance"] = [p for p in groups["radiance"] if all(p is not q for q in head)]
        groups["colour_head"] = head
    if stage == 2:
        groups = {k: v for k, v in groups.items() if k in ("superres", "superres_mapping")}
        if not groups:
            raise ValueError("stage 2 needs a generator with super-resolution (superres.enabled)")
    groups = {k: v for k, v in groups.items() if v}
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    if "mapping" in groups and {"radiance_mapping", "expression_mapping"} & set(wanted):
        # the finer names split 'mapping': the appearance styles alone, or the expression field's styles alone
        del groups["mapping"]
        groups["radiance_mapping"] = list(G.radiance_mapping.parameters())
        groups["expression_mapping"] = list(G.expression_mapping.parameters())
    unknown = [n for n in wanted if n not in groups]
    if unknown:
        raise ValueError(f"optim.train_groups names {', '.join(map(repr, unknown))}, which stage {stage} of this "
                         f"generator does not train; its groups: {', '.join(groups)}")
    return {k: v for k, v in groups.items() if k in wanted} if wanted else groups


def build_state(cfg: TrainConfig, device: torch.device, label_identities: Tensor | None = None,
                log=print) -> TrainState:
    """Fresh models and optimizers (seeded by cfg.seed; identical on every rank). ``label_identities``: the
    truncation averages of a N(0, I)-noise generator are taken over them."""
    adversarial = cfg.objective == "adversarial"
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.stage == 2:
        G = load_generator(_generator_file(cfg.model.init_from), device="cpu")
    elif cfg.model.init_from:  # stage-1 fine-tuning of a trained generator (e.g. the supervised warm start)
        G = load_generator(_generator_file(cfg.model.init_from), device="cpu")
        overrides = json.loads(cfg.model.generator_overrides)
        if overrides:
            info, state, old_cfg = G.checkpoint_info, G.state_dict(), G.cfg
            G = Generator(generator_config(G.cfg, **overrides))
            drop = replaced_keys(old_cfg, G.cfg)
            if drop:
                log(f"model.generator_overrides rebuild {', '.join(p.rstrip('.') for p in drop)} from scratch; the "
                    f"rest comes from {cfg.model.init_from}")
            fresh = transfer_weights(G, state, f"model.init_from={cfg.model.init_from} with "
                                             f"model.generator_overrides", drop)
            if fresh:
                modules = sorted({k.rsplit(".", 2)[0] if k.count(".") >= 2 else k for k in fresh})
                log(f"{len(fresh)} tensors at their initialisation: {', '.join(modules[:12])}"
                    + (f" and {len(modules) - 12} more modules" if len(modules) > 12 else ""))
            G.checkpoint_info = info
        if label_identities is not None and not tdata.uses_appearance_codes(G):
            G.update_w_avg(n=1024, identities=label_identities)
    else:
        G = build_generator(cfg.model.generator, json.loads(cfg.model.generator_overrides))
        if label_identities is not None:
            G.update_w_avg(n=1024, identities=label_identities)
    if cfg.objective == "supervised":
        _widen_appearance_code(G, log)
    G = G.to(device)
    res = G.cfg.output_resolution if cfg.stage == 2 else G.cfg.render.resolution
    if adversarial and cfg.data.resolution != res:
        raise ValueError(f"data.resolution={cfg.data.resolution} must equal the generator's "
                         f"{'super-resolved' if cfg.stage == 2 else 'ray'} resolution {res} "
                         f"(generator preset {cfg.model.generator!r}, stage {cfg.stage})")
    # the supervised objective renders at data.resolution rays whatever the generator's default
    D = _make_ds(cfg, cfg.data.resolution, cfg.data.face_resolution).to(device) if adversarial else nn.ModuleDict()
    pose_branch = pose_ema = None
    if cfg.pose.enabled:
        pose_branch = PoseBranch(G.cfg.identity_dim + G.cfg.noise_dim, cfg.pose.hidden, cfg.pose.max_angle,
                                 cfg.pose.symmetry).to(device)
        pose_ema = copy.deepcopy(pose_branch).eval().requires_grad_(False)
    G.requires_grad_(False)
    o = cfg.optim
    groups = trainable_generator_params(G, cfg.stage, colour_head_group=o.lr_colour_head_scale != 1.0,
                                        only=o.train_groups)
    scale = {"mapping": o.lr_mapping_scale, "manifold": o.lr_manifold_scale, "colour_head": o.lr_colour_head_scale,
             "face_texture": o.lr_face_texture_scale}
    param_groups = []
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(True)
        param_groups.append({"params": params, "lr": o.lr_g * scale.get(name, 1.0), "name": name})
    if pose_branch is not None and cfg.stage == 1:
        param_groups.append({"params": list(pose_branch.parameters()), "lr": o.lr_g, "name": "pose_branch"})
    elif pose_branch is not None:
        pose_branch.requires_grad_(False)
    first = S.cosine_lr_factor(0, cfg.run.steps, o.lr_min_fraction, o.warmup_steps)
    for g in param_groups:
        g["base_lr"], g["lr"] = g["lr"], g["lr"] * first
    opt_G = torch.optim.Adam(param_groups, betas=(o.beta1, o.beta2), eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2), eps=1e-8) if adversarial else None
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


# ---------------------------------------------------------------------------------------------- the step
def train_step(st: TrainState, ctx: Context) -> dict[str, float]:
    """One iteration of the config's objective, then the EMA; returns the logged scalars. Raises
    NonFiniteLossError before any update it would poison."""
    losses = ctx.objective.step(st, ctx)
    beta = O.ema_step(st)
    st.step += 1
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["ema_beta"] = beta
    for g in st.opt_G.param_groups:  # the learning-rate schedule of the next step
        g["lr"] = g["base_lr"] * S.cosine_lr_factor(st.step, st.cfg.run.steps, st.cfg.optim.lr_min_fraction,
                                                     st.cfg.optim.warmup_steps)
    return dist.average_scalars(out, ctx.world)


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
    if cfg.objective == "supervised" and ctx.run_dir is not None:  # held-out target | render | alpha | face
        from train.labelled import sample_grid

        data = ctx.dataset
        rows = data.heldout_index[:4] if data.heldout_index.numel() else data.train_index[:4]
        sample_grid(G, data, rows, ctx.run_dir / "samples" / f"heldout-{st.step:08d}.png",
                    cfg.supervised.eval_resolution)


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
METHODS = {"adversarial": "busto-adversarial", "supervised": "busto-supervised-warm-start"}
"""``info.method`` of the exported generators of each objective."""


def init_lineage(info: dict, path: str) -> list[dict]:
    """The runs a generator started from ``model.init_from`` descends from, oldest first: the init checkpoint's own
    lineage plus one entry for it (method, optimisation steps, wall seconds)."""
    entry = {"checkpoint": str(path), "method": info.get("method"), "step": info.get("step"),
             "wall_seconds": info.get("wall_seconds")}
    return [*info.get("lineage", []), entry]


def _widen_appearance_code(G: Generator, log) -> None:
    """The init generator of a supervised run reads appearance codes: zero weights past the code's used dims, and
    one trained on a narrower code (older labels) gets zero weights on the new dims too, so this run's wider codes
    render as before at step 0; its info then states the wider code."""
    from portrait_core.assets.appearance import APPEARANCE_LAYOUT, USED_DIMS
    from portrait_core.generator.loading import silence_noise_dims

    info = getattr(G, "checkpoint_info", None) or {}
    noise = dict(info.get("noise_latent") or {})
    old = int(noise.get("used_dims", USED_DIMS))
    # dims past the code's are zero in every code this run feeds: their weights read zero too, so the exported
    # generator (whose info states the code) loads exactly as trained
    silence_noise_dims(G, USED_DIMS, G.cfg.noise_dim)
    if noise.get("kind") == "appearance_code" and old < USED_DIMS:
        n = silence_noise_dims(G, old, USED_DIMS)
        log(f"appearance code widened from {old} to {USED_DIMS} dims: zero weights on dims {old}:{USED_DIMS} in "
            f"{n} latent-reading layers (step 0 renders as the init generator)")
        G.checkpoint_info = {**info, "noise_latent": {**noise, "layout": APPEARANCE_LAYOUT, "used_dims": USED_DIMS}}


def checkpoint_info(st: TrainState, ctx: Context, last: dict[str, float] | None = None,
                    heldout: dict | None = None) -> dict:
    """``info`` of the exported generator: method, step, wall time, lineage, the data, the resolved config, the last
    losses and (supervised) the held-out scores; appearance-code generators carry their noise contract on."""
    cfg = st.cfg
    init_info = getattr(st.G, "checkpoint_info", None) or {}
    info = {"method": METHODS[cfg.objective], "step": st.step, "preset": cfg.preset, "stage": cfg.stage,
            "wall_seconds": round(st.wall_seconds + time.time() - ctx.t_start, 1), "threads": cfg.threads,
            "lineage": init_lineage(init_info, cfg.model.init_from) if cfg.model.init_from else [],
            "train": json.loads(to_json(cfg)), "last_losses": last or {}}
    if cfg.objective == "supervised":
        from portrait_core.assets.appearance import APPEARANCE_LAYOUT, USED_DIMS

        data = ctx.dataset
        info["data"] = {"root": [str(r) for r in data.roots], "images": len(data),
                        "train_images": int(data.train_index.numel()), "heldout_images": int(data.heldout_index.numel()),
                        "identities": data.num_identities, "resolution": data.resolution,
                        "generator": data.info.get("generator"), "yaw_mode": data.info.get("yaw_mode")}
        info["noise_latent"] = {"kind": "appearance_code", "module": "portrait_core.assets.appearance",
                                "layout": APPEARANCE_LAYOUT, "used_dims": USED_DIMS}
        info["samplers"] = "samplers.safetensors"  # beside the exported generator, in the run folder
        info["heldout"] = heldout
    elif ctx.table.noise is not None:  # carry the appearance-code contract on (train.evaluate, the assets read it)
        info["noise_latent"] = init_info.get("noise_latent", {"kind": "appearance_code"})
        info["samplers"] = "samplers.safetensors"  # beside the exported generator, in the run folder
    return info


def save_checkpoint(st: TrainState, ctx: Context, heldout: dict | None = None) -> Path | None:
    if not ctx.is_main:
        return None
    state = st.state_dict()
    state["wall_seconds"] = st.wall_seconds + time.time() - ctx.t_start
    info = checkpoint_info(st, ctx, ctx.last_losses, heldout)

    def export(path: Path) -> None:
        if st.cfg.objective == "supervised":  # truncation averages over the training (identity, appearance) pairs
            from train.labelled import set_style_averages

            samplers = ctx.dataset.samplers()
            set_style_averages(st.G_ema, samplers.identity.to(ctx.device), samplers.appearance.to(ctx.device))
        save_generator(path, st.G_ema, info=info)

    # never rotate away the best checkpoint: the one this state names and the one best.json names until replaced
    on_disk = ck.read_best(ctx.run_dir / "checkpoints") or {}
    protect = {n for n in (st.best.get("checkpoint"), on_disk.get("checkpoint")) if n}
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


def prepare(cfg: TrainConfig, resume: str | None = None, log=print, given: set[str] | None = None
            ) -> tuple[TrainState, Context]:
    """Build (or resume) the state and the context. ``resume``: None, 'auto', or a run/checkpoint path; ``given``:
    the keys set on the command line (see :func:`_merge_resume_config`)."""
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
            merged = _merge_resume_config(stored_cfg, cfg, given)
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
    if cfg.objective == "supervised":
        return _prepare_supervised(cfg, resume_from, run_dir, root, device, rank, world, log)
    dataset = tdata.open_dataset(root, cfg.data.resolution, cfg.data.face_resolution, cfg.data.mirror)
    if cfg.data.pose_label_noise > 0:  # coarse neck/head labels for fakes, pose prior and D (true ones kept)
        dataset = tdata.CoarsePoseDataset(dataset, cfg.data.pose_label_noise, cfg.data.pose_label_noise_seed)
    table = LabelTable.from_dataset(dataset)
    st = build_state(cfg, device, table.identity, log)
    if tdata.uses_appearance_codes(st.G):  # noise = appearance codes from the init generator's samplers
        stored = run_dir / "samplers.safetensors" if run_dir is not None else None
        src = stored if stored is not None and stored.is_file() else \
            tdata.find_samplers(_generator_file(cfg.model.init_from))
        samplers = LabelSampler.load(src)
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
                  amp=cfg.optim.amp and device.type == "cuda", objective=O.AdversarialObjective())
    if resume_from is not None:
        st.load_state_dict(ck.load_state(resume_from, map_location=device))
        logger.info(f"resumed from {resume_from} at step {st.step}")
        _after_resume(st, logger, run_dir if logger.enabled else None)
    dist.broadcast_module_states([st.G, st.G_ema, st.D] + ([st.pose_branch] if st.pose_branch else []))
    return st, ctx


def _after_resume(st: TrainState, logger: Logger, run_dir: Path | None) -> None:
    """Rank 0 of a resumed run: drop the ``stats.jsonl`` rows of the steps about to be replayed, and write the
    ``best.json`` a kill between the best checkpoint and its pointer left unwritten."""
    if run_dir is None:
        return
    dropped = logger.resume_at(st.step)
    if dropped:
        logger.info(f"stats.jsonl: dropped {dropped} row(s) past step {st.step} (replayed after the resume)")
    root = run_dir / "checkpoints"
    name = st.best.get("checkpoint")
    if name and (root / name).is_dir() and (ck.read_best(root) or {}).get("checkpoint") != name:
        ck.write_best(root, name, st.best.get("metric", "swd"), st.best["value"], st.best["step"])


def flush_denormals(cfg: TrainConfig) -> bool:
    """Supervised runs flush float32 denormals to zero while their steps run: Adam's second moments of rarely-used
    weights decay into denormals, which x86 CPUs process far more slowly, and flushing them changes nothing
    measurable in the updates. The setting is process-wide, so whoever turns it on (``train``, ``bench_step``)
    turns it off again (torch's default) when its steps end. Returns whether it was turned on."""
    if cfg.objective != "supervised":
        return False
    for dtype in (np.float32, np.float64):  # numpy caches finfo; computed under flushing it warns "subnormal is zero"
        np.finfo(dtype)
    torch.set_flush_denormal(True)
    return True


def _prepare_supervised(cfg: TrainConfig, resume_from: Path | None, run_dir: Path, root: Path, device, rank: int,
                        world: int, log) -> tuple[TrainState, Context]:
    """The supervised objective's state and context: the labelled data in memory (held-out split), its label
    tables as the samplers of the exported generator, the imitation warm-up of a fresh run."""
    from train.labelled import LabelledData, LabelledStream

    if world > 1:
        raise ValueError("objective=supervised runs in one process (no torchrun)")
    roots = [r for r in cfg.data.extra_roots.split(",") if r.strip()] + [str(root)]
    data = LabelledData(roots, holdout=cfg.data.holdout)
    log(f"data: {len(data)} images ({data.train_index.numel()} train, {data.heldout_index.numel()} held out), "
        f"{data.num_identities} identities, {data.resolution}^2")
    st = build_state(cfg, device, None, log)
    st.G.train()
    st.order = GlobalOrder(int(data.train_index.numel()), cfg.seed)
    samplers = data.samplers()
    logger = Logger(run_dir, cfg.run.steps, 0, cfg.run.progress, cfg.run.tensorboard, True)
    write_run_files(run_dir, cfg, world, str(device))
    samplers.save(run_dir / "samplers.safetensors")
    ctx = Context(cfg, device, rank, world, run_dir, data, LabelledStream(data, st.order, cfg.optim.batch),
                  data.label_table(), None, None, logger, amp=False, objective=O.SupervisedObjective())
    if resume_from is not None:
        st.load_state_dict(ck.load_state(resume_from, map_location=device))
        logger.info(f"resumed from {resume_from} at step {st.step}")
        _after_resume(st, logger, run_dir if logger.enabled else None)
    elif cfg.loss.imitation_warmup > 0 and cfg.stage == 1:
        O.imitation_warmup(st.G, cfg, data.label_table(), st.fake_gen, logger.info)
        st.G_ema.load_state_dict(st.G.state_dict())
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


#: The fields a resumed run may change from the command line (its length, budget, logging and device).
RESUMABLE_KEYS = ("device", "threads", "run.steps", "run.minutes", "run.progress", "run.tensorboard")


def _merge_resume_config(stored: TrainConfig, cli: TrainConfig, given: set[str] | None = None) -> TrainConfig:
    """Resume keeps the stored config but takes the command line's :data:`RESUMABLE_KEYS` that were ``given``
    (None: those that differ from the preset's values). Keys not given keep their stored values: a run of 300 steps
    resumed without ``run.steps`` still ends at 300, not at the preset's length."""
    from train.config import apply_override, preset

    if given is None:
        base = preset(cli.preset)
        given = {k for k in RESUMABLE_KEYS if _get(cli, k) != _get(base, k)}
    merged = stored
    for key in RESUMABLE_KEYS:
        if key in given:
            merged = apply_override(merged, key, str(_get(cli, key)))
    return merged


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


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


def train(cfg: TrainConfig, resume: str | None = None, given: set[str] | None = None) -> int:
    """Run training; returns a process exit code (0 done, 1 non-finite loss, 130/143 stopped by a signal)."""
    dist.init()
    pending: list = []
    old = _install_signal_handlers(pending)
    try:
        st, ctx = prepare(cfg, resume, given=given)
    except BaseException:
        _restore_signal_handlers(old)
        raise
    flushing = flush_denormals(st.cfg)
    ctx.stop_signal = pending  # a signal during set-up stops after the first step (with a checkpoint)
    cfg = st.cfg
    lg = ctx.logger
    lg.info(f"run folder {ctx.run_dir}; preset {cfg.preset}, objective {cfg.objective}, stage {cfg.stage}, "
            f"device {ctx.device}, world {ctx.world}, batch {cfg.optim.batch} global / "
            f"{cfg.batch_per_gpu(ctx.world)} per GPU")
    t_start, step0 = time.time(), st.step
    ctx.t_start = t_start
    deadline = t_start + cfg.run.minutes * 60 if cfg.run.minutes > 0 else math.inf
    code = 0
    try:
        if st.step >= cfg.run.steps and ctx.run_dir is not None and \
                ck.latest_checkpoint(ctx.run_dir / "checkpoints") is None:
            # nothing to train (e.g. run.steps=0 after an imitation warm-up): still export what was prepared
            path = save_checkpoint(st, ctx, _final_heldout(st, ctx))
            lg.info(f"checkpoint {path}")
        while st.step < cfg.run.steps:
            scalars = train_step(st, ctx)
            ctx.last_losses = scalars
            s = st.step
            totals = " ".join(f"{k.split('/')[0]} {scalars[k]:.4f}" for k in ("D/total", "G/total") if k in scalars)
            if S.every(s, cfg.run.log_every) or s == cfg.run.steps:
                rate = (s - step0) / max(time.time() - t_start, 1e-9)
                scalars["perf/steps_per_s"] = rate
                lg.scalars(s, scalars)
                lg.info(f"step {s}/{cfg.run.steps} {totals} ({rate:.2f} steps/s, eta "
                        f"{S.eta_seconds(s - step0, cfg.run.steps - step0, time.time() - t_start):.0f}s)")
            lg.progress(s, totals)
            if ctx.is_main and S.every(s, cfg.run.image_every):
                with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
                    log_images(st, ctx)
            out_of_time = time.time() > deadline
            stop = dist.any_flag(bool(ctx.stop_signal))
            last = s == cfg.run.steps or stop or out_of_time
            if S.every(s, cfg.run.ckpt_every) or last:
                improved = _maybe_eval_best(st, ctx)
                heldout = _final_heldout(st, ctx) if last else None
                path = save_checkpoint(st, ctx, heldout)
                if improved and path is not None:  # best.json only ever names a checkpoint that exists
                    ck.write_best(ctx.run_dir / "checkpoints", st.best["checkpoint"], "swd", st.best["value"], s)
                dist.barrier()
                if path is not None:
                    lg.info(f"checkpoint {path}")
            if stop:
                sig = ctx.stop_signal[0] if ctx.stop_signal else signal.SIGTERM
                lg.info(f"stopped by signal {signal.Signals(sig).name} at step {s}; checkpoint saved")
                code = 128 + int(sig)
                break
            if out_of_time:
                lg.info(f"run.minutes={cfg.run.minutes} spent at step {s}; checkpoint saved (continue with --resume)")
                break
    except NonFiniteLossError as e:
        last = ck.latest_checkpoint(ctx.run_dir / "checkpoints") if ctx.run_dir else None
        lg.info(f"ERROR: {e}; stopping without saving. Last good checkpoint: {last or 'none'}")
        code = 1
    finally:
        _restore_signal_handlers(old)
        if flushing:
            torch.set_flush_denormal(False)  # the caller's process gets its denormals back
        lg.close()
    dist.shutdown()
    return code


def _final_heldout(st: TrainState, ctx: Context) -> dict | None:
    """Supervised runs: the held-out scores of the EMA generator (what the stage trained: stage 2 super-resolved),
    written to ``<run>/eval.json`` and into the exported generator's info."""
    if st.cfg.objective != "supervised" or not ctx.is_main or ctx.dataset.heldout_index.numel() == 0:
        return None
    from train.labelled import evaluate_heldout

    with torch.random.fork_rng():
        res = evaluate_heldout(st.G_ema, ctx.dataset, ctx.dataset.heldout_index, st.cfg.supervised.eval_resolution,
                               super_resolve=st.cfg.stage == 2)
    res["step"] = st.step
    ck.atomic_write_text(ctx.run_dir / "eval.json", json.dumps(res, indent=1))
    ctx.logger.info(f"held-out: {json.dumps(res)}")
    return res


def _maybe_eval_best(st: TrainState, ctx: Context) -> bool:
    """Score the EMA generator (SWD); if it is the best so far, record it in ``st.best`` and return True. The
    caller writes ``best.json`` after the checkpoint it names exists."""
    if not ctx.is_main or st.cfg.run.eval_images <= 0:
        return False
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        value = quick_swd(st, ctx)
    ctx.logger.scalars(st.step, {"eval/swd": value})
    if not st.best or value < st.best.get("value", math.inf):
        st.best = {"checkpoint": ck.step_name(st.step), "metric": "swd", "value": value, "step": st.step}
        return True
    return False
