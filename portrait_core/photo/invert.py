"""Your photo, animated: invert a prepared portrait into the default model, tune the model on it, bake an avatar.

``python -m portrait_core invert PHOTO --out DIR`` (or ``--prepared DATASET_DIR [--index i]``), and the worker's
``invert`` operation for the Blender add-on, both call :func:`run_invert`:

1. **Target**: the photo prepared by :func:`portrait_core.photo.prepare.prepare_photo` (aligned portrait, matte,
   face crop and a label record: identity, expression, pose, body shape, camera, face camera), or one record of
   a Busto dataset folder (what ``python -m portrait_core.data prepare`` or ``synth`` write). The portrait is
   composited over white, the background every Busto render has.
2. **Latent optimisation**: the appearance code (``noise``) whose avatar looks most like the photo is chosen
   among draws from the model's label samplers (the record's identity is kept), then the radiance style vector
   (the mapping-space latent ``w`` of the radiance network) is optimised to reproduce the photo inside the matte
   with the record's camera, pose and expression: L1 on colour and alpha, plus L1 on image gradients at three
   scales. Portrait-camera and face-camera renders alternate, so the face is seen up close.
3. **Pivotal tuning**: with ``w`` fixed (the pivot), the radiance network's weights, then the super-resolution
   network's weights (on the baked level textures, at the model's output resolution) are tuned with a small
   learning rate. A locality regulariser keeps both networks' outputs for other styles where they were.
   A model without a face texture (the shipped one) first gets a fresh one (``with_face_texture``: it changes no
   pixel until tuned), so every avatar has its own texture on the 3DMM face; it is tuned with the radiance
   network, then alone at the face crop's density, and last **on the output itself** (super-resolved renders at
   the output resolution, portrait and face camera in turn): the detail no 64^2 render holds (the photo blurred to
   64^2 and upsampled scores 21.4 dB in its face region; the detail stage takes the shipped model from 18.4 to
   about 29 dB there).
4. **Bake**: the radiance mapping's last bias is shifted so that the pinned inputs (identity, appearance code)
   map exactly onto the pivot, and the truncation averages are set to the pivot, so the avatar is the same at
   any truncation. The tuned generator is written as ``DIR/avatar.safetensors`` with ``DIR/samplers.safetensors``
   beside it: one-row label samplers holding the pinned identity, body shape, appearance code and the photo's
   camera, pose and expression. Every command (``sample``, ``export``, ``video``, ``bench``) and the add-on load
   it with ``--checkpoint DIR/avatar.safetensors`` and get this avatar for any seed.
5. **Sheet and report**: ``DIR/sheet.png`` (photo | reconstruction | head turned -0.5 / +0.5 rad | nod | smile |
   open jaw | extracted surface, shaded from the rendered depth), ``DIR/report.json`` (PSNR inside the matte and
   in its face region at the model's output resolution, before and after; the turned views' alpha coverage and
   landmark-shape drift; timings). ``--glb`` also writes the rigged ``DIR/avatar.glb`` (the export pipeline).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from portrait_core import conventions as C

__all__ = ["InvertSettings", "Target", "InvertError", "InvertCancelled", "target_from_dataset",
           "target_from_prepared", "target_from_photo", "invert", "pin_inputs", "save_avatar", "psnr_report",
           "turned_view_checks", "render_sheet", "run_invert", "AVATAR_FILE", "SAMPLERS_FILE"]

AVATAR_FILE = "avatar.safetensors"
SAMPLERS_FILE = "samplers.safetensors"
SHEET_FILE = "sheet.png"
REPORT_FILE = "report.json"
GLB_FILE = "avatar.glb"
#: head turn of the sheet and the checks, radians in all (split over the neck and head joints as the add-on's
#: 'Turn' preset splits it), and the nod
TURN = 0.5
TURN_SPLIT = (0.4, 0.6)
NOD = (0.12, 0.22)
#: expression coefficients of the sheet's smile and open jaw (the synthetic 3DMM's named directions)
SMILE, JAW_OPEN = 2.0, 2.5
#: at most this many steps per stage (the worker's request limit too)
MAX_STEPS = 5000

Progress = Callable[[float, str], None]


class InvertError(ValueError):
    """A photo or prepared record that cannot be inverted (the message names the file and the problem)."""


class InvertCancelled(RuntimeError):
    """``should_stop`` asked to stop."""


@dataclass
class InvertSettings:
    """Step counts, resolutions and learning rates of the three stages (defaults: minutes on two CPU cores)."""

    latent_steps: int = 40
    tune_steps: int = 30
    sr_steps: int = 30
    #: steps of face-texture tuning (generators with ``face_texture`` only): the shared texture on the 3DMM face and
    #: its colour network, on face-camera and portrait renders at ``face_resolution`` rays
    face_steps: int = 60
    #: steps of face-texture tuning on the output itself (super-resolved renders at the output resolution), last
    detail_steps: int = 100
    #: a model without a face texture gets a fresh one (zero start: ``generator.loading.with_face_texture``) for
    #: the tuning, face and detail stages
    attach_face_texture: bool = True
    candidates: int = 8
    #: ray resolution of the latent and radiance-tuning renders (the super-resolution stage renders at the model's)
    opt_resolution: int = 32
    lr_latent: float = 0.01
    lr_tune: float = 3e-4
    lr_sr: float = 1e-3
    lr_face: float = 1e-2
    face_resolution: int = 64
    w_alpha: float = 0.5
    w_grad: float = 0.5
    w_locality: float = 1.0
    seed: int = 0

    def validate(self) -> InvertSettings:
        for name in ("latent_steps", "tune_steps", "sr_steps", "face_steps", "detail_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_STEPS:
                raise InvertError(f"{name} must be an integer in [0, {MAX_STEPS}], got {v!r}")
        if not isinstance(self.candidates, int) or not 1 <= self.candidates <= 64:
            raise InvertError(f"candidates must be an integer in [1, 64], got {self.candidates!r}")
        for name in ("opt_resolution", "face_resolution"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 8 <= v <= 256:
                raise InvertError(f"{name} must be an integer in [8, 256], got {v!r}")
        return self


@dataclass
class Target:
    """What the avatar must reproduce: ``image`` [1, 3, H, W] in [-1, 1] composited on white, ``matte``
    [1, 1, H, W] in [0, 1], ``face`` [1, 3, F, F] and ``face_matte`` [1, 1, F, F] (the face-camera crop), and the
    record's labels as tensors with a batch of 1 (camera [1, 25], face_camera [1, 25], pose [1, 6, 3],
    expression [1, 64], identity [1, 80], body_shape [1, 10])."""

    image: Tensor
    matte: Tensor
    face: Tensor
    face_matte: Tensor
    labels: dict[str, Tensor]
    source: str = ""
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ targets
_LABEL_SHAPES = {"camera": (25,), "face_camera": (25,), "pose": (6, 3), "expression": (64,), "identity": (80,),
                 "body_shape": (10,)}


def _labels(record: dict, where: str) -> dict[str, Tensor]:
    out = {}
    for key, shape in _LABEL_SHAPES.items():
        if key not in record:
            raise InvertError(f"{where}: the label record has no {key!r}")
        try:
            a = np.asarray(record[key], dtype=np.float32).reshape(shape)
        except (TypeError, ValueError) as e:
            raise InvertError(f"{where}: label {key!r} is not {list(shape)} numbers ({e})") from None
        if not np.all(np.isfinite(a)):
            raise InvertError(f"{where}: label {key!r} contains NaN or inf")
        out[key] = torch.from_numpy(a)[None]
    return out


def _face_crop(image01: np.ndarray, matte01: np.ndarray, labels: dict[str, Tensor], size: int):
    """Face-camera crop of the (white-composited) portrait and of its matte, as the datasets make it."""
    from portrait_core.data.readers import crop_face

    cam, fcam = labels["camera"][0].numpy(), labels["face_camera"][0].numpy()
    rgb = crop_face((image01 * 255).round().astype(np.uint8), cam, fcam, size)
    m = crop_face(np.repeat((matte01[..., None] * 255).round().astype(np.uint8), 3, -1), cam, fcam, size)
    return rgb.astype(np.float32) / 255, m[..., 0].astype(np.float32) / 255


def _make_target(image01: np.ndarray, matte01: np.ndarray, face01: np.ndarray | None, record: dict, where: str,
                 face_size: int = 128) -> Target:
    """Arrays in [0, 1] ([H, W, 3], [H, W], optional face crop [F, F, 3]) + a label record -> :class:`Target`."""
    if image01.ndim != 3 or image01.shape[2] != 3 or matte01.shape != image01.shape[:2]:
        raise InvertError(f"{where}: expected an RGB portrait [H, W, 3] and a matte [H, W], got "
                          f"{list(image01.shape)} and {list(matte01.shape)}")
    labels = _labels(record, where)
    matte01 = np.clip(matte01.astype(np.float32), 0, 1)
    comp = image01.astype(np.float32) * matte01[..., None] + (1 - matte01[..., None])  # over white
    fimg, fmatte = _face_crop(comp, matte01, labels, face_size)
    if face01 is not None and face01.ndim == 3 and face01.shape[2] == 3:
        # the prepared crop (sharper where the photo has more pixels than the portrait), composited over white
        fimg = _resize01(face01.astype(np.float32), face_size)
        fimg = fimg * fmatte[..., None] + (1 - fmatte[..., None])
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None] * 2 - 1  # noqa: E731
    return Target(to_t(comp), torch.from_numpy(matte01)[None, None], to_t(fimg), torch.from_numpy(fmatte)[None, None],
                  labels, where)


def _resize01(a: np.ndarray, size: int) -> np.ndarray:
    if a.shape[0] == size and a.shape[1] == size:
        return a
    from PIL import Image

    img = Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))
    return np.asarray(img.resize((size, size), Image.LANCZOS), np.float32) / 255


def target_from_dataset(root: str | os.PathLike, index: int = 0, resolution: int | None = None) -> Target:
    """Record ``index`` of a Busto dataset folder (``labels.json`` + images, masks, faces) as a :class:`Target`
    at ``resolution`` (default: the stored size)."""
    from PIL import Image

    from portrait_core.data.labels import load_labels_json

    root = Path(root)
    labels_path = root / "labels.json"
    if not labels_path.is_file():
        raise InvertError(f"{root}: not a prepared dataset folder (no labels.json)")
    records = load_labels_json(labels_path).get("images") or []
    if not records:
        raise InvertError(f"{labels_path}: no image records")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(records):
        raise InvertError(f"{labels_path}: --index {index} out of range (0..{len(records) - 1})")
    rec = records[index]
    where = f"{labels_path}: images[{index}]"

    def read(key: str, mode: str) -> np.ndarray | None:
        rel = rec.get(key)
        if not rel:
            return None
        p = (root / rel).resolve()
        if root.resolve() not in p.parents:
            raise InvertError(f"{where}: {key} path {rel!r} leaves the dataset folder")
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                if key != "face" and resolution and im.size != (resolution, resolution):
                    im = im.resize((resolution, resolution), Image.LANCZOS if mode == "RGB" else Image.BILINEAR)
                return np.asarray(im, np.float32) / 255
        except OSError as e:
            raise InvertError(f"{p}: not a readable image ({e})") from None

    image = read("image", "RGB")
    if image is None:
        raise InvertError(f"{where}: no image")
    matte = read("mask", "L")
    if matte is None:
        matte = np.ones(image.shape[:2], np.float32)
    return _make_target(image, matte, read("face", "RGB"), rec, where)


def target_from_prepared(prepared, where: str = "photo") -> Target:
    """A :class:`portrait_core.photo.prepare.PreparedPhoto` (aligned portrait [H, W, 3] in 0..1, matte [H, W],
    face crop, label record) as a :class:`Target`."""
    image = np.asarray(_attr(prepared, ("photo", "image", "portrait")), np.float32)  # before compositing
    matte = np.asarray(_attr(prepared, ("matte", "mask")), np.float32)
    face = _attr(prepared, ("face", "face_crop"), required=False)
    record = _attr(prepared, ("record", "labels", "label"))
    if image.max() > 1.5:  # uint8 arrays
        image = image / 255
    if matte.max() > 1.5:
        matte = matte / 255
    if matte.ndim == 3:
        matte = matte[..., 0]
    face = None if face is None else np.asarray(face, np.float32) / (255 if np.asarray(face).max() > 1.5 else 1)
    target = _make_target(image, matte, face, dict(record), where)
    target.notes = [str(n) for n in (getattr(prepared, "notes", None) or getattr(prepared, "warnings", None) or [])]
    return target


def _attr(obj, names, required: bool = True):
    for n in names:
        v = obj.get(n) if isinstance(obj, dict) else getattr(obj, n, None)
        if v is not None:
            return v
    if required:
        raise InvertError(f"prepared photo has none of {names}")
    return None


def target_from_photo(path: str | os.PathLike, resolution: int = 128) -> Target:
    """Prepare a photo (face detection, 3DMM and body fit, matte, alignment) and use it as the target."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    try:
        from portrait_core.photo.prepare import prepare_photo
    except ImportError as e:
        raise InvertError(f"{path}: preparing a photo needs the 'photo' extra (pip install -e .[photo]) and "
                          f"portrait_core.photo.prepare ({e}); or pass --prepared DIR of a prepared dataset") from None
    try:
        prepared = prepare_photo(path, resolution=resolution)
    except TypeError:  # a prepare_photo without the resolution argument
        prepared = prepare_photo(path)
    return target_from_prepared(prepared, str(path))


def check_photo_file(path: str | os.PathLike) -> Path:
    """A readable image file, else an :class:`InvertError`/``FileNotFoundError`` naming it (nothing is written)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file", str(path))
    if not path.is_file():
        raise InvertError(f"{path}: not a file")
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InvertError(f"{path}: not an image file PIL can read ({type(e).__name__})") from None
    return path


# ------------------------------------------------------------------------------------------------ cameras
def portrait_camera(label25: Tensor):
    """Portrait camera of a 25-float label with the depth range the model was trained with."""
    from portrait_core.geometry.camera import Camera

    cam = Camera.from_label25(label25)
    r = (cam.origin - cam.origin.new_tensor(C.PORTRAIT_LOOK_AT)).norm(dim=-1)
    return cam.with_near_far(r - C.PORTRAIT_DEPTH_HALF_RANGE, r + C.PORTRAIT_DEPTH_HALF_RANGE)


def face_camera(label25: Tensor):
    from portrait_core.geometry.camera import Camera

    cam = Camera.from_label25(label25)
    return cam.with_near_far(C.FACE_RADIUS - C.FACE_DEPTH_HALF_RANGE, C.FACE_RADIUS + C.FACE_DEPTH_HALF_RANGE)


# ------------------------------------------------------------------------------------------------ losses
def _down(x: Tensor, size: int) -> Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")


def _gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def image_loss(pred: Tensor, alpha: Tensor, target: Tensor, matte: Tensor, w_alpha: float, w_grad: float) -> Tensor:
    """L1 colour (matte pixels weighted x4, the rest keep the white background) + alpha L1 + L1 of image
    gradients at three scales (full, 1/2, 1/4)."""
    size = pred.shape[-1]
    target, matte = _down(target, size), _down(matte, size)
    weight = 1 + 3 * matte
    loss = ((pred - target).abs() * weight).mean() + w_alpha * (alpha - matte).abs().mean()
    for k in range(3):
        s = max(4, size >> k)
        p, t = _down(pred, s), _down(target, s)
        (px, py), (tx, ty) = _gradients(p), _gradients(t)
        loss = loss + w_grad * ((px - tx).abs().mean() + (py - ty).abs().mean())
    return loss


# ------------------------------------------------------------------------------------------------ inversion
@dataclass
class Inversion:
    """The result of :func:`invert`: the tuned generator (pinned), its inputs and what happened."""

    generator: object
    latents: object
    body_shape: Tensor
    pivot: Tensor
    losses: dict[str, list[float]]
    timings: dict[str, float]
    candidate: int


class _Scene:
    """The fixed per-frame parts (pose volume, expression fields, manifold) of the target's two cameras."""

    def __init__(self, g, target: Target):
        lab = target.labels
        dev = g.device
        self.pose, self.expression = lab["pose"].to(dev), lab["expression"].to(dev)
        self.identity, self.body_shape = lab["identity"].to(dev), lab["body_shape"].to(dev)
        with torch.no_grad():
            self.pose_volume = g.pose_volume(g.body.posed(self.body_shape, self.pose))
            self.expression_fields = g.expression_fields_fn(self.identity, self.expression,
                                                            body_shape=self.body_shape)
            self.manifold = g.baked_manifold_fn()
        self.cameras = {"portrait": portrait_camera(lab["camera"]).to(dev),
                        "face": face_camera(lab["face_camera"]).to(dev)}
        self.targets = {"portrait": (target.image.to(dev), target.matte.to(dev)),
                        "face": (target.face.to(dev), target.face_matte.to(dev))}

        self.face_volume = (g.face_coordinate_volume(self.identity, self.body_shape)
                            if getattr(g, "face_texture", None) is not None else None)
        self.face_detail = None

    def fields(self, radiance, radiance_hr=None):
        from portrait_core.generator.generator import SceneFields

        return SceneFields(pose_volume=self.pose_volume, expression_fields=self.expression_fields,
                           manifold=self.manifold, radiance=radiance, radiance_hr=radiance_hr,
                           face_detail=self.face_detail)


def invert(g, target: Target, settings: InvertSettings | None = None, samplers=None, progress: Progress | None = None,
           should_stop: Callable[[], bool] | None = None) -> Inversion:
    """Latent optimisation, then pivotal tuning of ``g`` (a loaded generator, tuned in place) on ``target``;
    finally :func:`pin_inputs`. ``samplers``: the label samplers whose appearance codes seed the search (default:
    the generator's own, else N(0, I) codes)."""
    from portrait_core.generator.structures import Latents

    s = (settings or InvertSettings()).validate()
    progress = progress or (lambda _x, _label: None)
    stop = should_stop or (lambda: False)
    g.eval()
    for p in g.parameters():
        p.requires_grad_(False)
    scene = _Scene(g, target)
    timings, losses = {}, {"latent": [], "tune": [], "face": [], "sr": [], "detail": []}
    face_steps = s.face_steps if g.face_texture is not None else 0
    detail_steps = s.detail_steps if g.face_texture is not None else 0
    total = max(1, s.latent_steps + s.tune_steps + 3 * s.sr_steps + 2 * (face_steps + detail_steps) + s.candidates)
    done = 0

    def tick(stage: str, n: int = 1):
        nonlocal done
        if stop():
            raise InvertCancelled("cancelled")
        done += n
        progress(min(0.95, 0.05 + 0.9 * done / total), stage)

    def render(cam_name: str, radiance, radiance_hr=None, resolution: int | None = None):
        return g.render_scene(scene.fields(radiance, radiance_hr), scene.cameras[cam_name], resolution,
                              radiance_hr is not None)

    def loss_of(out, cam_name: str) -> Tensor:
        t, m = scene.targets[cam_name]
        return image_loss(out.image, out.alpha, t, m, s.w_alpha, s.w_grad)

    # 1. candidates: the record's identity with appearance codes drawn from the samplers
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(s.seed)
    if samplers is not None and samplers.appearance is not None:
        idx = torch.randint(samplers.appearance.shape[0], (s.candidates,), generator=gen)
        noises = samplers.appearance[idx].float()
    else:
        noises = torch.randn(s.candidates, C.NOISE_DIM, generator=gen)
    noises = noises.to(g.device)
    best, best_loss = 0, math.inf
    res = s.opt_resolution
    with torch.no_grad():
        for k in range(s.candidates):
            lat = Latents(scene.identity, noises[k:k + 1])
            out = render("portrait", g.network_radiance_fn(g.radiance_styles(lat)), resolution=res)
            value = float(loss_of(out, "portrait"))
            if value < best_loss:
                best, best_loss = k, value
            tick("choosing a starting avatar")
    latents = Latents(scene.identity.clone(), noises[best:best + 1].clone())
    timings["candidates"] = time.perf_counter() - t0

    def use_face_detail() -> None:  # the face texture's correction for these latents (rebuilt when it is tuned)
        if scene.face_volume is not None:
            scene.face_detail = g.face_detail_fn(latents, scene.body_shape, scene.face_volume)

    use_face_detail()

    # 2. latent optimisation of the radiance style (w)
    t0 = time.perf_counter()
    with torch.no_grad():
        w0 = g.radiance_styles(latents)
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=s.lr_latent)
    cams = ("portrait", "face")
    for step in range(s.latent_steps):
        cam = cams[step % 2]
        out = render(cam, g.network_radiance_fn(w), resolution=res)
        loss = loss_of(out, cam) + 1e-3 * (w - w0).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses["latent"].append(float(loss.detach()))
        tick("latent optimisation")
    pivot = w.detach().clone()
    timings["latent"] = time.perf_counter() - t0

    # 3. pivotal tuning of the radiance network around the pivot, with a locality regulariser: the network's
    # outputs for other styles at canonical points near the shell stay those of the original network
    t0 = time.perf_counter()
    frozen = copy.deepcopy(g.radiance)
    gen = torch.Generator().manual_seed(s.seed + 1)
    if s.tune_steps:
        params = list(g.radiance.parameters())
        groups = [{"params": params, "lr": s.lr_tune}]
        if g.face_texture is not None:  # the shared face texture holds the face's detail: tune it too, faster
            texture_net = [p for n, p in g.face_texture.named_parameters() if n != "texture"]
            groups += [{"params": [g.face_texture.texture], "lr": s.lr_tune * 10}, {"params": texture_net, "lr": s.lr_tune}]
            params = params + [g.face_texture.texture] + texture_net
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(groups, lr=s.lr_tune)
        probe_lat = Latents(torch.randn(2, C.IDENTITY_DIM, generator=gen).to(g.device),
                            noises[torch.randint(len(noises), (2,), generator=gen)])
        with torch.no_grad():
            probe_styles = g.radiance_styles(probe_lat, 0.7)
            hits, valid = g.bake_intersections()
            pts = hits[valid][torch.randperm(int(valid.sum()), generator=gen)[:2048]][None].expand(2, -1, -1)
            pts = pts.to(g.device).contiguous()
            ref = torch.cat(frozen(pts, probe_styles), -1) if g.cfg.radiance.kind == "siren" else None
        for step in range(s.tune_steps):
            cam = cams[step % 2]
            use_face_detail()
            out = render(cam, g.network_radiance_fn(pivot), resolution=res)
            loss = loss_of(out, cam)
            if ref is not None and s.w_locality:
                loss = loss + s.w_locality * (torch.cat(g.radiance(pts, probe_styles), -1) - ref).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses["tune"].append(float(loss.detach()))
            tick("tuning the radiance network")
        for p in params:
            p.requires_grad_(False)
        use_face_detail()
    del frozen
    timings["tune"] = time.perf_counter() - t0

    # 3b. the face texture (shared by identities, attached to the 3DMM face) on the baked level textures, at the
    # face crop's density: the detail the radiance network's 64^2 textures cannot hold
    t0 = time.perf_counter()
    textures = None
    if face_steps or detail_steps or g.superres is not None:
        with torch.no_grad():  # the level textures of the pivot: the radiance network is not tuned after this
            textures = g.bake_textures(pivot)

    def tune_face_texture(steps: int, key: str, label: str, render_step: Callable[[int], tuple[str, object]]):
        """Adam on the face texture (``lr_face``) and its network (a tenth of it) alone, ``steps`` times:
        ``render_step(step)`` -> (camera name, render); the losses go to ``losses[key]``."""
        net = [p for n, p in g.face_texture.named_parameters() if n != "texture"]
        for p in g.face_texture.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam([{"params": [g.face_texture.texture], "lr": s.lr_face},
                                {"params": net, "lr": s.lr_face * 0.1}])
        for step in range(steps):
            use_face_detail()
            cam, out = render_step(step)
            loss = loss_of(out, cam)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[key].append(float(loss.detach()))
            tick(label, 2)
        for p in g.face_texture.parameters():
            p.requires_grad_(False)
        use_face_detail()

    if face_steps:
        baked = g.texture_radiance_fn(textures)

        def face_step(step: int):
            cam = cams[(step + 1) % 2]  # face camera first
            return cam, render(cam, baked, resolution=s.face_resolution)

        tune_face_texture(face_steps, "face", "tuning the face texture", face_step)
    timings["face"] = time.perf_counter() - t0

    # 4. pivotal tuning of the super-resolution network on the baked level textures, at the output resolution
    t0 = time.perf_counter()
    sr_style = None
    if g.superres is not None:
        with torch.no_grad():
            sr_style = g.superres_styles(latents)
        if s.sr_steps:
            frozen = copy.deepcopy(g.superres)
            params = list(g.superres.parameters())
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.Adam(params, lr=s.lr_sr)
            with torch.no_grad():  # locality: other super-resolution styles on the same textures
                probe = g.superres_styles(Latents(torch.randn(1, C.IDENTITY_DIM, generator=gen).to(g.device),
                                                  noises[torch.randint(len(noises), (1,), generator=gen)]), 0.7)
                ref = frozen(textures, probe)
            del frozen
            lr_radiance = g.texture_radiance_fn(textures, with_features=True)
            scale = g.cfg.superres.scale
            ray_res = {"portrait": g.cfg.render.resolution,
                       "face": max(8, target.face.shape[-1] // scale // 2)}
            for step in range(s.sr_steps):
                cam = cams[step % 2]
                hr = g.super_resolve_textures(textures, sr_style)
                out = render(cam, lr_radiance, g.texture_radiance_fn(hr), resolution=ray_res[cam])
                loss = loss_of(out, cam)
                if s.w_locality and step % 4 == 0:
                    loss = loss + s.w_locality * (g.superres(textures, probe) - ref).abs().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses["sr"].append(float(loss.detach()))
                tick("tuning super-resolution", 3)
            for p in params:
                p.requires_grad_(False)
    timings["sr"] = time.perf_counter() - t0

    # 5. the face texture once more, on the output itself (super-resolved renders at the output resolution): the
    # detail no 64^2 render holds (a photo blurred to 64^2 and upsampled scores 21.4 dB in its face region)
    t0 = time.perf_counter()
    if detail_steps:
        with torch.no_grad():
            lr_radiance = g.texture_radiance_fn(textures, with_features=True)
            hr_radiance = (g.texture_radiance_fn(g.super_resolve_textures(textures, sr_style))
                           if g.superres is not None else None)
        scale = g.cfg.superres.scale if g.superres is not None else 1
        ray_res = {"portrait": g.cfg.render.resolution, "face": max(8, target.face.shape[-1] // scale)}

        def detail_step(step: int):
            cam = cams[step % 2]
            return cam, render(cam, lr_radiance, hr_radiance, resolution=ray_res[cam])

        tune_face_texture(detail_steps, "detail", "tuning face detail at the output resolution", detail_step)
    timings["detail"] = time.perf_counter() - t0
    pin_inputs(g, latents, pivot, sr_style)
    return Inversion(g, latents, scene.body_shape.clone(), pivot, losses, timings, best)


@torch.no_grad()
def pin_inputs(g, latents, radiance_style: Tensor, superres_style: Tensor | None = None) -> None:
    """Make ``latents`` map exactly onto the given styles at any truncation: shift the last bias of the radiance
    (and super-resolution) mapping by the difference and set the truncation averages to the styles."""
    raw = g.radiance_mapping(torch.cat([latents.identity, latents.noise], -1))[0]
    g.radiance_mapping.net[-1].bias.add_(radiance_style[0] - raw)
    g.radiance_style_avg.copy_(radiance_style[0])
    if superres_style is not None and g.superres_mapping is not None:
        raw = g.superres_mapping(torch.cat([latents.identity, latents.noise], -1))[0]
        g.superres_mapping.net[-1].bias.add_(superres_style[0] - raw)
        g.superres_style_avg.copy_(superres_style[0])
    g._bake_cache.clear()


# ------------------------------------------------------------------------------------------------ files
def save_avatar(out_dir: str | os.PathLike, inv: Inversion, target: Target, info: dict) -> Path:
    """Write ``samplers.safetensors`` (the pinned inputs as one-row tables) then ``avatar.safetensors`` (the
    tuned generator; ``info`` recorded with it), both atomically; returns the checkpoint path."""
    from portrait_core.data.samplers import LabelSampler
    from portrait_core.generator.checkpoint import save_generator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lab = target.labels
    sampler = LabelSampler.from_tensors(
        {"identity": inv.latents.identity.cpu(), "body_shape": inv.body_shape.cpu(),
         "appearance": inv.latents.noise.cpu(), "camera": lab["camera"], "pose": lab["pose"],
         "face_camera": lab["face_camera"], "expression": lab["expression"]},
        where=str(out_dir / SAMPLERS_FILE), source=f"photo inversion: {target.source}")
    sampler.save(out_dir / SAMPLERS_FILE)
    save_generator(out_dir / AVATAR_FILE, inv.generator, info={**info, "samplers": SAMPLERS_FILE})
    return out_dir / AVATAR_FILE


# ------------------------------------------------------------------------------------------------ measures
def _psnr(a: Tensor, b: Tensor, mask: Tensor) -> float:
    """PSNR (dB, colours in [0, 1]) over the pixels where ``mask`` > 0.5."""
    m = (mask > 0.5).expand_as(a)
    if not m.any():
        return float("nan")
    mse = (((a - b) / 2)[m]).square().mean()
    return float(-10 * torch.log10(mse.clamp_min(1e-10)))


def face_landmarks(g, labels: dict[str, Tensor], pose: Tensor | None = None, expression: Tensor | None = None) -> Tensor:
    """The 68 3DMM landmarks of the record's identity (posed, expressive), world metres [1, 68, 3]."""
    from portrait_core.geometry.rotations import transform_points

    pose = labels["pose"] if pose is None else pose
    expression = labels["expression"] if expression is None else expression
    T = g.body.face_transform(labels["body_shape"].to(g.device), pose.to(g.device))
    return transform_points(T[:, None], g.face.landmarks(labels["identity"].to(g.device), expression.to(g.device)))


def face_box_mask(g, target: Target, size: int) -> Tensor:
    """[1, 1, size, size]: the face region of the portrait (the box around the projected landmarks, raised by
    a third of its height to take in the forehead)."""
    lm = face_landmarks(g, target.labels)
    xy, _ = portrait_camera(target.labels["camera"].to(g.device)).project(lm, size, size)
    (x0, y0), (x1, y1) = xy[0].amin(0).tolist(), xy[0].amax(0).tolist()
    h = y1 - y0
    y0 -= h / 3
    mask = torch.zeros(1, 1, size, size)
    ys, xs = torch.arange(size)[:, None], torch.arange(size)[None, :]
    mask[0, 0] = ((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)).float()
    return mask


@torch.no_grad()
def psnr_report(avatar, target: Target) -> dict[str, float]:
    """PSNR at the model's output resolution: inside the matte, in the matte's face region, and of the face-camera
    crop inside its matte."""
    g = avatar.generator
    lab = target.labels
    out = avatar.render(lab["pose"], lab["expression"], portrait_camera(lab["camera"]))
    size = out.image.shape[-1]
    img, matte = _down(target.image, size), _down(target.matte, size)
    face_region = matte * face_box_mask(g, target, size)
    fo = avatar.render(lab["pose"], lab["expression"], face_camera(lab["face_camera"]))
    fs = fo.image.shape[-1]
    return {"resolution": size, "psnr_matte": _psnr(out.image.cpu(), img, matte),
            "psnr_face_region": _psnr(out.image.cpu(), img, face_region),
            "psnr_face_camera": _psnr(fo.image.cpu(), _down(target.face, fs), _down(target.face_matte, fs)),
            "alpha_iou": float(((out.alpha.cpu() > 0.5) & (matte > 0.5)).sum()
                               / ((out.alpha.cpu() > 0.5) | (matte > 0.5)).sum().clamp_min(1))}


def turn_pose(base: Tensor, yaw: float = 0.0, pitch: float = 0.0) -> Tensor:
    """``base`` [1, 6, 3] with the head turned by ``yaw`` (about +Y) and nodded by ``pitch`` (about +X) radians,
    split over the neck and head joints."""
    p = base.clone()
    neck, head = C.POSE_JOINTS.index(C.NECK), C.POSE_JOINTS.index(C.HEAD)
    p[:, neck, 1] += TURN_SPLIT[0] * yaw
    p[:, head, 1] += TURN_SPLIT[1] * yaw
    if pitch:
        p[:, neck, 0] += NOD[0] / sum(NOD) * pitch
        p[:, head, 0] += NOD[1] / sum(NOD) * pitch
    return p


def _track(ref: np.ndarray, img: np.ndarray, points: np.ndarray, radius: int = 4, half: int = 4) -> np.ndarray:
    """Where each point's (2 half + 1)^2 patch of grey image ``ref`` is found in ``img`` (normalised cross-
    correlation, searched within ``radius`` pixels): displacements [N, 2] in pixels (NaN where off the image)."""
    h, w = ref.shape
    out = np.full((len(points), 2), np.nan)
    for i, (x, y) in enumerate(np.round(points).astype(int)):
        if not (half + radius <= x < w - half - radius and half + radius <= y < h - half - radius):
            continue
        p = ref[y - half:y + half + 1, x - half:x + half + 1]
        p = p - p.mean()
        best, arg = -np.inf, (0, 0)
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                q = img[y + dy - half:y + dy + half + 1, x + dx - half:x + dx + half + 1]
                q = q - q.mean()
                score = float((p * q).sum() / (np.sqrt((p * p).sum() * (q * q).sum()) + 1e-8))
                if score > best:
                    best, arg = score, (dx, dy)
        out[i] = arg
    return out


@torch.no_grad()
def turned_view_checks(avatar, target: Target, turn: float = TURN, size: int | None = None) -> dict:
    """For the head turned by -turn and +turn radians (the photo's camera, pose and expression otherwise):

    * ``hole_fraction``: the fraction of the head's pixels (alpha > 0.5 in the face camera's view of the
      unturned head; the face camera follows the head) that lose their alpha in the turned view;
    * ``landmark_alpha_min``: the smallest alpha at the 68 projected face landmarks in the turned portrait view;
    * ``landmark_shape_drift``: the landmark shape (68 landmarks, seen through the face camera that follows the
      head) tracked by patch correlation from the unturned to the turned face, mean displacement after removing
      the mean shift, as a fraction of the inter-ocular distance (0: the face keeps its shape);
    * ``photo_error``: the photo's face region seen from the portrait camera orbited by the same angle about the
      look-at point: mean |colour difference| (colours in [-1, 1]) between the photo, reprojected through the
      unturned render's depth, and the orbited render, over the face-region pixels it sees (blur and ghosting
      both raise it; at the output resolution).
    """
    from portrait_core.generator.structures import Controls
    from portrait_core.geometry.camera import Camera
    from portrait_core.metrics.consistency import mean_over, reprojection_difference

    g = avatar.generator
    lab = target.labels
    res = size or g.cfg.render.resolution
    out = {}
    base_ctl = Controls(lab["pose"], lab["expression"], lab["body_shape"]).to(g.device)
    ref_cam = face_camera(g.face_camera(base_ctl).to_label25())
    ref = avatar.render(lab["pose"], lab["expression"], ref_cam, resolution=res)
    ref_grey = ((ref.image[0].mean(0) + 1) / 2).cpu().numpy()
    lm = face_landmarks(g, lab)
    lm_xy = ref_cam.project(lm, ref.image.shape[-2], ref.image.shape[-1])[0][0].cpu().numpy()
    iod = float(np.linalg.norm(lm_xy[36:42].mean(0) - lm_xy[42:48].mean(0)))
    cam = portrait_camera(lab["camera"]).to(g.device)
    front = avatar.render(lab["pose"], lab["expression"], cam)
    size = front.image.shape[-1]
    photo = _down(target.image, size).to(g.device)
    region = torch.minimum(face_box_mask(g, target, size).to(g.device) * _down(target.matte, size).to(g.device),
                           front.alpha)
    pitch, yaw, _ = cam.orbit_params(C.PORTRAIT_LOOK_AT)
    for sign, name in ((-1, "turn_minus"), (1, "turn_plus")):
        orbit = Camera.portrait(yaw + sign * turn, pitch).to(g.device)
        seen = avatar.render(lab["pose"], lab["expression"], orbit)
        diff, visible = reprojection_difference(photo, front.depth, region, cam, seen.image, seen.depth, orbit)
        photo_error = float(mean_over(diff, visible))
        pose = turn_pose(lab["pose"], sign * turn)
        ctl = Controls(pose, lab["expression"], lab["body_shape"]).to(g.device)
        fcam = face_camera(g.face_camera(ctl).to_label25())
        o = avatar.render(pose, lab["expression"], fcam, resolution=res)
        head = ref.alpha > 0.5
        holes = float(((o.alpha <= 0.5) & head).sum() / head.sum().clamp_min(1))
        grey = ((o.image[0].mean(0) + 1) / 2).cpu().numpy()
        d = _track(ref_grey, grey, lm_xy, radius=max(2, ref_grey.shape[0] // 32), half=max(2, ref_grey.shape[0] // 32))
        d = d[np.isfinite(d).all(1)]
        drift = float(np.linalg.norm(d - d.mean(0), axis=1).mean() / max(iod, 1e-6)) if len(d) else float("nan")
        po = avatar.render(pose, lab["expression"], portrait_camera(lab["camera"]), resolution=res)
        lmp = face_landmarks(g, lab, pose=pose)
        xy = portrait_camera(lab["camera"]).to(g.device).project(lmp, po.alpha.shape[-2], po.alpha.shape[-1])[0][0]
        xi = xy[:, 0].round().long().clamp(0, po.alpha.shape[-1] - 1)
        yi = xy[:, 1].round().long().clamp(0, po.alpha.shape[-2] - 1)
        inner = po.alpha[0, 0, yi[17:], xi[17:]]  # brows, nose, eyes, lips (the outline may turn away)
        out[name] = {"hole_fraction": round(holes, 5), "landmark_alpha_min": round(float(inner.min()), 4),
                     "landmark_shape_drift": round(drift, 4), "landmarks_tracked": int(len(d)),
                     "photo_error": round(photo_error, 4)}
    return out


# ------------------------------------------------------------------------------------------------ sheet
def _to_uint8(image: Tensor) -> np.ndarray:
    return ((image.clamp(-1, 1) + 1) * 127.5).round().byte()[0].permute(1, 2, 0).cpu().numpy()


def _shade(depth: Tensor, alpha: Tensor, camera) -> np.ndarray:
    """Grey Lambertian shading of the rendered surface (normals from the back-projected depth), white outside."""
    h, w = depth.shape[-2:]
    origins, dirs = camera.rays(h, w)
    fwd = camera.forward.reshape(1, 1, 3)
    t = depth.reshape(1, -1, 1) / (dirs * fwd).sum(-1, keepdim=True).clamp_min(1e-6)
    pts = (origins + dirs * t).reshape(h, w, 3)
    dx = torch.zeros_like(pts)
    dy = torch.zeros_like(pts)
    dx[:, 1:-1] = pts[:, 2:] - pts[:, :-2]
    dy[1:-1] = pts[2:] - pts[:-2]
    n = torch.cross(dy, dx, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    light = -camera.forward.reshape(3) + torch.tensor([0.3, 0.4, 0.0], dtype=n.dtype, device=n.device)
    light = light / light.norm()
    lam = (n @ light).abs().clamp(0, 1)
    a = alpha[0, 0]
    grey = (0.15 + 0.85 * lam) * a + (1 - a)
    return (grey.clamp(0, 1) * 255).round().byte()[..., None].expand(-1, -1, 3).cpu().numpy()


@torch.no_grad()
def render_sheet(avatar, target: Target, path: str | os.PathLike) -> Path:
    """photo | reconstruction | head turned -0.5 | +0.5 rad | nod | smile | open jaw | surface (depth-shaded),
    one labelled row at the model's output resolution, written atomically."""
    from PIL import Image, ImageDraw

    from portrait_core.atomic import atomic_path
    from portrait_core.face.model import EXPRESSION_NAMES

    lab = target.labels
    cam = portrait_camera(lab["camera"])
    pose, exp = lab["pose"], lab["expression"]
    smile, jaw = exp.clone(), exp.clone()
    smile[0, EXPRESSION_NAMES["smile"]] = SMILE
    jaw[0, EXPRESSION_NAMES["jaw_open"]] = JAW_OPEN
    frames = [("reconstruction", pose, exp), (f"turn -{TURN:g}", turn_pose(pose, -TURN), exp),
              (f"turn +{TURN:g}", turn_pose(pose, TURN), exp), ("nod", turn_pose(pose, pitch=sum(NOD)), exp),
              ("smile", pose, smile), ("open jaw", pose, jaw)]
    outs = avatar.render(torch.cat([f[1] for f in frames]), torch.cat([f[2] for f in frames]), cam)
    size = outs.image.shape[-1]
    tiles = [("photo", _to_uint8(_down(target.image, size)))]
    tiles += [(label, _to_uint8(outs.image[i:i + 1])) for i, (label, _, _) in enumerate(frames)]
    tiles.append(("surface", _shade(outs.depth[:1], outs.alpha[:1], cam.to(outs.depth.device))))
    pad = 14
    sheet = Image.new("RGB", (len(tiles) * size, size + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, tile) in enumerate(tiles):
        sheet.paste(Image.fromarray(tile), (i * size, pad))
        draw.text((i * size + 3, 1), label, fill=(0, 0, 0))
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


# ------------------------------------------------------------------------------------------------ one call
def run_invert(out_dir: str | os.PathLike, *, photo: str | os.PathLike | None = None,
               prepared: str | os.PathLike | None = None, index: int = 0, settings: InvertSettings | None = None,
               checkpoint: str | os.PathLike | None = None, glb: bool = False, checks: bool = True,
               progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
               log: Callable[[str], None] | None = None) -> dict:
    """Photo (or prepared record) -> ``out_dir`` with avatar.safetensors, samplers.safetensors, sheet.png,
    report.json (and avatar.glb with ``glb``). Returns the report. ``checkpoint``: the model to invert into
    (default: the shipped one)."""
    from portrait_core.generator.loading import obtain_generator, samplers_for, with_face_texture

    settings = (settings or InvertSettings()).validate()
    progress = progress or (lambda _x, _label: None)
    log = log or (lambda _m: None)
    stop = should_stop or (lambda: False)
    if (photo is None) == (prepared is None):
        raise InvertError("give a photo or a prepared dataset folder (one of them)")
    t_start, cpu_start = time.perf_counter(), time.process_time()
    if photo is not None:
        check_photo_file(photo)  # before any output: a bad file is one error line
        progress(0.0, "preparing the photo")
        g = obtain_generator(str(checkpoint) if checkpoint else None, None, log=log)
        target = target_from_photo(photo, g.cfg.render.resolution * (g.cfg.superres.scale if g.superres else 1))
    else:
        target = target_from_dataset(prepared, index)
        progress(0.0, "loading the model")
        g = obtain_generator(str(checkpoint) if checkpoint else None, None, log=log)
    for note in target.notes:
        log(f"note: {note}")
    if settings.attach_face_texture and g.face_texture is None and (settings.face_steps or settings.detail_steps):
        g = with_face_texture(g, settings.seed)  # the avatar's own face detail, learned from the photo alone
    t_prepared = time.perf_counter()
    samplers = samplers_for(g)
    if stop():
        raise InvertCancelled("cancelled")
    inv = invert(g, target, settings, samplers, progress, stop)
    progress(0.95, "baking the avatar")
    t_baked = time.perf_counter()
    avatar = g.make_avatar(inv.latents, inv.body_shape, truncation=0.7)
    metrics = psnr_report(avatar, target)
    timings = {"prepare": t_prepared - t_start, **inv.timings}
    base_info = dict(getattr(g, "checkpoint_info", {}) or {})
    info = {k: v for k, v in base_info.items() if k in ("noise_latent", "data")}
    info.update({"method": "busto-photo-inversion", "source_checkpoint": str(getattr(g, "checkpoint_path", "")),
                 "photo": str(photo if photo is not None else f"{prepared}#{index}"),
                 "pinned_inputs": {"identity": inv.latents.identity[0].tolist(),
                                   "appearance": inv.latents.noise[0].tolist(),
                                   "body_shape": inv.body_shape[0].tolist()},
                 "settings": asdict(settings), "reconstruction": metrics})
    if "noise_latent" not in info:  # a model with N(0, I) noise: the pinned code still comes from the samplers
        info["noise_latent"] = {"kind": "appearance_code", "module": "pinned by portrait_core.photo.invert"}
    out_dir = Path(out_dir)
    ckpt = save_avatar(out_dir, inv, target, info)
    timings["bake_and_write"] = time.perf_counter() - t_baked
    timings["invert_tune_bake"] = time.perf_counter() - t_prepared
    # process CPU seconds (all threads): a load-independent figure on a shared machine
    timings["invert_tune_bake_cpu"] = time.process_time() - cpu_start
    report = {"checkpoint": str(ckpt), "samplers": str(out_dir / SAMPLERS_FILE), "photo": info["photo"],
              "body_shape": [round(float(x), 6) for x in inv.body_shape[0].tolist()],
              "reconstruction": metrics, "settings": asdict(settings), "candidate": inv.candidate,
              "final_losses": {k: (v[-1] if v else None) for k, v in inv.losses.items()}}
    if checks:
        progress(0.96, "checking turned views")
        t0 = time.perf_counter()
        report["initial_reconstruction"] = _initial_psnr(checkpoint, target, inv.latents, samplers)
        report["turned_views"] = turned_view_checks(avatar, target)
        report["sheet"] = str(render_sheet(avatar, target, out_dir / SHEET_FILE))
        timings["checks_and_sheet"] = time.perf_counter() - t0
    if glb:
        progress(0.98, "exporting the rigged glTF")
        from portrait_core.export.pipeline import export_avatar

        t0 = time.perf_counter()
        report["glb"] = str(export_avatar(avatar, out_dir / GLB_FILE, resolution=128, morphs=8).path)
        timings["glb"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    timings["total_cpu"] = time.process_time() - cpu_start
    report["timings"] = {k: round(v, 2) for k, v in timings.items()}
    report["threads"] = torch.get_num_threads()
    from portrait_core.atomic import atomic_write_json

    atomic_write_json(out_dir / REPORT_FILE, report, indent=1)
    progress(1.0, "done")
    return report


@torch.no_grad()
def _initial_psnr(checkpoint, target: Target, latents, samplers) -> dict:
    """The reconstruction of the starting avatar (the chosen appearance code in the untouched model)."""
    from portrait_core.generator.loading import obtain_generator

    g0 = obtain_generator(str(checkpoint) if checkpoint else None, None, log=lambda _m: None)
    return psnr_report(g0.make_avatar(latents, target.labels["body_shape"], truncation=1.0), target)


def load_report(out_dir: str | os.PathLike) -> dict:
    return json.loads((Path(out_dir) / REPORT_FILE).read_text(encoding="utf-8"))
