"""Training objectives: one object per kind of step, so that the loop (train/loop.py) stays a loop.

* :class:`AdversarialObjective` - AniPortraitGAN stage 1 (three discriminators, camera/pose heads, 3DMM landmark
  and expression terms, deformation regularisers, 360-degree pose self-learning) and stage 2 (super-resolution
  with the cross-resolution consistency).
* :class:`SupervisedObjective` - the warm start on fully labelled data: renders with each record's own labels
  regressed onto its image and face crop (L1), the same deformation regularisers; stage 2 trains only the
  super-resolution on the data at its full density.

Each objective's ``step(st, ctx)`` runs one iteration (forward, backward, optimizer updates, EMA) and returns the
unweighted loss terms plus the weighted totals (``D/total``, ``G/total``). Loss functions are pure
(train/losses.py, train/regularisers.py); weights come from the config only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from portrait_core.generator import Controls, Latents
from train import dist
from train import losses as L
from train import regularisers as RG
from train import schedules as S
from train.cameras import camera_targets, face_camera, fake_face_camera, front_facing, portrait_camera, random_window
from train.data import FakeInputs, sample_fake_inputs
from train.networks import NECK_HEAD, ema_update, with_neck_head

D_NAMES = ("whole", "face", "torso")


class NonFiniteLossError(RuntimeError):
    def __init__(self, name: str, step: int):
        super().__init__(f"non-finite loss {name!r} at step {step}")
        self.name, self.step = name, step


# ------------------------------------------------------------------------------------------- shared parts
def optimizer_update(st, ctx, opt, scaler, total: Tensor, clip_groups: dict[str, list], name: str) -> None:
    """Backward of ``total``, gradient all-reduce across ranks, per-group global-norm clipping
    (``optim.grad_clip``), non-finite gradient check, Adam step."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    dist.allreduce_grads(params, ctx.world)
    scaler.unscale_(opt)
    for group, ps in clip_groups.items():
        norm = torch.nn.utils.clip_grad_norm_(ps, st.cfg.optim.grad_clip or math.inf)
        if not scaler.is_enabled() and dist.any_flag(not bool(torch.isfinite(norm))):
            raise NonFiniteLossError(f"{group} gradient norm", st.step)
    scaler.step(opt)
    scaler.update()


def check_losses(step: int, losses: dict[str, Tensor]) -> None:
    """Test hook ``BUSTO_INJECT_NAN="STEP:NAME"`` (makes loss NAME non-finite at STEP), then raise on every rank
    if any rank has a non-finite loss (a lone raise would dead-lock the others)."""
    spec = os.environ.get("BUSTO_INJECT_NAN", "")
    if spec:
        s, _, name = spec.partition(":")
        if int(s) == step and name in losses:
            losses[name] = losses[name] * float("nan")
    bad = L.all_finite(losses)
    if dist.any_flag(bad is not None):
        raise NonFiniteLossError(bad or "<a loss on another rank>", step)


def ema_step(st) -> float:
    """EMA of G (and of the pose branch) after an update; returns the decay used."""
    o = st.cfg.optim
    beta = S.ema_beta(st.step, o.batch, o.ema_half_life_kimg, o.ema_rampup)
    ema_update(st.G_ema, st.G, beta)
    if st.pose_branch is not None:
        ema_update(st.pose_branch_ema, st.pose_branch, beta)
    return beta


def regulariser_terms(G, lc, identity: Tensor, expression: Tensor, body_shape: Tensor, pose: Tensor | None,
                      gen: torch.Generator, control_range: tuple[Tensor, Tensor] | None = None,
                      pose_entries: Tensor | None = None) -> dict[str, Tensor]:
    """The deformation regularisers of ``regularisers`` with the shared ``LossConfig`` (``lc``) settings, keyed by
    their LossConfig weight names; ``pose`` (or None) adds the pose smoother loss when the smoother trains (from
    ``pose_entries`` when they are cached)."""
    if lc.imitation_sweep_fraction > 0:
        if control_range is None:
            raise ValueError("loss.imitation_sweep_fraction > 0 needs the labels' control range")
        expression = RG.sweep_expressions(expression, *(t.to(expression) for t in control_range),
                                          lc.imitation_sweep_fraction, gen)
    out = RG.deformation_regularisers(G, identity, expression, body_shape, lc.num_reg_points, lc.smooth_jitter, gen,
                                      lc.imitation_moving_fraction, lc.shading_imitation > 0)
    if pose is not None and lc.smooth_pose > 0 and any(p.requires_grad for p in G.pose_smoother.parameters()):
        out["smooth_pose"] = RG.pose_smoother_term(G, body_shape, pose, pose_entries)
    return out


def weighted(terms: dict[str, Tensor], weights) -> Tensor:
    """sum_k weights.k * terms[k] (``weights``: a config dataclass whose fields name the terms)."""
    return sum(getattr(weights, k) * v for k, v in terms.items())


# ------------------------------------------------------------------------------------------- adversarial
@dataclass
class Fakes:
    inputs: FakeInputs
    pose: Tensor  # pose actually rendered [B, 6, 3]
    pose_g: Tensor | None  # G pose branch output (360 mode)
    portrait: object  # RenderOutput
    face: object  # RenderOutput
    face_camera: object


def render_fakes(st, ctx, inputs: FakeInputs, generator=None, pose_branch=None) -> Fakes:
    """One scene per fake, rendered from its portrait camera and from its face camera (drawn jointly)."""
    cfg = st.cfg
    G = generator or st.G
    pb = pose_branch if pose_branch is not None else st.pose_branch
    pose, pose_g = inputs.pose, None
    if pb is not None:
        pose_g = pb(torch.cat([inputs.identity, inputs.noise], 1), inputs.camera)
        pose = with_neck_head(pose, pose_g)
    latents = Latents(inputs.identity, inputs.noise)
    controls = Controls(pose, inputs.expression, inputs.body_shape)
    sr = cfg.stage == 2
    with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=ctx.amp):
        scene = G.training_scene(latents, controls, super_resolve=sr)
        portrait = G.render_scene(scene, portrait_camera(inputs.camera), super_resolve=sr)
        face_cam = fake_face_camera(G, controls, inputs.camera)
        face_res = cfg.data.face_resolution // (G.cfg.superres.scale if sr else 1)
        face = G.render_scene(scene, face_cam, face_res, super_resolve=sr)
    return Fakes(inputs, pose, pose_g, portrait, face, face_cam)


def _rgba(out) -> tuple[Tensor, Tensor]:
    return torch.cat([out.image, out.alpha * 2 - 1], 1), torch.cat([out.image_lr, out.alpha_lr * 2 - 1], 1)


class AdversarialObjective:
    """GAN stage 1 / stage 2: a D step on detached fakes (+ lazy R1), then a G step through the updated Ds."""

    name = "adversarial"

    def step(self, st, ctx) -> dict[str, Tensor]:
        cfg = st.cfg
        reals = {k: v.to(ctx.device, non_blocking=True) for k, v in ctx.stream.next().items()}
        per = cfg.batch_per_gpu(ctx.world)
        # the global batch of fake inputs on every rank (same generator state), this rank's slice
        inputs = sample_fake_inputs(ctx.table, cfg.optim.batch, st.fake_gen, cfg.data.mirror)
        inputs = inputs.slice(ctx.rank * per, (ctx.rank + 1) * per).to(ctx.device)
        fakes = render_fakes(st, ctx, inputs)
        d = self.d_losses(st, ctx, reals, fakes, S.r1_due(st.step, cfg.loss.r1_interval))
        check_losses(st.step, d)
        optimizer_update(st, ctx, st.opt_D, st.scaler_D, d["D/total"],
                         {f"D/{n}": list(st.D[n].parameters()) for n in D_NAMES}, "D")
        g = self.g_losses(st, ctx, fakes)
        check_losses(st.step, g)
        optimizer_update(st, ctx, st.opt_G, st.scaler_G, g["G/total"],
                         {"G": [p for grp in st.opt_G.param_groups for p in grp["params"]]}, "G")
        return {**d, **g}

    def d_losses(self, st, ctx, reals: dict[str, Tensor], fakes: Fakes, do_r1: bool) -> dict[str, Tensor]:
        """The discriminators' terms on detached fakes and reals (+ lazy R1 on every D); sum ``D/total``."""
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
                    cam_l = L.mse(out_r.camera, camera_targets(reals["camera"])) + \
                        L.mse(out_f.camera, camera_targets(fakes.inputs.camera))
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

    def g_losses(self, st, ctx, fakes: Fakes) -> dict[str, Tensor]:
        """Weighted adversarial terms of the three Ds, camera/pose regression, 3DMM landmark and expression terms
        through the frozen face reconstruction net, deformation regularisers, pose prior (stage 2: adversarial +
        cross-resolution consistency). Sum ``G/total``."""
        cfg, lc = st.cfg, st.cfg.loss
        st.D.requires_grad_(False)
        frac = cfg.model.torso_fraction
        img, face_img = fakes.portrait.image, fakes.face.image
        losses: dict[str, Tensor] = {}
        total = 0.0
        with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=ctx.amp):
            out_w = st.D["whole"](img, fakes.inputs.camera)
            out_f = st.D["face"](face_img, None)
            out_t = st.D["torso"](L.lower_strip(img, frac), None)
            for name, o in (("whole", out_w), ("face", out_f), ("torso", out_t)):
                adv = L.g_nonsaturating(o.logit)
                losses[f"G/{name}/adv"] = adv
                total = total + getattr(lc, name) * adv
            cam_l = L.mse(out_w.camera, camera_targets(fakes.inputs.camera))
            losses["G/camera"] = cam_l
            total = total + lc.camera * cam_l
            if not cfg.pose.enabled:
                pose_l = L.mse(out_w.pose, fakes.pose)
                losses["G/pose"] = pose_l
                total = total + lc.pose * pose_l
            if cfg.stage == 1:
                total = total + self._stage1_terms(st, ctx, fakes, face_img, losses)
            else:
                hr, lr = _rgba(fakes.portrait)
                hr_f, lr_f = _rgba(fakes.face)
                cons = L.cross_resolution_consistency(hr, lr.detach()) + \
                    L.cross_resolution_consistency(hr_f, lr_f.detach())
                losses["G/consistency"] = cons
                total = total + lc.consistency * cons
        losses["G/total"] = total
        return losses

    def _stage1_terms(self, st, ctx, fakes: Fakes, face_img: Tensor, losses: dict[str, Tensor]) -> Tensor:
        cfg, lc = st.cfg, st.cfg.loss
        inp = fakes.inputs
        total = 0.0
        if ctx.recon is not None and (lc.landmark > 0 or lc.expression_coeff > 0):
            pred = ctx.recon(face_img.float())
            if ctx.projector is not None and lc.landmark > 0:
                with torch.no_grad():
                    tgt = ctx.projector(inp.identity, inp.expression, inp.body_shape, fakes.pose, fakes.face_camera)
                lm = L.landmark_loss(pred["landmarks"], tgt) * 100.0
                losses["G/landmark"] = lm
                total = total + lc.landmark * lm
            ex = L.mse(pred["expression"], inp.expression)
            losses["G/expression_coeff"] = ex
            total = total + lc.expression_coeff * ex
        reg = regulariser_terms(st.G, lc, inp.identity, inp.expression, inp.body_shape, fakes.pose.detach(),
                                st.fake_gen)
        losses.update({f"G/{k}": v for k, v in reg.items()})
        total = total + weighted(reg, lc)
        if fakes.pose_g is not None:
            w = S.pose_prior_weight(st.step, cfg.optim.batch, cfg.pose.prior_weight, cfg.pose.prior_hold_kimg,
                                    cfg.pose.prior_decay_kimg)
            prior = L.pose_prior(fakes.pose_g[:, list(NECK_HEAD)], inp.pose[:, list(NECK_HEAD)])
            losses["G/pose_prior"] = prior
            losses["G/pose_prior_weight"] = torch.tensor(w)
            total = total + w * prior
        return total


# -------------------------------------------------------------------------------------------- supervised
MOUTH_LANDMARKS = slice(48, 68)
"""iBUG-68 outer and inner lip landmarks."""


def face_landmarks_uv(G, batch: dict[str, Tensor], camera) -> Tensor:
    """The 3DMM landmarks of each record's (identity, expression), placed on its posed body and projected by
    ``camera`` (the face camera or a window of it): [B, 68, 2] normalised image coordinates (x right, y down)."""
    from train.face_recon import LandmarkProjector

    return LandmarkProjector(G.face, G.body)(batch["identity"], batch["expression"], batch["body_shape"],
                                             batch["pose"], camera)


def mouth_weight_map(mouth_uv: Tensor, res: int, weight: float, margin: float = 0.25) -> Tensor:
    """Per-pixel loss weights [B, 1, res, res]: ``weight`` at pixel centres inside the box around each image's mouth
    landmarks ``mouth_uv`` [B, M, 2] (normalised image coordinates), widened by ``margin`` of its size on every side
    (the open mouth's interior, the lip edges), 1 elsewhere."""
    lo, hi = mouth_uv.amin(1), mouth_uv.amax(1)
    pad = (hi - lo) * margin
    lo, hi = lo - pad, hi + pad
    centres = (torch.arange(res, dtype=mouth_uv.dtype, device=mouth_uv.device) + 0.5) / res
    inside_x = (centres[None] >= lo[:, :1]) & (centres[None] <= hi[:, :1])  # [B, res]
    inside_y = (centres[None] >= lo[:, 1:]) & (centres[None] <= hi[:, 1:])
    inside = inside_y[:, :, None] & inside_x[:, None, :]
    return 1.0 + (weight - 1.0) * inside[:, None].to(mouth_uv.dtype)


class SupervisedObjective:
    """Regression of renders with each record's own labels (identity, appearance code as the noise latent, pose,
    expression, body shape, portrait and face camera) onto a fully labelled dataset; stage 2: the super-resolution
    only. The inverse-LBS entries of each record's pose (no parameters) are cached in half precision."""

    name = "supervised"

    def __init__(self):
        self.entry_cache: dict[int, Tensor] = {}

    def step(self, st, ctx) -> dict[str, Tensor]:
        batch = {k: v.to(ctx.device) for k, v in ctx.stream.next().items()}
        if st.cfg.stage == 2:
            terms = self.superres_terms(st.G, st.cfg, batch, st.fake_gen)
        else:
            batch["pose_entries"] = self._entries(st.G, batch)
            terms = self.terms(st.G, st.cfg, batch, st.fake_gen, ctx.dataset.control_range())
        terms = {f"G/{k}": v for k, v in terms.items()}
        check_losses(st.step, terms)
        optimizer_update(st, ctx, st.opt_G, st.scaler_G, terms["G/total"],
                         {"G": [p for grp in st.opt_G.param_groups for p in grp["params"]]}, "G")
        return terms

    def _entries(self, G, batch: dict[str, Tensor]) -> Tensor:
        idx = batch["index"].tolist()
        missing = [k for k, i in enumerate(idx) if i not in self.entry_cache]
        if missing:
            with torch.no_grad():
                fresh = G.pose_entries(G.body.posed(batch["body_shape"][missing], batch["pose"][missing]))
            self.entry_cache.update(zip([idx[k] for k in missing], fresh.half().cpu()))
        return torch.stack([self.entry_cache[i] for i in idx]).float().to(batch["pose"].device)

    @staticmethod
    def terms(G, cfg, batch: dict[str, Tensor], gen: torch.Generator,
              control_range: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """Unweighted terms of one stage-1 step plus ``total`` (weighted by ``cfg.supervised`` and ``cfg.loss``)."""
        sc = cfg.supervised
        latents = Latents(batch["identity"], batch["appearance"])
        controls = Controls(batch["pose"], batch["expression"], batch["body_shape"])
        res = cfg.data.resolution
        use_patch = sc.patch_scale > 1 and torch.rand((), generator=gen).item() < sc.patch_prob
        cam, (image, mask) = random_window(portrait_camera(batch["camera"]), [batch["image"], batch["mask"]], res,
                                           sc.patch_scale if use_patch else 1, gen)
        entries = batch.get("pose_entries")
        pose_volume = G.pose_volume_from_entries(entries) if entries is not None else None
        scene = G.training_scene(latents, controls, pose_volume=pose_volume)
        out = G.render_scene(scene, cam, res)
        image_terms = {"image": (out.image_lr - image).abs().mean(), "alpha": (out.alpha_lr - mask).abs().mean(),
                       "grad": L.image_gradient_l1(out.image_lr, image)}
        if sc.multiview > 0:
            image_terms["multiview"] = multiview_term(G, scene, cam, out, res, sc.multiview_yaw, gen) \
                if not use_patch else out.image_lr.new_zeros(())
        if sc.face > 0 or sc.face_depth > 0:
            fres = cfg.data.face_resolution
            face_scale = min(sc.face_patch_scale, batch["face"].shape[-1] // fres)
            use_face_patch = face_scale > 1 and torch.rand((), generator=gen).item() < sc.face_patch_prob
            fcam, (face,) = random_window(face_camera(batch["face_camera"]), [batch["face"]], fres,
                                          face_scale if use_face_patch else 1, gen)
            face_out = G.render_scene(scene, fcam, fres)
            face_err = (face_out.image_lr - face).abs()
            if sc.face_mouth_weight != 1.0:
                with torch.no_grad():
                    w = mouth_weight_map(face_landmarks_uv(G, batch, fcam)[:, MOUTH_LANDMARKS], fres,
                                         sc.face_mouth_weight)
                face_err = face_err * w / w.mean()
            image_terms["face"] = face_err.mean()
            if sc.face_grad > 0:
                image_terms["face_grad"] = L.image_gradient_l1(face_out.image_lr, face)
            if sc.face_depth > 0:
                image_terms["face_depth"] = face_depth_term(G, batch, fcam, face_out, fres, sc.face_depth_alpha)
        reg = regulariser_terms(G, cfg.loss, batch["identity"], batch["expression"], batch["body_shape"],
                                batch["pose"], gen, control_range, entries)
        return {**image_terms, **reg, "total": weighted(image_terms, sc) + weighted(reg, cfg.loss),
                "patch": torch.tensor(float(use_patch))}

    @staticmethod
    def superres_terms(G, cfg, batch: dict[str, Tensor], gen: torch.Generator) -> dict[str, Tensor]:
        """Stage 2: everything but the super-resolution frozen and evaluated as an avatar does (level textures and
        manifold grid baked without gradients); the super-resolved image regressed onto the data at its full
        density - a random window of the portrait (``2 * data.resolution`` pixels from ``data.resolution`` rays)
        and the whole face crop (its own size, from half as many rays): L1 on image, alpha, image gradients, face
        and face gradients. Plus ``total``."""
        import dataclasses

        from portrait_core.generator.generator import SceneFields

        sc, res = cfg.supervised, cfg.data.resolution
        latents = Latents(batch["identity"], batch["appearance"])
        controls = Controls(batch["pose"], batch["expression"], batch["body_shape"])
        sr = G.cfg.superres.scale
        with torch.no_grad():
            textures = G.bake_textures(G.radiance_styles(latents))
            scene = SceneFields(pose_volume=G.pose_volume(G.body.posed(controls.body_shape, controls.pose)),
                                expression_fields=G.expression_fields_fn(latents.identity, controls.expression),
                                manifold=G.baked_manifold_fn(), radiance=G.texture_radiance_fn(textures),
                                face_detail=G.face_detail_fn(latents, controls.body_shape))
        hr_textures = G.super_resolve_textures(textures, G.superres_styles(latents))
        scene = dataclasses.replace(scene, radiance_hr=G.texture_radiance_fn(hr_textures))
        res_hr = sr * res
        cam, (image, mask) = random_window(portrait_camera(batch["camera"]), [batch["image"], batch["mask"]],
                                           res_hr, max(1, batch["image"].shape[-1] // res_hr), gen)
        out = G.render_scene(scene, cam, res, super_resolve=True)
        terms = {"image": (out.image - image).abs().mean(), "alpha": (out.alpha - mask).abs().mean(),
                 "grad": L.image_gradient_l1(out.image, image)}
        if sc.face > 0:
            face = batch["face"]
            face_out = G.render_scene(scene, face_camera(batch["face_camera"]), face.shape[-1] // sr,
                                      super_resolve=True)
            terms["face"] = (face_out.image - face).abs().mean()
            terms["face_grad"] = L.image_gradient_l1(face_out.image, face)
        terms["total"] = weighted(terms, sc)
        return terms


def face_depth_term(G, batch: dict[str, Tensor], camera, out, res: int, alpha_min: float = 0.5) -> Tensor:
    """Mean |rendered depth - 3DMM depth| (metres) over the inner-face pixels of a face-camera render ``out``
    (camera ``camera``, ``res``²) that the record's 3DMM covers and the render sees (alpha > ``alpha_min``):
    :mod:`portrait_core.metrics.face_surface` as a loss."""
    from portrait_core.metrics import face_surface as FS
    from portrait_core.metrics.consistency import mean_over

    target, covered = FS.face_depth_target(G.face, G.body, camera, batch["identity"], batch["expression"],
                                           batch["body_shape"], batch["pose"], res)
    gap, mask = FS.surface_gap(out.depth_lr, out.alpha_lr, target, covered, alpha_min)
    return mean_over(gap.abs(), mask)


def multiview_term(G, scene, cam, out, res: int, yaw_offset: float, gen: torch.Generator) -> Tensor:
    """Mean |colour difference| between a whole-portrait render ``out`` (camera ``cam``) reprojected through its
    detached depth and a second render of ``scene`` from ``yaw_offset`` radians of camera yaw to a random side."""
    from portrait_core import conventions as C
    from portrait_core.geometry.camera import Camera
    from portrait_core.metrics.consistency import mean_over, reprojection_difference

    pitch, yaw, _ = cam.orbit_params(C.PORTRAIT_LOOK_AT)
    side = 1.0 if torch.rand((), generator=gen).item() < 0.5 else -1.0
    cam_b = Camera.portrait(yaw + side * yaw_offset, pitch)
    out_b = G.render_scene(scene, cam_b, res)
    diff, visible = reprojection_difference(out.image_lr, out.depth_lr, out.alpha_lr, cam, out_b.image_lr,
                                            out_b.depth_lr, cam_b)
    return mean_over(diff, visible)


def imitation_warmup(G, cfg, data, gen: torch.Generator, log=print, batch: int = 8) -> dict[str, float]:
    """Fit only the expression branch (deformation network + expression mapping) to the 3DMM before training:
    ``loss.imitation_warmup`` render-free steps of the weighted regularisers on the training labels' identities
    and expressions (cosine learning rate from ``optim.lr_g`` to 10 %). ``data``: a ``LabelTable``-like object
    (identity, expression, body_shape). Returns the last terms."""
    lc = cfg.loss
    params = [*G.expression_deform.parameters(), *G.expression_mapping.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.optim.lr_g, betas=(0.9, 0.99))
    n = data.identity.shape[0]
    control_range = None
    if lc.imitation_sweep_fraction > 0:
        from portrait_core.face import EXPRESSION_NAMES

        named = data.expression[:, :len(EXPRESSION_NAMES)]
        control_range = (named.amin(0), named.amax(0))
    terms: dict[str, Tensor] = {}
    device = next(G.parameters()).device
    for k in range(lc.imitation_warmup):
        for g in opt.param_groups:
            g["lr"] = cfg.optim.lr_g * S.cosine_lr_factor(k, lc.imitation_warmup, 0.1, 0)
        idx = torch.randint(n, (batch,), generator=gen)
        terms = regulariser_terms(G, lc, data.identity[idx].to(device), data.expression[idx].to(device),
                                  data.body_shape[idx].to(device), None, gen, control_range)
        total = weighted(terms, lc)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        if (k + 1) % 500 == 0 or k + 1 == lc.imitation_warmup:
            log(f"imitation warm-up {k + 1}/{lc.imitation_warmup}: " +
                " ".join(f"{n}={float(v.detach()):.4g}" for n, v in terms.items()))
    G.zero_grad(set_to_none=True)
    return {n: float(v.detach()) for n, v in terms.items()}


OBJECTIVES = {"adversarial": AdversarialObjective, "supervised": SupervisedObjective}
