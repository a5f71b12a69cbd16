"""Supervised warm start: fit the generator directly to a fully labelled synthetic dataset (SynthPortrait).

``python -m train.supervised --data DIR --preset small --steps N --out RUN [options]``

SynthPortrait labels everything that made each render, so the generator can be regressed onto the images instead
of learning them adversarially (which needs far more compute than a CPU has):

* identity latent = the record's 3DMM identity coefficients;
* noise latent    = the deterministic 80-d appearance code of :mod:`portrait_core.assets.appearance` (skin, hair
  colour, one-hot hair style / clothing pattern / neckline from ``extra``, plus the clothing colour and contrast
  measured in the renders of the same identity), zero-padded;
* controls        = the labelled pose, expression and body shape;
* camera          = the labelled portrait camera (portrait depth range), and the labelled face camera for the face
  crop.

Losses (weights on the command line): L1 on the ray-resolution image and alpha against area-downsampled targets
(full frames, or with probability ``--patch-prob`` a random window at ``--patch-scale`` times the density, so
detail is supervised at the cost of a small render), an L1 on image gradients, L1 on the face-camera render vs the
face crop, and the training package's deformation regularisers (``train.losses``: 3DMM imitation, expression
smoothness, minimal deformation, pose-grid smoothness). Super-resolution is not trained here (it starts as a
near-bilinear upsampler; see ``StyleRRDBNet``).

The run folder gets ``state.pt`` (resumable: generator, optimizer, step, RNG), ``generator.safetensors`` (a
``portrait_core.generator`` checkpoint whose ``info`` records the method and the appearance layout),
``samplers.safetensors`` (:class:`portrait_core.assets.DefaultSamplers` tables of the training labels),
``log.jsonl``, ``eval.json`` (held-out metrics) and ``samples/*.png`` (held-out target | render | alpha).
Re-running with the same ``--out`` resumes. ``--eval-only`` just evaluates ``generator.safetensors``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from portrait_core import conventions as C
from portrait_core.assets import DefaultSamplers
from portrait_core.assets.appearance import APPEARANCE_LAYOUT, USED_DIMS, appearance_code, clothing_colour_stats
from portrait_core.face import EXPRESSION_NAMES
from portrait_core.generator import Controls, Generator, Latents, generator_config, load_generator, save_generator
from portrait_core.generator import rendering as R
from portrait_core.generator.checkpoint import transfer_weights
from portrait_core.generator.generator import SceneFields
from portrait_core.geometry.camera import Camera
from train import losses as L

__all__ = ["SupervisedData", "SupervisedConfig", "build_parser", "main", "train_supervised", "evaluate_heldout",
           "portrait_camera", "face_camera", "window_camera", "downsample"]

METHOD = "busto-supervised-warm-start"


# ------------------------------------------------------------------------------------------------- data
class SupervisedData:
    """All images, masks, face crops, labels and appearance codes of one or more Busto-format datasets, held in
    memory (several roots are concatenated in order; identities never span roots).

    ``holdout``: how many identities (by ``extra.identity_index``, else per record) to keep out of training, the
    last ones of the last root. Records without ``extra`` get the neutral description (grey clothing) and a
    warning."""

    def __init__(self, root: str | os.PathLike | list, holdout: int = 0, limit: int | None = None):
        from PIL import Image

        from portrait_core.data.labels import load_labels_json

        roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
        if not roots:
            raise ValueError("SupervisedData: no dataset root given")
        self.roots = roots
        self.root = roots[0]
        recs, rec_root = [], []
        for r in roots:
            doc = load_labels_json(r / "labels.json")
            found = list(doc.get("images") or [])
            if not found:
                raise ValueError(f"{r}/labels.json has no image records")
            if r == roots[0]:
                self.info = doc.get("info", {})
            recs += found
            rec_root += [r] * len(found)
        if limit:
            recs, rec_root = recs[:limit], rec_root[:limit]
        imgs, masks, faces = [], [], []
        for r, rt in zip(recs, rec_root):
            img = np.asarray(Image.open(rt / r["image"]).convert("RGB"))
            mask = np.asarray(Image.open(rt / r["mask"]).convert("L")) if r.get("mask") else \
                np.full(img.shape[:2], 255, np.uint8)
            if not r.get("face"):
                raise ValueError(f"{rt}: record {r.get('name')} has no face crop (the supervised warm start "
                                 f"needs the face-camera renders)")
            face = np.asarray(Image.open(rt / r["face"]).convert("RGB"))
            imgs.append(img)
            masks.append(mask)
            faces.append(face)
        if len({i.shape for i in imgs}) != 1 or len({f.shape for f in faces}) != 1:
            raise ValueError(f"{', '.join(map(str, roots))}: images (and face crops) must all have one size")
        self.image = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, H, W]
        self.mask = torch.from_numpy(np.stack(masks))[:, None].contiguous()  # uint8 [N, 1, H, W]
        self.face = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).contiguous()
        f32 = lambda k: torch.tensor(np.asarray([r[k] for r in recs], dtype=np.float32))  # noqa: E731
        self.camera, self.face_camera = f32("camera"), f32("face_camera")
        self.pose, self.expression = f32("pose"), f32("expression")
        self.identity, self.body_shape = f32("identity"), f32("body_shape")
        # identities: records of one root sharing extra.identity_index (views of one avatar)
        keys = []
        for i, (r, rt) in enumerate(zip(recs, rec_root)):
            extra = r.get("extra") or {}
            keys.append((str(rt), extra.get("identity_index", f"record{i}")))
        order = list(dict.fromkeys(keys))
        position = {k: n for n, k in enumerate(order)}
        self.identity_of = torch.tensor([position[k] for k in keys])
        self.num_identities = len(order)
        self.appearance = self._codes(recs, imgs, masks)
        held = set(range(max(0, self.num_identities - holdout), self.num_identities)) if holdout else set()
        is_held = torch.tensor([int(k) in held for k in self.identity_of.tolist()])
        self.train_index = torch.nonzero(~is_held)[:, 0]
        self.heldout_index = torch.nonzero(is_held)[:, 0]
        if self.train_index.numel() == 0:
            raise ValueError(f"holdout={holdout} leaves no training images ({self.num_identities} identities)")
        self.names = [r.get("name", str(i)) for i, r in enumerate(recs)]

    def _codes(self, recs, imgs, masks) -> Tensor:
        """[N, 80] appearance codes; clothing colour statistics averaged over each identity's views."""
        stats = [clothing_colour_stats(im, m) for im, m in zip(imgs, masks)]
        n_id = self.num_identities
        mean = np.zeros((n_id, 3))
        spread = np.zeros((n_id, 3))
        count = np.zeros(n_id)
        for k, (mu, sd) in zip(self.identity_of.tolist(), stats):
            mean[k] += mu
            spread[k] += sd
            count[k] += 1
        mean /= count[:, None]
        spread /= count[:, None]
        codes, missing = [], 0
        for i, r in enumerate(recs):
            extra = r.get("extra")
            if not extra or "skin" not in extra:
                missing += 1
                extra = {"skin": [0.7, 0.55, 0.45], "hair_colour": [0.1, 0.08, 0.08], "hair_style": "short",
                         "clothing": "solid", "neckline": "crew"}
            k = int(self.identity_of[i])
            codes.append(appearance_code(extra, mean[k], spread[k]))
        if missing:
            import warnings

            warnings.warn(f"{self.root}: {missing} record(s) have no appearance description in 'extra'; they use "
                          f"a neutral one (only the measured clothing colour differs)", stacklevel=3)
        return torch.from_numpy(np.stack(codes))

    def __len__(self) -> int:
        return self.image.shape[0]

    @property
    def resolution(self) -> int:
        return self.image.shape[-1]

    def control_range(self, components: int = len(EXPRESSION_NAMES)) -> tuple[Tensor, Tensor]:
        """(low, high) [components]: the range the training labels reach in the leading expression components
        (the named controls of the synthetic 3DMM), for :func:`sweep_expressions`."""
        labels = self.expression[self.train_index, :components]
        return labels.amin(0), labels.amax(0)

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        """Float tensors for records ``idx``: image/face in [-1, 1], mask in [0, 1], labels, appearance."""
        return {"image": self.image[idx].float() / 127.5 - 1, "mask": self.mask[idx].float() / 255,
                "face": self.face[idx].float() / 127.5 - 1, "camera": self.camera[idx],
                "face_camera": self.face_camera[idx], "pose": self.pose[idx], "expression": self.expression[idx],
                "identity": self.identity[idx], "body_shape": self.body_shape[idx],
                "appearance": self.appearance[idx]}

    def samplers(self, index: Tensor | None = None) -> DefaultSamplers:
        """Label-sampler tables of records ``index`` (default: the training split): one (identity, body shape,
        appearance) row per identity, one (camera, pose, expression) row per image."""
        index = self.train_index if index is None else index
        first = {}
        for i in index.tolist():
            first.setdefault(int(self.identity_of[i]), i)
        rows = torch.tensor(sorted(first.values()))
        return DefaultSamplers(identity=self.identity[rows], body_shape=self.body_shape[rows],
                               appearance=self.appearance[rows], camera=self.camera[index], pose=self.pose[index],
                               expression=self.expression[index])


# ---------------------------------------------------------------------------------------------- cameras
def portrait_camera(label: Tensor) -> Camera:
    """Portrait camera of 25-float labels, depth range radius -/+ PORTRAIT_DEPTH_HALF_RANGE about the look-at point
    (the same rule as the GAN training loop)."""
    cam = Camera.from_label25(label)
    r = (cam.origin - cam.origin.new_tensor(C.PORTRAIT_LOOK_AT)).norm(dim=-1)
    return cam.with_near_far(r - C.PORTRAIT_DEPTH_HALF_RANGE, r + C.PORTRAIT_DEPTH_HALF_RANGE)


def face_camera(label: Tensor) -> Camera:
    """Face camera of 25-float labels (it orbits the posed face centre at FACE_RADIUS)."""
    cam = Camera.from_label25(label)
    return cam.with_near_far(C.FACE_RADIUS - C.FACE_DEPTH_HALF_RANGE, C.FACE_RADIUS + C.FACE_DEPTH_HALF_RANGE)


def window_camera(cam: Camera, u0: Tensor, v0: Tensor, size: Tensor | float) -> Camera:
    """The camera whose full frame is the window [u0, u0 + size] x [v0, v0 + size] (normalised image
    coordinates, per batch entry) of ``cam``'s frame: fx' = fx / size, cx' = (cx - u0) / size (same for y)."""
    K = cam.intrinsics.clone()
    size = torch.as_tensor(size, dtype=K.dtype, device=K.device).expand(K.shape[0])
    K[:, 0, 0] = K[:, 0, 0] / size
    K[:, 0, 1] = K[:, 0, 1] / size
    K[:, 1, 1] = K[:, 1, 1] / size
    K[:, 0, 2] = (K[:, 0, 2] - u0) / size
    K[:, 1, 2] = (K[:, 1, 2] - v0) / size
    return Camera(cam.cam2world, K, cam.near, cam.far)


def random_window(cam: Camera, images: list[Tensor], res: int, scale: int,
                  gen: torch.Generator) -> tuple[Camera, list[Tensor]]:
    """Training targets at ``res``^2 rays. ``scale`` 1: the whole frame, images area-downsampled to ``res``.
    ``scale`` k > 1: per batch entry a random ``res``^2 window of the frame at ``k * res``^2 pixel density, with
    the camera whose full frame is that window (:func:`window_camera`) and the matching crops of ``images``."""
    if scale <= 1:
        return cam, [downsample(x, res) for x in images]
    b, eff = images[0].shape[0], res * scale
    i0 = torch.randint(eff - res + 1, (b,), generator=gen)
    j0 = torch.randint(eff - res + 1, (b,), generator=gen)
    rows = (i0[:, None] + torch.arange(res)[None])[:, :, None]  # [B, res, 1]
    cols = (j0[:, None] + torch.arange(res)[None])[:, None, :]  # [B, 1, res]
    bi = torch.arange(b)[:, None, None]
    crops = [downsample(x, eff).permute(0, 2, 3, 1)[bi, rows, cols].permute(0, 3, 1, 2) for x in images]
    return window_camera(cam, j0.float() / eff, i0.float() / eff, res / eff), crops


MOUTH_LANDMARKS = slice(48, 68)
"""iBUG-68 outer and inner lip landmarks."""


def face_landmarks_uv(G: Generator, batch: dict[str, Tensor], camera: Camera) -> Tensor:
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


def downsample(x: Tensor, size: int) -> Tensor:
    """Area (box) downsampling [B, C, H, W] -> [B, C, size, size] (antialiased bicubic when not a divisor)."""
    if x.shape[-1] == size:
        return x
    if x.shape[-1] % size == 0:
        return F.avg_pool2d(x, x.shape[-1] // size)
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


# ----------------------------------------------------------------------------------------------- config
@dataclass
class SupervisedConfig:
    data: str | list[str]
    out: str
    preset: str = "small"
    generator_overrides: str = "{}"
    steps: int = 1000
    batch: int = 4
    resolution: int = 32
    face_resolution: int = 24
    patch_prob: float = 0.5
    patch_scale: int = 2
    face_patch_prob: float = 0.0
    face_patch_scale: int = 2
    face_mouth_weight: float = 1.0
    lr: float = 5e-4
    lr_manifold_scale: float = 0.3
    lr_colour_head_scale: float = 1.0
    lr_min_fraction: float = 0.1
    w_image: float = 1.0
    w_alpha: float = 1.0
    w_grad: float = 0.2
    w_face: float = 0.5
    w_face_grad: float = 0.0
    w_imitation: float = 1e4  # metres^2 -> a (1 cm)^2 error costs 1
    w_smooth_expression: float = 0.05
    w_minimal_deformation: float = 100.0
    w_shading: float = 0.01
    w_shading_imitation: float = 0.0
    w_smooth_pose: float = 1.0
    reg_points: int = 128
    imitation_moving_fraction: float = 0.0
    imitation_sweep_fraction: float = 0.0
    smooth_jitter: float = 0.01
    holdout: int = 16
    seed: int = 0
    threads: int = 2
    minutes: float = 0.0
    save_every_s: float = 300.0
    sample_every: int = 50
    eval_resolution: int = 64
    init: str = ""
    stage: str = "radiance"
    imitation_warmup: int = 0
    limit: int = 0


STAGES = {"radiance": ("mapping", "manifold", "radiance", "colour_head", "deform", "smoother"),
          "superres": ("superres", "superres_mapping")}
"""What each ``--stage`` trains (``Generator.param_groups`` names): ``radiance`` the whole generator at ray
resolution but the super-resolution; ``superres`` only the super-resolution, on the data at full density."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.supervised", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = SupervisedConfig(data="", out="")
    p.add_argument("--data", required=True, nargs="+", metavar="DIR",
                   help="Busto-format dataset(s) with full labels (SynthPortrait); several are concatenated")
    p.add_argument("--out", required=True, help="run folder (resumes if it holds state.pt)")
    p.add_argument("--preset", default=d.preset, help="generator preset: tiny, small, paper")
    p.add_argument("--generator-overrides", default=d.generator_overrides,
                   help="JSON dict of generator config overrides, e.g. '{\"render\": {\"samples_per_ray\": 24}}'")
    p.add_argument("--steps", type=int, default=d.steps, help="total optimisation steps")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--resolution", type=int, default=d.resolution, help="training ray resolution (portrait)")
    p.add_argument("--face-resolution", type=int, default=d.face_resolution, help="training face-camera resolution")
    p.add_argument("--patch-prob", type=float, default=d.patch_prob,
                   help="probability of a step on random windows instead of full frames")
    p.add_argument("--patch-scale", type=int, default=d.patch_scale,
                   help="windows are rendered at this many times the full-frame pixel density")
    p.add_argument("--face-patch-prob", type=float, default=d.face_patch_prob,
                   help="probability that the face-camera term uses random windows instead of the whole crop")
    p.add_argument("--face-patch-scale", type=int, default=d.face_patch_scale,
                   help="face windows' pixel density over --face-resolution (capped by the face crops' size)")
    p.add_argument("--face-mouth-weight", type=float, default=d.face_mouth_weight,
                   help="weight of the face-camera L1 inside the box around the projected 3DMM lip landmarks (1: "
                        "uniform); the open mouth and the lips are what makes an expression visible")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-manifold-scale", type=float, default=d.lr_manifold_scale)
    p.add_argument("--lr-colour-head-scale", type=float, default=d.lr_colour_head_scale,
                   help="learning-rate factor of the modulated colour head (radiance.modulated_colour)")
    p.add_argument("--lr-min-fraction", type=float, default=d.lr_min_fraction,
                   help="cosine decay of the learning rate to this fraction at --steps")
    for name in ("image", "alpha", "grad", "face", "face_grad", "imitation", "smooth_expression", "minimal_deformation",
                 "smooth_pose", "shading", "shading_imitation"):
        p.add_argument(f"--w-{name.replace('_', '-')}", type=float, default=getattr(d, f"w_{name}"),
                       dest=f"w_{name}")
    p.add_argument("--reg-points", type=int, default=d.reg_points)
    p.add_argument("--imitation-moving-fraction", type=float, default=d.imitation_moving_fraction,
                   help="fraction of the imitation vertices drawn where the 3DMM moves (rest: uniform)")
    p.add_argument("--imitation-sweep-fraction", type=float, default=d.imitation_sweep_fraction,
                   help="fraction of the deformation regularisers' expressions replaced by one named control alone, "
                        "uniform over the range its labels reach (see sweep_expressions)")
    p.add_argument("--holdout", type=int, default=d.holdout, help="identities held out for evaluation")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--minutes", type=float, default=d.minutes, help="wall-clock budget (0: none); saves and stops")
    p.add_argument("--save-every-s", type=float, default=d.save_every_s)
    p.add_argument("--sample-every", type=int, default=d.sample_every, help="steps between sample grids (0: never)")
    p.add_argument("--eval-resolution", type=int, default=d.eval_resolution)
    p.add_argument("--init", default=d.init, help="initialise from a generator checkpoint (.safetensors)")
    p.add_argument("--stage", default=d.stage, choices=["radiance", "superres"],
                   help="radiance: train the generator at ray resolution (super-resolution untouched); superres: "
                        "train only the super-resolution on the data at full density (the rest frozen)")
    p.add_argument("--imitation-warmup", type=int, default=d.imitation_warmup, metavar="STEPS",
                   help="before the first step, fit only the expression branch (deformation + its mapping) to the "
                        "3DMM for this many cheap render-free steps (imitation, smoothness, minimal deformation)")
    p.add_argument("--limit", type=int, default=d.limit, help="use only the first N records (0: all)")
    p.add_argument("--eval-only", action="store_true", help="evaluate OUT/generator.safetensors and exit")
    p.add_argument("--eval-images", type=int, default=0, help="with --eval-only: evaluate only the first N "
                   "held-out images (0: all)")
    p.add_argument("--baselines", action="store_true", help="with --eval-only: also score a white image, the "
                   "mean training image and an untrained generator of the same config on the same images")
    p.add_argument("--export", default="", metavar="DIR",
                   help="with --eval-only: also write DIR/default.safetensors (the metrics added to its info) and "
                        "DIR/default_samplers.safetensors")
    return p


# ----------------------------------------------------------------------------------------------- losses
def image_gradient_l1(pred: Tensor, target: Tensor) -> Tensor:
    """L1 between horizontal and vertical finite differences of two images [B, C, H, W]."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return (dx(pred) - dx(target)).abs().mean() + (dy(pred) - dy(target)).abs().mean()


def sweep_expressions(expression: Tensor, low: Tensor, high: Tensor, fraction: float,
                      gen: torch.Generator) -> Tensor:
    """[B, 64] label expressions with ``fraction`` of the rows replaced by a single slider move: one of the
    leading K components (``low``/``high`` [K], the range the training labels reach) at a value uniform in its
    range, the others 0. The labels cluster near neutral (a smile of 2.5 is a 2-sigma label), and with all
    components at once the large jaw offsets dominate the imitation, so the smaller controls fall short of the
    3DMM at the ends of their sliders; these rows fit each control alone over its whole range."""
    if fraction <= 0:
        return expression
    b, k = expression.shape[0], low.shape[0]
    rows = torch.rand(b, generator=gen) < fraction
    comp = torch.randint(k, (b,), generator=gen)
    value = low[comp] + torch.rand(b, generator=gen) * (high[comp] - low[comp])
    sweep = torch.zeros_like(expression)
    sweep[torch.arange(b), comp] = value.to(expression)
    return torch.where(rows[:, None], sweep, expression)


def imitation_vertices(offsets: Tensor, n: int, moving_fraction: float, gen: torch.Generator) -> Tensor:
    """``n`` 3DMM vertex indices per image for the imitation term, [B, n] long: ``moving_fraction`` of them drawn
    with probability proportional to that image's offset length (the lips, jaw and mouth corners that make an
    expression visible are a few percent of the face; per image, so a smile's corners are not drowned by another
    image's open jaw), the rest uniformly (shared by the batch). offsets [B, N, 3]."""
    b, count = offsets.shape[:2]
    n_moving = int(round(n * moving_fraction))
    uniform = torch.randint(count, (1, n - n_moving), generator=gen).expand(b, -1)
    weight = offsets.norm(dim=-1)
    still = ~(weight.amax(1) > 0)  # nothing moves (a neutral image): all uniform
    weight = torch.where(still[:, None], torch.ones_like(weight), weight)
    moving = torch.multinomial(weight, n_moving, replacement=True, generator=gen) if n_moving else uniform[:, :0]
    return torch.cat([moving, uniform], 1)


INNER_LIPS = list(range(60, 68))
"""iBUG-68 inner-lip contour (60 and 64 are the corners)."""


def inside_polygon(points: Tensor, polygon: Tensor) -> Tensor:
    """Even-odd test of 2D points [B, P, 2] against closed polygons [B, K, 2] -> [B, P] bool (vectorised over
    edges)."""
    a = polygon[:, None, :, :]  # [B, 1, K, 2]
    b = polygon.roll(-1, dims=1)[:, None, :, :]
    p = points[:, :, None, :]  # [B, P, 1, 2]
    straddles = (a[..., 1] > p[..., 1]) != (b[..., 1] > p[..., 1])
    dy = b[..., 1] - a[..., 1]
    x_cross = a[..., 0] + (p[..., 1] - a[..., 1]) * (b[..., 0] - a[..., 0]) / torch.where(dy == 0, torch.ones_like(dy), dy)
    return ((straddles & (p[..., 0] < x_cross)).sum(-1) % 2) == 1


def mouth_interior_shading(G: Generator, identity: Tensor, expression: Tensor, body_shape: Tensor, n: int,
                           gen: torch.Generator, logit: float = 3.0, depth: float = 0.04) -> tuple[Tensor, Tensor]:
    """The 3DMM's open mouth as a shading target: ``n`` canonical-pose points [B, n, 3] around each expressive
    mouth (uniform in the box of the lip landmarks, widened 1 cm, from 1 cm in front of the lips to ``depth``
    behind them) and their target shading logits [B, n]: ``logit`` (dark) where a point lies inside the inner-lip
    contour seen from the front (+Z), behind the lip line and outside the neutral expression's contour, 0
    elsewhere; so the neutral target is 0, as the shading itself is."""
    lm = G.face.landmarks(identity, expression)  # [B, 68, 3], face frame
    lips = lm[:, 48:68]
    lo, hi = lips.amin(1) - 0.01, lips.amax(1) + 0.01
    lo = torch.cat([lo[:, :2], lips[:, :, 2].amax(1, keepdim=True) - depth], -1)
    u = torch.rand(1, n, 3, generator=gen).to(lo)
    pts = lo[:, None] + u * (hi - lo)[:, None]
    inner = lm[:, INNER_LIPS]
    lip_line = inner[:, :, 2].amax(1, keepdim=True)  # the front of the inner lips
    inside = inside_polygon(pts[..., :2], inner[..., :2]) & (pts[..., 2] <= lip_line)
    neutral = G.face.landmarks(identity, torch.zeros_like(expression))[:, INNER_LIPS]
    inside &= ~inside_polygon(pts[..., :2], neutral[..., :2])  # what the expression opens (a neutral slit is not)
    T = G.body.face_transform(body_shape)
    canonical = pts @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
    return canonical, inside.to(pts.dtype) * logit


def deformation_regularisers(G: Generator, identity: Tensor, expression: Tensor, body_shape: Tensor,
                             pose: Tensor | None, n: int, jitter: float, gen: torch.Generator,
                             moving_fraction: float = 0.0, shading_imitation: bool = True) -> dict[str, Tensor]:
    """3DMM imitation at 3DMM vertices (:func:`imitation_vertices`), expression smoothness and minimal deformation
    at random head-box points, the expression shading's sparsity there and (``shading_imitation``) its fit to the
    3DMM's open mouth (:func:`mouth_interior_shading`; both with ``expression.shading``), and (when ``pose`` is
    given) the pose-grid smoothness - the GAN loop's regularisers, via train.losses."""
    b = identity.shape[0]
    face = G.face
    with torch.no_grad():
        all_offsets = face.expression_offsets(identity, expression)
        idx = imitation_vertices(all_offsets, n, moving_fraction, gen)[..., None].expand(-1, -1, 3)
        verts = face.vertices(identity, expression).gather(1, idx)
        offsets = all_offsets.gather(1, idx)
        T = G.body.face_transform(body_shape)
        pts = verts @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
        target = -(offsets @ T[:, :3, :3].transpose(1, 2))
        box = G.head_box_centre + (torch.rand(1, n, 3, generator=gen) * 2 - 1) * G.head_box_half
        box = box.expand(b, -1, -1)
        jit = torch.randn(1, 2 * n, 3, generator=gen).expand(b, -1, -1) * jitter
    all_pts = torch.cat([pts, box], 1)
    fields = G.expression_fields(torch.cat([all_pts, all_pts + jit], 1), identity, expression)
    delta, delta_j = fields[:, :2 * n, :3], fields[:, 2 * n:, :3]
    out = {"imitation": L.imitation(delta[:, :n], target), "smooth_expression": L.smoothness(delta, delta_j, jitter),
           "minimal_deformation": L.minimal_deformation(delta[:, n:])}
    if fields.shape[-1] > 3:
        out["shading"] = L.shading_sparsity(fields[:, n:2 * n, 3])
    if fields.shape[-1] > 3 and shading_imitation:
        with torch.no_grad():
            mouth_pts, mouth_target = mouth_interior_shading(G, identity, expression, body_shape, n, gen)
        pred = G.expression_fields(mouth_pts, identity, expression)[..., 3]
        out["shading_imitation"] = (pred - mouth_target).square().mean()
    if pose is not None:
        out["smooth_pose"] = L.grid_smoothness(G.pose_volume(G.body.posed(body_shape, pose)))
    return out


def pose_entries(G: Generator, body_shape: Tensor, pose: Tensor) -> Tensor:
    """The label-only part of ``Generator.pose_volume``: inverse-LBS affine entries on the posed-space grid,
    [B, 12, G, G, G] (no learnable parameters, so they are cached per record)."""
    g = G.cfg.render.pose_grid
    nodes = R.grid_points(G.pose_box_centre, G.cfg.pose.box_half_extent, g)
    b = pose.shape[0]
    with torch.no_grad():
        state = G.body.posed(body_shape, pose)
        transforms = G.body.inverse_lbs(state, nodes.reshape(1, -1, 3).expand(b, -1, -1).contiguous())
        entries = R.affine_entries(transforms.to(nodes.dtype)).reshape(b, g, g, g, 12).permute(0, 4, 1, 2, 3)
    return entries.contiguous()


def pose_volume_from_entries(G: Generator, entries: Tensor) -> Tensor:
    """``Generator.pose_volume`` from cached :func:`pose_entries` (the learnable smoother is applied here; the
    tests check that this equals ``G.pose_volume``)."""
    g = G.cfg.render.pose_grid
    nodes = R.grid_points(G.pose_box_centre, G.cfg.pose.box_half_extent, g)
    smoothed = G.pose_smoother(entries).permute(0, 2, 3, 4, 1)
    displacement = R.apply_affine(smoothed, nodes.expand(entries.shape[0], -1, -1, -1, -1)) - nodes
    return displacement.permute(0, 4, 1, 2, 3).contiguous()


def training_scene(G: Generator, latents: Latents, controls: Controls, entries: Tensor | None = None) -> SceneFields:
    """The differentiable scene of ``Generator.forward`` (network radiance, direct manifold, per-frame pose and
    expression grids), built once so that the portrait and the face camera share it."""
    if entries is None:
        entries = pose_entries(G, controls.body_shape, controls.pose)
    return SceneFields(pose_volume=pose_volume_from_entries(G, entries),
                       expression_fields=G.expression_fields_fn(latents.identity, controls.expression),
                       manifold=G.manifold, radiance=G.network_radiance_fn(G.radiance_styles(latents)))


def superres_losses(G: Generator, cfg: SupervisedConfig, batch: dict[str, Tensor], gen: torch.Generator
                    ) -> dict[str, Tensor]:
    """Loss terms of the super-resolution stage (``--stage superres``) plus ``total``: everything but the
    super-resolution is frozen and evaluated as an avatar does (level textures and manifold grid baked without
    gradients), and the super-resolved image is regressed onto the data at its full pixel density - a random
    window of the portrait (``2 * resolution`` pixels, ``resolution`` rays) and the whole face crop (its own
    size, half as many rays): L1 on image, alpha and image gradients, face L1 and face gradients."""
    latents = Latents(batch["identity"], batch["appearance"])
    controls = Controls(batch["pose"], batch["expression"], batch["body_shape"])
    sr = G.cfg.superres.scale
    with torch.no_grad():
        textures = G.bake_textures(G.radiance_styles(latents))
        scene = SceneFields(pose_volume=G.pose_volume(G.body.posed(controls.body_shape, controls.pose)),
                            expression_fields=G.expression_fields_fn(latents.identity, controls.expression),
                            manifold=G.baked_manifold_fn(), radiance=G.texture_radiance_fn(textures))
    hr_textures = G.super_resolve_textures(textures, G.superres_styles(latents))
    scene = dataclasses.replace(scene, radiance_hr=G.texture_radiance_fn(hr_textures))
    res_hr = sr * cfg.resolution
    cam, (image, mask) = random_window(portrait_camera(batch["camera"]), [batch["image"], batch["mask"]], res_hr,
                                       max(1, batch["image"].shape[-1] // res_hr), gen)
    out = G.render_scene(scene, cam, cfg.resolution, super_resolve=True)
    terms = {"image": (out.image - image).abs().mean(), "alpha": (out.alpha - mask).abs().mean(),
             "grad": image_gradient_l1(out.image, image)}
    if cfg.w_face > 0:
        face = batch["face"]
        face_out = G.render_scene(scene, face_camera(batch["face_camera"]), face.shape[-1] // sr, super_resolve=True)
        terms["face"] = (face_out.image - face).abs().mean()
        terms["face_grad"] = image_gradient_l1(face_out.image, face)
    terms["total"] = sum(getattr(cfg, f"w_{k}") * v for k, v in terms.items())
    return terms


def supervised_losses(G: Generator, cfg: SupervisedConfig, batch: dict[str, Tensor], step: int,
                      gen: torch.Generator, control_range: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
    """Unweighted loss terms of one step plus ``total`` (weighted); ``control_range`` (``SupervisedData.
    control_range()``) is needed when ``cfg.imitation_sweep_fraction`` > 0."""
    latents = Latents(batch["identity"], batch["appearance"])
    controls = Controls(batch["pose"], batch["expression"], batch["body_shape"])
    res = cfg.resolution
    cam = portrait_camera(batch["camera"])
    image, mask = batch["image"], batch["mask"]
    use_patch = cfg.patch_scale > 1 and torch.rand((), generator=gen).item() < cfg.patch_prob
    cam, (image, mask) = random_window(cam, [image, mask], res, cfg.patch_scale if use_patch else 1, gen)
    scene = training_scene(G, latents, controls, batch.get("pose_entries"))
    out = G.render_scene(scene, cam, res)
    terms = {"image": (out.image_lr - image).abs().mean(), "alpha": (out.alpha_lr - mask).abs().mean(),
             "grad": image_gradient_l1(out.image_lr, image)}
    if cfg.w_face > 0:
        fres = cfg.face_resolution
        face_scale = min(cfg.face_patch_scale, batch["face"].shape[-1] // fres)
        use_face_patch = face_scale > 1 and torch.rand((), generator=gen).item() < cfg.face_patch_prob
        fcam, (face,) = random_window(face_camera(batch["face_camera"]), [batch["face"]], fres,
                                      face_scale if use_face_patch else 1, gen)
        face_out = G.render_scene(scene, fcam, fres)
        face_err = (face_out.image_lr - face).abs()
        if cfg.face_mouth_weight != 1.0:
            with torch.no_grad():
                weights = mouth_weight_map(face_landmarks_uv(G, batch, fcam)[:, MOUTH_LANDMARKS], fres,
                                           cfg.face_mouth_weight)
            face_err = face_err * weights / weights.mean()
        terms["face"] = face_err.mean()
        if cfg.w_face_grad > 0:
            terms["face_grad"] = image_gradient_l1(face_out.image_lr, face)
    reg_expression = batch["expression"]
    if cfg.imitation_sweep_fraction > 0:
        if control_range is None:
            raise ValueError("imitation_sweep_fraction > 0 needs the labels' control_range")
        reg_expression = sweep_expressions(reg_expression, *control_range, cfg.imitation_sweep_fraction, gen)
    terms.update(deformation_regularisers(G, batch["identity"], reg_expression, batch["body_shape"], None,
                                          cfg.reg_points, cfg.smooth_jitter, gen, cfg.imitation_moving_fraction,
                                          cfg.w_shading_imitation > 0))
    if cfg.w_smooth_pose > 0:
        terms["smooth_pose"] = L.grid_smoothness(scene.pose_volume)
    total = sum(getattr(cfg, f"w_{k}") * v for k, v in terms.items())
    terms["total"] = total
    terms["patch"] = torch.tensor(float(use_patch))
    return terms


# ------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_heldout(G: Generator, data: SupervisedData, index: Tensor, resolution: int = 64,
                     batch: int = 4, super_resolve: bool = False) -> dict[str, float]:
    """Render the records ``index`` with their own labels and compare with the area-downsampled renders:
    image L1 and PSNR (on [0, 1] colours), alpha L1 and IoU (alpha > 0.5), face-crop L1 and PSNR."""
    sums = {"l1": 0.0, "mse": 0.0, "alpha_l1": 0.0, "iou": 0.0, "face_l1": 0.0, "face_mse": 0.0}
    psnrs, face_psnrs = [], []
    n = 0
    was_training = G.training
    G.eval()
    for start in range(0, index.numel(), batch):
        idx = index[start:start + batch]
        bt = data.batch(idx)
        lat = Latents(bt["identity"], bt["appearance"])
        ctl = Controls(bt["pose"], bt["expression"], bt["body_shape"])
        out = G(lat, ctl, portrait_camera(bt["camera"]), resolution=resolution, super_resolve=super_resolve)
        size = out.image.shape[-1]
        tgt, msk = downsample(bt["image"], size), downsample(bt["mask"], size)
        pred01, tgt01 = (out.image + 1) / 2, (tgt + 1) / 2
        err = (pred01 - tgt01)
        mse = err.square().flatten(1).mean(1)
        sums["l1"] += float(err.abs().flatten(1).mean(1).sum())
        sums["mse"] += float(mse.sum())
        psnrs += (-10 * torch.log10(mse.clamp_min(1e-10))).tolist()
        sums["alpha_l1"] += float((out.alpha - msk).abs().flatten(1).mean(1).sum())
        a, m = out.alpha > 0.5, msk > 0.5
        sums["iou"] += float(((a & m).flatten(1).sum(1) / (a | m).flatten(1).sum(1).clamp_min(1)).sum())
        fres = min(resolution, data.face.shape[-1])
        sr = G.cfg.superres.scale if super_resolve else 1
        fo = G(lat, ctl, face_camera(bt["face_camera"]), resolution=max(1, fres // sr), super_resolve=super_resolve)
        ferr = (fo.image + 1) / 2 - (downsample(bt["face"], fo.image.shape[-1]) + 1) / 2
        fmse = ferr.square().flatten(1).mean(1)
        sums["face_l1"] += float(ferr.abs().flatten(1).mean(1).sum())
        sums["face_mse"] += float(fmse.sum())
        face_psnrs += (-10 * torch.log10(fmse.clamp_min(1e-10))).tolist()
        n += idx.numel()
    G.train(was_training)
    res = {k: v / max(n, 1) for k, v in sums.items()}
    res["psnr"] = float(np.mean(psnrs)) if psnrs else float("nan")
    res["face_psnr"] = float(np.mean(face_psnrs)) if face_psnrs else float("nan")
    res["images"] = n
    res["resolution"] = int(out.image.shape[-1]) if n else resolution
    return res


@torch.no_grad()
def baseline_metrics(G: Generator, data: SupervisedData, index: Tensor, resolution: int = 64) -> dict:
    """Reference scores for :func:`evaluate_heldout` on the same images: PSNR / L1 of an all-white image and of
    the mean training image, and the full metrics of an untrained generator with ``G``'s config (seed 0)."""
    tgt = (downsample(data.batch(index)["image"], resolution) + 1) / 2
    mean_img = torch.zeros(1, 3, resolution, resolution)
    for start in range(0, data.train_index.numel(), 64):
        idx = data.train_index[start:start + 64]
        mean_img += ((downsample(data.batch(idx)["image"], resolution) + 1) / 2).sum(0, keepdim=True)
    mean_img /= data.train_index.numel()

    def score(pred: Tensor) -> dict[str, float]:
        err = pred - tgt
        mse = err.square().flatten(1).mean(1)
        return {"l1": float(err.abs().mean()), "psnr": float((-10 * torch.log10(mse.clamp_min(1e-10))).mean())}

    torch.manual_seed(0)
    untrained = Generator(G.cfg)
    return {"white": score(torch.ones_like(tgt)), "mean_training_image": score(mean_img.expand_as(tgt)),
            "untrained_generator": evaluate_heldout(untrained, data, index, resolution)}


@torch.no_grad()
def sample_grid(G: Generator, data: SupervisedData, index: Tensor, path: Path, resolution: int = 64) -> Path:
    """PNG with one row per record: target | render | render alpha | face target | face render."""
    from PIL import Image

    was_training = G.training
    G.eval()
    bt = data.batch(index)
    lat = Latents(bt["identity"], bt["appearance"])
    ctl = Controls(bt["pose"], bt["expression"], bt["body_shape"])
    out = G(lat, ctl, portrait_camera(bt["camera"]), resolution=resolution)
    fo = G(lat, ctl, face_camera(bt["face_camera"]), resolution=resolution)
    G.train(was_training)
    to01 = lambda x: ((x.clamp(-1, 1) + 1) / 2)  # noqa: E731
    cols = [to01(downsample(bt["image"], resolution)), to01(out.image_lr), out.alpha_lr.expand(-1, 3, -1, -1),
            to01(downsample(bt["face"], resolution)), to01(fo.image_lr)]
    grid = torch.cat([torch.cat(list(c), dim=1) for c in cols], dim=2)  # [3, B*H, 5*W]
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


# -------------------------------------------------------------------------------------------- training
def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def set_style_averages(G: Generator, identity: Tensor, appearance: Tensor) -> None:
    """Truncation averages = mean mapped styles over the training (identity, appearance) pairs (the appearance code
    replaces the standard-normal noise that ``Generator.update_w_avg`` assumes)."""
    z = torch.cat([identity, appearance], -1).to(G.device, G.radiance_style_avg.dtype)
    G.radiance_style_avg.copy_(G.radiance_mapping(z).mean(0))
    if G.superres_mapping is not None:
        G.superres_style_avg.copy_(G.superres_mapping(z).mean(0))


def init_lineage(info: dict, path: str | Path) -> list[dict]:
    """The runs a checkpoint made from ``--init path`` descends from, oldest first: the init checkpoint's own
    lineage plus one entry for it (method, optimisation steps, wall seconds)."""
    entry = {"checkpoint": str(path), "method": info.get("method"), "step": info.get("step"),
             "wall_seconds": info.get("wall_seconds")}
    return [*info.get("lineage", []), entry]


def checkpoint_info(cfg: SupervisedConfig, data: SupervisedData, step: int, wall_s: float,
                    last: dict[str, float], evaluation: dict | None, lineage: list[dict] | None = None) -> dict:
    """Checkpoint ``info`` of a supervised run; ``lineage`` (:func:`init_lineage`) records what it started from."""
    return {
        "method": METHOD, "step": step, "wall_seconds": round(wall_s, 1), "threads": cfg.threads,
        "lineage": lineage or [],
        "data": {"root": [str(r) for r in data.roots], "images": len(data), "train_images": int(data.train_index.numel()),
                 "heldout_images": int(data.heldout_index.numel()), "identities": data.num_identities,
                 "resolution": data.resolution, "generator": data.info.get("generator"),
                 "yaw_mode": data.info.get("yaw_mode")},
        "noise_latent": {"kind": "appearance_code", "module": "portrait_core.assets.appearance",
                         "layout": APPEARANCE_LAYOUT, "used_dims": USED_DIMS},
        "samplers": "samplers.safetensors next to the training run; default_samplers.safetensors in "
                    "portrait_core/assets for the shipped model",
        "train": {k: v for k, v in vars(cfg).items() if k not in ("data", "out")},
        "last_losses": last, "heldout": evaluation,
    }


def imitation_warmup(G: Generator, data: SupervisedData, cfg: SupervisedConfig, gen: torch.Generator,
                     log=print, batch: int = 8) -> dict[str, float]:
    """Fit only the expression branch (deformation network + expression mapping) to the 3DMM, with the training
    expressions and identities: ``cfg.imitation_warmup`` render-free steps of the weighted imitation, expression
    smoothness and minimal-deformation terms (about 30 steps/s on a CPU core pair). Returns the last terms."""
    params = [*G.expression_deform.parameters(), *G.expression_mapping.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.99))
    pool = data.train_index
    sweep_range = data.control_range()
    terms: dict[str, Tensor] = {}
    for k in range(cfg.imitation_warmup):
        for g in opt.param_groups:  # cosine to 10 %
            g["lr"] = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / cfg.imitation_warmup)))
        idx = pool[torch.randint(pool.numel(), (batch,), generator=gen)]
        expression = sweep_expressions(data.expression[idx], *sweep_range, cfg.imitation_sweep_fraction, gen)
        terms = deformation_regularisers(G, data.identity[idx], expression, data.body_shape[idx], None,
                                         2 * cfg.reg_points, cfg.smooth_jitter, gen, cfg.imitation_moving_fraction,
                                         cfg.w_shading_imitation > 0)
        total = sum(getattr(cfg, f"w_{name}") * v for name, v in terms.items())
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        if (k + 1) % 500 == 0 or k + 1 == cfg.imitation_warmup:
            log(f"imitation warm-up {k + 1}/{cfg.imitation_warmup}: " +
                " ".join(f"{n}={float(v.detach()):.4g}" for n, v in terms.items()))
    G.zero_grad(set_to_none=True)
    return {n: float(v.detach()) for n, v in terms.items()}


def train_supervised(cfg: SupervisedConfig, log=print) -> Path:
    """Run (or resume) the supervised warm start; returns the run folder."""
    torch.set_num_threads(max(1, cfg.threads))
    # Adam's second moments of rarely-used weights can decay into float32 denormals, which x86 CPUs process far
    # more slowly; flushing them to zero changes nothing measurable in the updates.
    torch.set_flush_denormal(True)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = SupervisedData(cfg.data, holdout=cfg.holdout, limit=cfg.limit or None)
    log(f"data: {len(data)} images ({data.train_index.numel()} train, {data.heldout_index.numel()} held out), "
        f"{data.num_identities} identities, {data.resolution}^2")
    torch.manual_seed(cfg.seed)
    lineage: list[dict] = []
    if cfg.init:
        G = load_generator(cfg.init)
        lineage = init_lineage(G.checkpoint_info or {}, cfg.init)
        overrides = json.loads(cfg.generator_overrides)
        if overrides:  # new settings (more levels) or added modules (modulated colour): rebuild, copy the weights
            state = G.state_dict()
            G = Generator(generator_config(G.cfg, **overrides))
            fresh = transfer_weights(G, state, f"--init {cfg.init} with --generator-overrides")
            if fresh:
                log(f"new parameters at their initialisation: {', '.join(fresh)}")
        log(f"init: {cfg.init} (preset {G.cfg.name}, overrides {overrides or 'none'})")
    else:
        G = Generator(generator_config(cfg.preset, **json.loads(cfg.generator_overrides)))
    G.train()
    groups = G.param_groups()
    # its own group only when its learning rate differs (so runs with the default resume either way)
    head = [*G.radiance.colour_modulation.parameters(), *G.radiance.modulated_rgb.parameters()] \
        if G.cfg.radiance.modulated_colour and cfg.lr_colour_head_scale != 1.0 else []
    groups["radiance"] = [p for p in groups["radiance"] if all(p is not q for q in head)]
    groups["colour_head"] = head
    scale = {"manifold": cfg.lr_manifold_scale, "colour_head": cfg.lr_colour_head_scale}
    G.requires_grad_(False)
    param_groups = []
    if cfg.stage not in STAGES:
        raise ValueError(f"unknown stage {cfg.stage!r} (expected one of {', '.join(STAGES)})")
    if cfg.stage == "superres" and G.superres is None:
        raise ValueError("--stage superres: this generator has no super-resolution (superres.enabled=False)")
    for name in STAGES[cfg.stage]:
        params = groups[name]
        if not params:
            continue
        for p in params:
            p.requires_grad_(True)
        param_groups.append({"params": params, "name": name, "lr": cfg.lr * scale.get(name, 1.0)})
    for g in param_groups:
        g["base_lr"] = g["lr"]
    opt = torch.optim.Adam(param_groups, betas=(0.9, 0.99), eps=1e-8)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    step, wall_before = 0, 0.0
    state_path = out / "state.pt"
    if state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        G.load_state_dict(st["generator"])
        opt.load_state_dict(st["optimizer"])
        step, wall_before = int(st["step"]), float(st["wall_seconds"])
        gen.set_state(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        log(f"resumed {state_path} at step {step}")
    if step == 0 and cfg.imitation_warmup > 0:
        imitation_warmup(G, data, cfg, gen, log)
    (out / "config.json").write_text(json.dumps(vars(cfg), indent=1))
    samplers = data.samplers()
    samplers.save(out / "samplers.safetensors")
    fixed = data.heldout_index[:4] if data.heldout_index.numel() else data.train_index[:4]
    t0 = time.time()
    last_save = t0
    last: dict[str, float] = {}
    perm, pos = torch.randperm(data.train_index.numel(), generator=gen), 0
    deadline = t0 + cfg.minutes * 60 if cfg.minutes > 0 else math.inf
    log_file = open(out / "log.jsonl", "a")
    entry_cache: dict[int, Tensor] = {}

    def save(final: bool = False) -> None:
        wall = wall_before + time.time() - t0
        _atomic_torch_save({"generator": G.state_dict(), "optimizer": opt.state_dict(), "step": step,
                            "wall_seconds": wall, "rng": gen.get_state(), "torch_rng": torch.get_rng_state()},
                           state_path)
        set_style_averages(G, samplers.identity, samplers.appearance)
        evaluation = None
        if final and data.heldout_index.numel():
            evaluation = evaluate_heldout(G, data, data.heldout_index, cfg.eval_resolution,
                                          super_resolve=cfg.stage == "superres")  # what the stage trained
            (out / "eval.json").write_text(json.dumps(evaluation, indent=1))
            log(f"held-out: {json.dumps(evaluation)}")
        save_generator(out / "generator.safetensors", G,
                       info=checkpoint_info(cfg, data, step, wall, last, evaluation, lineage))
        log(f"saved step {step} ({wall / 60:.1f} min)")

    control_range = data.control_range()
    while step < cfg.steps and time.time() < deadline:
        ts = time.time()
        if pos + cfg.batch > perm.numel():
            perm, pos = torch.randperm(data.train_index.numel(), generator=gen), 0
        idx = data.train_index[perm[pos:pos + cfg.batch]]
        pos += cfg.batch
        frac = step / max(1, cfg.steps)
        scale = cfg.lr_min_fraction + (1 - cfg.lr_min_fraction) * 0.5 * (1 + math.cos(math.pi * frac))
        warm = min(1.0, (step + 1) / 20)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * scale * warm
        bt = data.batch(idx)
        if cfg.stage == "superres":
            terms = superres_losses(G, cfg, bt, gen)
        else:
            missing = [i for i in idx.tolist() if i not in entry_cache]
            if missing:
                fresh = pose_entries(G, data.body_shape[missing], data.pose[missing])
                entry_cache.update(zip(missing, fresh.half()))
            bt["pose_entries"] = torch.stack([entry_cache[i] for i in idx.tolist()]).float()
            terms = supervised_losses(G, cfg, bt, step, gen, control_range)
        bad = L.all_finite(terms)
        if bad is not None:
            raise FloatingPointError(f"step {step}: loss {bad} is not finite")
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 10.0)
        opt.step()
        step += 1
        last = {k: float(f"{float(v.detach()):.5g}") for k, v in terms.items()}
        last["seconds"] = round(time.time() - ts, 2)
        log_file.write(json.dumps({"step": step, **last}) + "\n")
        log_file.flush()
        if step % 10 == 0 or step == 1:
            log(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in last.items()))
        if cfg.sample_every and step % cfg.sample_every == 0:
            sample_grid(G, data, fixed, out / "samples" / f"step{step:06d}.png", cfg.eval_resolution)
        if time.time() - last_save > cfg.save_every_s:
            save()
            last_save = time.time()
    save(final=True)
    sample_grid(G, data, fixed, out / "samples" / f"step{step:06d}.png", cfg.eval_resolution)
    log_file.close()
    return out


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    eval_only, export, eval_images, baselines = a.eval_only, a.export, a.eval_images, a.baselines
    cfg = SupervisedConfig(**{k: v for k, v in vars(a).items()
                              if k not in ("eval_only", "export", "eval_images", "baselines")})
    if eval_only:
        torch.set_num_threads(max(1, cfg.threads))
        data = SupervisedData(cfg.data, holdout=cfg.holdout, limit=cfg.limit or None)
        G = load_generator(Path(cfg.out) / "generator.safetensors")
        held = data.heldout_index[:eval_images] if eval_images else data.heldout_index
        res = {"ray": evaluate_heldout(G, data, held, cfg.eval_resolution)}
        if G.superres is not None:
            res["super_resolved"] = evaluate_heldout(G, data, held, cfg.eval_resolution, super_resolve=True)
        res["step"] = G.checkpoint_info.get("step")
        if baselines:
            res["baselines"] = baseline_metrics(G, data, held, cfg.eval_resolution)
        print(json.dumps(res, indent=1))
        (Path(cfg.out) / "eval_heldout.json").write_text(json.dumps(res, indent=1))
        if export:
            from portrait_core.assets import DEFAULT_CHECKPOINT, DEFAULT_SAMPLERS

            info = dict(G.checkpoint_info)
            info["heldout"] = res
            info["samplers"] = DEFAULT_SAMPLERS
            dest = Path(export)
            save_generator(dest / DEFAULT_CHECKPOINT, G, info=info)
            DefaultSamplers.load(Path(cfg.out) / "samplers.safetensors").save(dest / DEFAULT_SAMPLERS)
            print(f"exported {dest / DEFAULT_CHECKPOINT} ({(dest / DEFAULT_CHECKPOINT).stat().st_size / 2**20:.2f} "
                  f"MiB) and {dest / DEFAULT_SAMPLERS}")
        return 0
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_supervised(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
