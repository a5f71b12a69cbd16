"""Photos -> Busto dataset: ``prepare_photo`` (one photo in memory) and ``prepare`` (a dataset folder).

For each photo (docs/photo.md): decode it (EXIF orientation applied, any colour mode to RGB, huge images
downscaled to ``MAX_SIDE``), detect the faces (the largest is used; a note says how many there were), the 478
face-mesh landmarks of that face (mapped to iBUG-68) and the pose landmarks around it; fit the synthetic 3DMM
(identity, expression), the SMPL-layout body (pose code, betas) and the portrait camera (yaw, pitch) plus the photo's
alignment (``portrait_core.photo.fit``); resample the photo into the portrait camera's framing, matte it
(mediapipe selfie segmentation), composite it on white, cut the face-camera crop, and write the record that
``labels.json`` holds (the same fields as ``synth`` and ``convert`` write; see docs/data-format.md).

Bad input is a ``PhotoError`` (a ``ValueError``): one line naming the file and the problem. ``prepare`` writes the
whole dataset into a temporary folder beside ``out`` and renames it into place at the end, so nothing is ever
written half.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from portrait_core import conventions as C

__all__ = ["PhotoError", "PreparedPhoto", "prepare_photo", "prepare", "load_photo", "IMAGE_SUFFIXES", "MAX_SIDE",
           "MIN_FACE_PX", "GENERATOR"]

GENERATOR = "busto-prepare 1"
#: photos larger than this (longest side, pixels) are downscaled before anything else
MAX_SIDE = 2048
#: a detected face narrower than this (pixels of the photo as given) is refused
MIN_FACE_PX = 40
#: images smaller than this (longest side) are upsampled for detection only
_DETECT_MIN_SIDE = 384
#: file suffixes ``prepare`` picks up from a folder (a file named explicitly may have any suffix)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
#: the largest image (pixels) decoded at all; above it the file is refused before decoding
MAX_DECODE_PIXELS = 200_000_000


class PhotoError(ValueError):
    """A photo that cannot be prepared; the message names the file and the problem."""


@dataclass
class PreparedPhoto:
    """One prepared photo. Images are float32 in 0..1, ``resolution`` / ``face_resolution`` squares.

    ``image``: the aligned portrait in Busto's portrait-camera framing, composited on white (as a dataset stores
    it); ``photo``: the same before compositing; ``matte`` [H, W]: foreground probability; ``face``: the
    face-camera crop (on white). ``record``: the labels.json record (paths ``images/NAME.png`` etc.; the fit's
    quality and notes under ``extra``). Landmarks are in portrait pixels at ``resolution`` (``Camera.project``'s
    convention: pixel (i, j)'s centre at (j, i)): ``landmarks_detected`` [68, 2] (mediapipe mapped to iBUG-68),
    ``landmarks_fitted`` [68, 2] (the fitted 3DMM's), ``mesh_landmarks`` [478, 2] (all of mediapipe's),
    ``shoulders_detected`` / ``shoulders_fitted`` [2, 2] (subject's left, right; detected None when not seen).
    ``geometry``: the fitted meshes in the canonical frame (``face_vertices``, ``face_faces``, ``body_vertices``,
    ``body_faces``, ``landmarks``, ``head_transform``, ``face_centre``). ``landmark_error``: mean fitted-vs-
    detected distance over the 68 landmarks / the detected outer-eye-corner distance.
    """

    name: str
    source: Path
    image: np.ndarray
    photo: np.ndarray
    matte: np.ndarray
    face: np.ndarray
    record: dict
    landmarks_detected: np.ndarray
    landmarks_fitted: np.ndarray
    mesh_landmarks: np.ndarray
    shoulders_detected: np.ndarray | None
    shoulders_fitted: np.ndarray
    geometry: dict
    landmark_error: float
    notes: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def camera(self) -> np.ndarray:
        """The portrait camera label [25]."""
        return np.asarray(self.record["camera"], dtype=np.float64)

    @property
    def face_camera(self) -> np.ndarray:
        """The face camera label [25]."""
        return np.asarray(self.record["face_camera"], dtype=np.float64)


# --- decoding --------------------------------------------------------------------------------------------------

def load_photo(path: str | os.PathLike, max_side: int = MAX_SIDE) -> tuple[np.ndarray, list[str]]:
    """Decode a photo to uint8 RGB [H, W, 3] with its EXIF orientation applied and the longest side at most
    ``max_side`` (LANCZOS); returns (image, notes). PhotoError naming the file for anything that is not a
    readable image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    notes: list[str] = []
    if not path.exists():
        raise PhotoError(f"{path}: not found")
    if path.is_dir():
        raise PhotoError(f"{path}: is a folder, not a photo")
    if not path.is_file():
        raise PhotoError(f"{path}: not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_DECODE_PIXELS
            try:
                with Image.open(path) as im:
                    w, h = im.size
                    if w * h > MAX_DECODE_PIXELS:
                        raise PhotoError(f"{path}: {w}x{h} pixels, above the limit of {MAX_DECODE_PIXELS}")
                    if im.format == "JPEG" and max(w, h) > 2 * max_side:
                        im.draft("RGB", (max_side, max_side))  # decode at a reduced scale
                    im.load()
                    orientation = im.getexif().get(0x0112, 1)
                    im = ImageOps.exif_transpose(im)
                    mode = im.mode
                    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                        rgba = im.convert("RGBA")
                        im = Image.new("RGB", rgba.size, (255, 255, 255))
                        im.paste(rgba, mask=rgba.getchannel("A"))
                        notes.append("transparent areas composited on white")
                    elif mode.startswith("I;16") or mode == "I":
                        arr = np.asarray(im, dtype=np.float64)
                        arr = 255.0 * arr / max(float(arr.max()), 1.0)
                        im = Image.fromarray(arr.astype(np.uint8)).convert("RGB")
                    else:
                        im = im.convert("RGB")
            finally:
                Image.MAX_IMAGE_PIXELS = saved_limit
    except PhotoError:
        raise
    except UnidentifiedImageError:
        raise PhotoError(f"{path}: not an image file (the format is not recognised)") from None
    except Image.DecompressionBombError as e:
        raise PhotoError(f"{path}: too large to decode ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise PhotoError(f"{path}: cannot decode the image ({e})") from None
    if orientation not in (1, None):
        notes.append(f"rotated upright (EXIF orientation {orientation})")
    if mode in ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "F"):
        notes.append("grayscale photo")
    if min(im.size) < 1:
        raise PhotoError(f"{path}: empty image ({im.size[0]}x{im.size[1]})")
    if max(im.size) > max_side:
        old = im.size
        k = max_side / max(old)
        im = im.resize((max(1, round(old[0] * k)), max(1, round(old[1] * k))), Image.Resampling.LANCZOS)
        notes.append(f"downscaled from {w}x{h} to {im.size[0]}x{im.size[1]}")
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise PhotoError(f"{path}: cannot decode the image (unexpected shape {arr.shape})")
    return np.ascontiguousarray(arr), notes


# --- detection -------------------------------------------------------------------------------------------------

def _detect(path: Path, photo: np.ndarray, notes: list[str]) -> dict:
    """Faces, the largest face's landmarks and the pose landmarks around it (photo pixels)."""
    from PIL import Image

    from . import detect

    H, W = photo.shape[:2]
    up = 1
    if max(H, W) < _DETECT_MIN_SIDE:  # tiny photos: upsample for the detectors only
        up = math.ceil(_DETECT_MIN_SIDE / max(H, W))
        big = np.asarray(Image.fromarray(photo).resize((W * up, H * up), Image.Resampling.BICUBIC))
    else:
        big = photo
    faces = detect.detect_faces(big)
    if not faces:
        raise PhotoError(f"{path}: no face found")
    if len(faces) > 1:
        notes.append(f"{len(faces)} faces found, using the largest")
    box = [v / up for v in faces[0].box]
    fw = box[2] - box[0]
    if fw < MIN_FACE_PX:
        raise PhotoError(f"{path}: the face is too small ({fw:.0f} px wide; at least {MIN_FACE_PX} px needed)")
    cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])

    def crop(x0: float, y0: float, x1: float, y1: float) -> tuple[np.ndarray, np.ndarray]:
        """The photo region (clipped), at the detection scale; returns (crop, offset in photo pixels)."""
        x0, y0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
        x1, y1 = min(W, int(math.ceil(x1))), min(H, int(math.ceil(y1)))
        return big[y0 * up: y1 * up, x0 * up: x1 * up], np.array([x0, y0], np.float64)

    # the face mesh on a square around the chosen face only (so it cannot pick another face)
    fcrop, foff = crop(cx - 1.2 * fw, cy - 1.3 * fw, cx + 1.2 * fw, cy + 1.1 * fw)
    mesh = detect.face_mesh(fcrop)
    if mesh is None:
        raise PhotoError(f"{path}: a face was found but its landmarks could not be detected")
    mesh = mesh / up
    mesh[:, :2] += foff
    # the pose landmarks on the chosen person's head and shoulders: a wide crop, then a narrow one when the
    # shoulders found do not belong to this face (another person beside it)
    shoulders, depth = None, None
    ids = [detect.POSE_LEFT_SHOULDER, detect.POSE_RIGHT_SHOULDER]
    for half in (3.0, 1.6):
        pcrop, poff = crop(cx - half * fw, cy - 2.0 * fw, cx + half * fw, cy + 4.0 * fw)
        pose = detect.pose_landmarks(pcrop)
        if pose is None or not (pose[1][ids] >= detect.MIN_VISIBILITY).all():
            continue
        xyz = pose[0]
        sh = xyz[ids, :2] / up + poff
        mid, span = sh.mean(0), float(np.linalg.norm(sh[0] - sh[1]))
        if abs(mid[0] - cx) < 1.0 * fw and 0.3 * fw < mid[1] - cy < 4.0 * fw and 0.8 * fw < span < 5.0 * fw \
                and sh[0, 0] > sh[1, 0]:  # the subject's left shoulder is on the image's right
            shoulders, depth = sh, float(xyz[ids[0], 2] - xyz[ids[1], 2]) / up
            break
    if shoulders is None:
        notes.append("shoulders not visible: body pose and shape come from the priors")
    return {"faces": faces, "box": box, "mesh": mesh, "shoulders": shoulders, "shoulder_depth": depth}


# --- resampling --------------------------------------------------------------------------------------------------

def _aligned(photo: np.ndarray, fit, size: int) -> np.ndarray:
    """The photo resampled into the portrait framing at ``size``^2 (uint8 RGB; outside the photo: white)."""
    from PIL import Image

    im = Image.fromarray(photo)
    scale, centre = fit.scale, np.asarray(fit.centre, np.float64)
    k = int(scale // (2 * size))
    if k >= 2:  # much larger than the output: box-reduce first (anti-aliasing)
        im = im.reduce(k)
        scale, centre = scale / k, centre / k
    c, s = math.cos(fit.roll), math.sin(fit.roll)
    M = np.array([[c, -s], [s, c]]) * scale / size  # output continuous pixels -> photo continuous pixels
    off = centre - M @ np.array([size / 2, size / 2])
    data = (M[0, 0], M[0, 1], off[0], M[1, 0], M[1, 1], off[1])
    out = im.transform((size, size), Image.Transform.AFFINE, data, Image.Resampling.BICUBIC,
                       fillcolor=(255, 255, 255))
    return np.asarray(out, dtype=np.uint8)


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if arr.shape[0] == size:
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.LANCZOS))


# --- one photo ---------------------------------------------------------------------------------------------------

def _models(face_model, body_model):
    if face_model is None:
        face_model = _default_face()
    if body_model is None:
        body_model = _default_body()
    return face_model, body_model


_CACHE: dict[str, object] = {}


def _default_face():
    if "face" not in _CACHE:
        from portrait_core.face import FaceModel

        _CACHE["face"] = FaceModel.synthetic()
    return _CACHE["face"]


def _default_body():
    if "body" not in _CACHE:
        from portrait_core.body.model import BodyModel

        _CACHE["body"] = BodyModel.synthetic()
    return _CACHE["body"]


def _safe_name(stem: str) -> str:
    from portrait_core.data.safety import name_problem

    name = "".join(ch if (ch.isalnum() or ch in "-_.") else "_" for ch in stem).strip(".") or "photo"
    name = name[:120]
    return name if name_problem(name) is None else "photo"


def prepare_photo(path: str | os.PathLike, *, face_model=None, body_model=None, resolution: int = 128,
                  face_resolution: int = 64, name: str | None = None) -> PreparedPhoto:
    """Prepare one photo (see the module docstring). ``face_model``: a ``FaceModel`` (default the synthetic 3DMM;
    ``FaceModel.from_mat`` for BFM09); ``body_model``: a ``BodyModel`` (default the synthetic SMPL-layout body).
    Raises ``PhotoError`` (one line naming the file) for bad input; nothing is written."""
    import torch

    from portrait_core.data.labels import make_record
    from portrait_core.data.readers import crop_face
    from portrait_core.data.safety import check_resolution
    from portrait_core.geometry.camera import Camera

    from . import detect
    from .fit import FitTargets, fit_photo, posed_geometry

    check_resolution(resolution, "prepare: resolution")
    check_resolution(face_resolution, "prepare: face_resolution")
    path = Path(path)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    photo, notes = load_photo(path)
    timings["decode"] = time.perf_counter() - t
    face_model, body_model = _models(face_model, body_model)

    t = time.perf_counter()
    det = _detect(path, photo, notes)
    timings["detect"] = time.perf_counter() - t
    lm = det["mesh"][list(detect.MP_TO_IBUG68), :2]
    t = time.perf_counter()
    fit = fit_photo(FitTargets(lm, det["shoulders"], det["shoulder_depth"]), face_model, body_model)
    timings["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    hi = int(min(max(resolution, 4 * face_resolution, round(fit.scale)), 1024))
    aligned_hi = _aligned(photo, fit, hi)
    matte_hi = detect.selfie_matte(aligned_hi)
    on_white_hi = (aligned_hi.astype(np.float32) * matte_hi[..., None] + 255.0 * (1.0 - matte_hi[..., None]))
    on_white_hi = np.clip(np.rint(on_white_hi), 0, 255).astype(np.uint8)
    cam = fit.camera()
    geom = posed_geometry(fit, face_model, body_model)
    face_cam = Camera.face(torch.as_tensor(geom["head_transform"])[None], torch.as_tensor(geom["face_centre"])[None],
                           yaw=torch.tensor([fit.yaw], dtype=torch.float64),
                           pitch=torch.tensor([fit.pitch], dtype=torch.float64))
    cam25 = cam.to_label25()[0].numpy()
    face25 = face_cam.to_label25()[0].numpy()
    face_img = _resize(crop_face(on_white_hi, cam25, face25, min(4 * face_resolution, hi)), face_resolution)
    image = _resize(on_white_hi, resolution)
    photo_r = _resize(aligned_hi, resolution)
    matte_u8 = _resize(np.clip(np.rint(matte_hi * 255), 0, 255).astype(np.uint8), resolution)
    timings["align"] = time.perf_counter() - t

    # coverage and size notes
    corners = fit.uv_to_photo(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64))
    H, W = photo.shape[:2]
    inside = all(0 <= x <= W and 0 <= y <= H for x, y in corners)
    if not inside:
        notes.append("the portrait framing reaches past the photo's edge (filled with white)")
    face_px = fit.scale * C.FACE_RADIUS / C.PORTRAIT_RADIUS  # both cameras have a 12 degree field of view
    if face_px < face_resolution:
        notes.append(f"the face crop is upsampled ({face_px:.0f} photo pixels for {face_resolution}^2)")

    name = name or _safe_name(path.stem)
    pitch, yaw, radius = (float(v[0]) for v in cam.orbit_params(C.PORTRAIT_LOOK_AT))
    err = fit.error_iod
    record = make_record(
        name, image=f"images/{name}.png", mask=f"masks/{name}.png", face=f"faces/{name}.png", camera=cam25,
        face_camera=face25, pose=fit.pose, expression=fit.expression, identity=fit.identity,
        body_shape=fit.body_shape, camera_angles={"pitch": pitch, "yaw": yaw, "radius": radius},
        unknown=None if det["shoulders"] is not None else ["pose", "body_shape"],
        extra={"source": path.name, "photo_size": [int(W), int(H)], "faces_found": len(det["faces"]),
               "landmark_error_iod": round(err, 5), "landmark_error_px": round(float(fit.error_px.mean()), 3),
               "inter_ocular_px": round(fit.inter_ocular, 2),
               "alignment": {"scale_px": round(fit.scale, 3), "centre_px": [round(float(v), 3) for v in fit.centre],
                             "roll": round(fit.roll, 6)},
               "fit_iterations": fit.steps, "notes": list(notes)})

    def to_portrait(q: np.ndarray) -> np.ndarray:
        return fit.photo_to_uv(q) * resolution - 0.5

    f32 = lambda a: a.astype(np.float32) / 255.0
    return PreparedPhoto(
        name=name, source=path, image=f32(image), photo=f32(photo_r), matte=f32(matte_u8), face=f32(face_img),
        record=record, landmarks_detected=to_portrait(lm), landmarks_fitted=to_portrait(fit.landmarks_fitted),
        mesh_landmarks=to_portrait(det["mesh"][:, :2]),
        shoulders_detected=None if det["shoulders"] is None else to_portrait(det["shoulders"]),
        shoulders_fitted=to_portrait(fit.shoulders_fitted), geometry=geom, landmark_error=err, notes=notes,
        timings=timings)


# --- a dataset ---------------------------------------------------------------------------------------------------

def collect_photos(paths) -> list[Path]:
    """Expand folders (their image files by suffix, sorted, not recursive); files given by name are kept as they
    are (a non-image is reported when decoded). PhotoError for a missing path or a folder with no images."""
    out: list[Path] = []
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PhotoError(f"{p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise PhotoError(f"{p}: not found")
    if not out:
        raise PhotoError("prepare: no photos given")
    return out


def _unique_names(photos: list[Path]) -> list[str]:
    names, seen = [], set()
    for p in photos:
        base = _safe_name(p.stem)
        name, k = base, 2
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        seen.add(name)
        names.append(name)
    return names


def prepare(paths, out: str | os.PathLike, *, resolution: int = 128, face_resolution: int = 64, face_model=None,
            body_model=None, on_error: str = "raise", contact_sheet: bool = True, progress=None) -> Path:
    """Prepare photos (files and/or folders) into a new Busto dataset folder ``out`` (which must not exist or be
    empty): ``images/``, ``masks/``, ``faces/``, ``labels.json`` and ``contact_sheet.png``. Everything is written
    into a temporary folder beside ``out`` and renamed into place at the end. ``on_error='skip'`` leaves out
    photos that cannot be prepared (listed in ``info.skipped``) instead of failing; a run where none succeeds
    fails. ``progress(i, n, prepared_or_error)`` is called after each photo. Returns ``out``."""
    from PIL import Image

    from portrait_core.data.labels import make_info, write_labels

    from .sheet import contact_sheet as draw_sheet

    if on_error not in ("raise", "skip"):
        raise ValueError(f"prepare: on_error must be 'raise' or 'skip', got {on_error!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PhotoError(f"{out}: already exists and is not an empty folder (prepare writes a new dataset)")
    photos = collect_photos(paths)
    names = _unique_names(photos)
    face_model, body_model = _models(face_model, body_model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for sub in ("images", "masks", "faces"):
            (tmp / sub).mkdir()
        records, prepared, skipped = [], [], []
        t0 = time.perf_counter()
        for i, (p, name) in enumerate(zip(photos, names)):
            try:
                r = prepare_photo(p, face_model=face_model, body_model=body_model, resolution=resolution,
                                  face_resolution=face_resolution, name=name)
            except PhotoError as e:
                if on_error == "raise":
                    raise
                skipped.append(str(e))
                if progress:
                    progress(i, len(photos), e)
                continue
            u8 = lambda a: np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)
            Image.fromarray(u8(r.image)).save(tmp / "images" / f"{name}.png")
            Image.fromarray(u8(r.matte)).save(tmp / "masks" / f"{name}.png")
            Image.fromarray(u8(r.face)).save(tmp / "faces" / f"{name}.png")
            records.append(r.record)
            prepared.append(r)
            if progress:
                progress(i, len(photos), r)
        if not records:
            raise PhotoError(f"{out}: none of the {len(photos)} photo(s) could be prepared: {skipped[0]}")
        errs = [r.landmark_error for r in prepared]
        info = make_info(resolution=resolution, face_resolution=face_resolution, yaw_mode="frontal",
                         generator=GENERATOR, seed=None, count=len(records), body_model=_model_name(body_model),
                         face_model=_model_name(face_model), background="white",
                         landmarks="mediapipe 0.10.21 face mesh mapped to iBUG-68",
                         landmark_error_iod_mean=round(float(np.mean(errs)), 5),
                         seconds=round(time.perf_counter() - t0, 2), skipped=skipped)
        if contact_sheet:
            draw_sheet(prepared, tmp / "contact_sheet.png")
        write_labels(tmp, info, records)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _model_name(model) -> str:
    name = str(getattr(model, "name", getattr(model, "source", "")))
    return "synthetic" if name in ("synthetic", "<synthetic BFM>") else name
