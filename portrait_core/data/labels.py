"""Busto's dataset label format (``labels.json``) and its validator. See docs/data-format.md.

A dataset folder holds ``labels.json`` (dataset-level ``info`` plus one record per image), ``images/*.png``
(8-bit sRGB portraits on white), ``masks/*.png`` (8-bit alpha), ``faces/*.png`` (face-camera crops) and
optionally ``meshes/*.ply``. Paths in records are relative to the folder, with '/' separators.

Conventions (docs/CONVENTIONS.md): cameras are the 25-float EG3D label (cam2world 4x4 row-major, OpenCV axes,
metres in the canonical frame whose origin is the identity's canonical neck joint J12; then the 3x3
intrinsics normalised by image size); ``pose`` is [6, 3] axis-angle (radians) of SMPL joints 12..17 relative to
the canonical pose; ``expression`` [64] and ``identity`` [80] are 3DMM coefficients; ``body_shape`` [10] SMPL
betas. Pure Python/numpy: no torch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "busto-portraits"
FORMAT_VERSION = 1
LABELS_FILE = "labels.json"

#: record field -> shape of its numeric array
ARRAY_FIELDS: dict[str, tuple[int, ...]] = {
    "camera": (25,),
    "face_camera": (25,),
    "pose": (6, 3),
    "expression": (64,),
    "identity": (80,),
    "body_shape": (10,),
}
#: record fields naming files (relative paths); 'mesh' is a dict of optional paths
FILE_FIELDS = ("image", "mask", "face")
REQUIRED_FIELDS = ("name", "image", *ARRAY_FIELDS)
#: info keys every dataset states
INFO_FIELDS = ("resolution", "yaw_mode", "generator", "seed")
YAW_MODES = ("frontal", "360", "unknown")


class LabelError(ValueError):
    """A label problem; ``problems`` lists every one found as 'file: field: message'."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        shown = "\n  ".join(self.problems[:20]) + (f"\n  ... {n - 20} more" if n > 20 else "")
        super().__init__(f"{n} label problem(s):\n  {shown}")


@dataclass
class Problem:
    """One validation finding: the file, the field (JSON path) and what is wrong."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


# --- writing -------------------------------------------------------------------------------------------------

def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = None) -> None:
    """Write JSON to ``path`` via a temp file in the same folder and ``os.replace`` (never half-written)."""
    from portrait_core.atomic import atomic_write_json

    atomic_write_json(path, data, indent=indent)  # fsynced, the umask's permissions (not mkstemp's 0600)


def _rounded(a: Any, digits: int = 7) -> Any:
    """numpy/tensor -> nested lists of Python floats rounded to ``digits`` significant-ish decimals."""
    arr = np.asarray(a, dtype=np.float64)
    return np.round(arr, digits).tolist()


def make_record(name: str, *, image: str, mask: str | None, face: str | None, camera, face_camera, pose,
                expression, identity, body_shape, camera_angles: dict | None = None,
                mesh: dict | None = None, extra: dict | None = None, unknown: list[str] | None = None) -> dict:
    """One image's record (plain JSON data). Arrays are converted and rounded to 7 decimals.

    ``camera_angles`` = {'pitch', 'yaw', 'radius'} (radians, metres) of the portrait camera around its look-at;
    ``unknown`` lists label fields that the source did not provide (filled with zeros/defaults).
    """
    rec: dict[str, Any] = {"name": name, "image": image, "mask": mask, "face": face}
    if mesh:
        rec["mesh"] = mesh
    for key, value in (("camera", camera), ("face_camera", face_camera), ("pose", pose),
                       ("expression", expression), ("identity", identity), ("body_shape", body_shape)):
        arr = np.asarray(value, dtype=np.float64).reshape(ARRAY_FIELDS[key])
        rec[key] = _rounded(arr)
    if camera_angles is not None:
        rec["camera_angles"] = {k: round(float(v), 7) for k, v in camera_angles.items()}
    if unknown:
        rec["unknown"] = sorted(unknown)
    if extra:
        rec["extra"] = extra
    return rec


def make_info(*, resolution: int, yaw_mode: str, generator: str, seed: int | None, count: int,
              face_resolution: int | None = None, **more: Any) -> dict:
    """Dataset-level info; ``yaw_mode`` is 'frontal', '360' or 'unknown'."""
    info = {"resolution": int(resolution), "face_resolution": face_resolution, "yaw_mode": yaw_mode,
            "generator": generator, "seed": seed, "count": int(count)}
    info.update(more)
    return info


def write_labels(root: str | os.PathLike, info: dict, records: list[dict]) -> Path:
    """Write ``root/labels.json`` atomically: {'format', 'format_version', 'info', 'images': records}."""
    path = Path(root) / LABELS_FILE
    write_json_atomic(path, {"format": FORMAT, "format_version": FORMAT_VERSION, "info": info, "images": records})
    return path


# --- reading and validation ----------------------------------------------------------------------------------

def load_labels_json(path: str | os.PathLike, text: str | bytes | None = None) -> dict:
    """Parse a labels.json (from disk, or ``text``/bytes read from an archive); errors name the file: missing,
    not UTF-8 (with the byte offset), not JSON (line and column), or nested too deeply."""
    from .safety import MAX_FILE_BYTES, LimitError, decode_text

    path = str(path)
    try:
        if text is None:
            p = Path(path)
            if p.is_file() and p.stat().st_size > MAX_FILE_BYTES:
                raise LimitError(f"{path}: (file): {p.stat().st_size} bytes, above the limit of {MAX_FILE_BYTES}")
            text = p.read_bytes()
        if isinstance(text, bytes):
            text = decode_text(text, path)
        return json.loads(text)
    except FileNotFoundError:
        raise LabelError(f"{path}: (file): not found") from None
    except IsADirectoryError:
        raise LabelError(f"{path}: (file): is a folder, not a file") from None
    except json.JSONDecodeError as e:
        raise LabelError(f"{path}: (json): not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise LabelError(f"{path}: (json): nested too deeply") from None
    except LabelError:
        raise
    except ValueError as e:  # e.g. an integer literal with more digits than Python converts
        raise LabelError(f"{path}: (json): cannot be parsed: {e}") from None


def _check_array(value: Any, shape: tuple[int, ...]) -> str | None:
    """Reason why ``value`` is not a finite numeric array of ``shape``, or None."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError, RecursionError):
        return f"expected numbers of shape {list(shape)}, got {type(value).__name__} that is not numeric"
    if arr.shape != shape:
        return f"expected shape {list(shape)}, got {list(arr.shape)}"
    if not np.all(np.isfinite(arr)):
        return "contains NaN or infinity"
    return None


def check_camera25(label: np.ndarray) -> str | None:
    """Reason why a 25-float camera label is not a rigid cam2world + normalised intrinsics, or None."""
    m = np.asarray(label, dtype=np.float64)[:16].reshape(4, 4)
    k = np.asarray(label, dtype=np.float64)[16:].reshape(3, 3)
    R = m[:3, :3]
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-4):
        return f"cam2world bottom row is {m[3].tolist()}, expected [0, 0, 0, 1]"
    with np.errstate(all="ignore"):  # huge finite entries overflow: not orthonormal either way
        rigid = np.allclose(R @ R.T, np.eye(3), atol=1e-3) and abs(np.linalg.det(R) - 1) <= 1e-3
    if not rigid:
        return "cam2world rotation is not orthonormal with det +1"
    if k[0, 0] <= 0 or k[1, 1] <= 0 or not np.allclose(k[2], [0, 0, 1], atol=1e-6):
        return f"intrinsics {k.round(4).tolist()} are not normalised [[fx,0,cx],[0,fy,cy],[0,0,1]] with fx, fy > 0"
    return None


def _finite_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def validate_record(rec: Any, where: str, file: str = LABELS_FILE) -> list[Problem]:
    """Problems of one record (structure, shapes, finiteness, rigid cameras); ``where`` is its JSON path."""
    if not isinstance(rec, dict):
        return [Problem(file, where, f"expected an object, got {type(rec).__name__}")]
    out = []
    for key in REQUIRED_FIELDS:
        if key not in rec:
            out.append(Problem(file, f"{where}.{key}", "missing"))
    for key, shape in ARRAY_FIELDS.items():
        if key in rec:
            why = _check_array(rec[key], shape)
            if why is None and key in ("camera", "face_camera"):
                why = check_camera25(np.asarray(rec[key], dtype=np.float64))
            if why:
                out.append(Problem(file, f"{where}.{key}", why))
    from .safety import name_problem, path_problem

    for key in FILE_FIELDS:
        if key in rec and (rec[key] is not None or key == "image"):  # mask and face may be null, the image not
            why = path_problem(rec[key])
            if why:
                out.append(Problem(file, f"{where}.{key}", why))
    mesh = rec.get("mesh")
    if mesh is not None:
        if not (isinstance(mesh, dict) and all(isinstance(v, str) for v in mesh.values())):
            out.append(Problem(file, f"{where}.mesh", f"expected {{'posed': path, 'canonical': path}}, got {mesh!r}"))
        else:
            out += [Problem(file, f"{where}.mesh.{k}", why) for k, v in mesh.items() if (why := path_problem(v))]
    if "name" in rec:
        why = name_problem(rec["name"])
        if why:
            out.append(Problem(file, f"{where}.name", why))
    angles = rec.get("camera_angles")
    if angles is not None:
        if not isinstance(angles, dict) or any(k not in angles for k in ("pitch", "yaw", "radius")):
            out.append(Problem(file, f"{where}.camera_angles", "expected {pitch, yaw, radius}"))
        elif not all(_finite_number(angles[k]) for k in ("pitch", "yaw", "radius")):
            out.append(Problem(file, f"{where}.camera_angles", "pitch/yaw/radius must be finite numbers"))
    return out


def validate_document(doc: Any, file: str = LABELS_FILE) -> list[Problem]:
    """Problems of a parsed labels.json document (no file checks)."""
    if not isinstance(doc, dict):
        return [Problem(file, "(root)", "expected a JSON object")]
    out = []
    if doc.get("format") != FORMAT:
        out.append(Problem(file, "format", f"expected {FORMAT!r}, got {doc.get('format')!r}"))
    if doc.get("format_version") != FORMAT_VERSION:
        out.append(Problem(file, "format_version", f"expected {FORMAT_VERSION}, got {doc.get('format_version')!r}"))
    info = doc.get("info")
    if not isinstance(info, dict):
        out.append(Problem(file, "info", "missing or not an object"))
    else:
        for key in INFO_FIELDS:
            if key not in info:
                out.append(Problem(file, f"info.{key}", "missing"))
        from .safety import MAX_RESOLUTION

        for key in ("resolution", "face_resolution"):
            v = info.get(key)
            if (key in info and key == "resolution") or v is not None:
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_RESOLUTION:
                    out.append(Problem(file, f"info.{key}", f"expected an integer from 1 to {MAX_RESOLUTION}, "
                                                            f"got {v!r}"))
        if "yaw_mode" in info and info["yaw_mode"] not in YAW_MODES:
            out.append(Problem(file, "info.yaw_mode", f"expected one of {YAW_MODES}, got {info['yaw_mode']!r}"))
    images = doc.get("images")
    if not isinstance(images, list):
        out.append(Problem(file, "images", "missing or not a list"))
        return out
    seen: dict[str, int] = {}
    for i, rec in enumerate(images):
        out += validate_record(rec, f"images[{i}]", file)
        name = rec.get("name") if isinstance(rec, dict) else None
        if isinstance(name, str):
            if name in seen:
                out.append(Problem(file, f"images[{i}].name", f"duplicate of images[{seen[name]}] ({name!r})"))
            seen[name] = i
    return out


def validate_labels(root: str | os.PathLike, check_files: bool = True, check_images: bool = False) -> list[Problem]:
    """Every problem of the dataset at ``root`` (a folder or a packed archive), each naming file and field.

    ``check_files`` checks that referenced files exist; ``check_images`` also decodes each image/mask/face
    (slow for big sets). Returns an empty list for a valid dataset.
    """
    from .readers import open_source  # local import: readers imports this module

    try:
        src = open_source(root, strict=False)
    except LabelError as e:
        return [Problem(*_split_problem(p)) for p in e.problems]
    except OSError as e:  # unreadable folder or archive: one problem naming it
        return [Problem(str(root), "(dataset)", f"cannot be read: {e}")]
    problems = list(src.problems)
    if check_files:
        for i, rec in enumerate(src.records):
            for key in FILE_FIELDS:
                rel = rec.get(key)
                if isinstance(rel, str) and not src.has_file(rel):
                    problems.append(Problem(src.label_file, f"images[{i}].{key}", f"file {rel!r} does not exist"))
                elif isinstance(rel, str) and check_images:
                    try:
                        src.read_png(rel)
                    except LabelError as e:  # a path or size limit
                        problems.append(Problem(rel, f"images[{i}].{key}", "; ".join(e.problems)))
                    except Exception as e:  # noqa: BLE001 - reported, not swallowed
                        problems.append(Problem(rel, f"images[{i}].{key}", f"cannot be decoded: {e}"))
            mesh = rec.get("mesh")
            for key, rel in (mesh.items() if isinstance(mesh, dict) else ()):
                if isinstance(rel, str) and not src.has_file(rel):
                    problems.append(Problem(src.label_file, f"images[{i}].mesh.{key}", f"file {rel!r} does not exist"))
    return problems


def _split_problem(text: str) -> tuple[str, str, str]:
    parts = text.split(": ", 2)
    return tuple(parts) if len(parts) == 3 else (text, "", "")  # type: ignore[return-value]
