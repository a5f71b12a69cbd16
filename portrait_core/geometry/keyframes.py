"""Keyframe and pose-label converters (numpy only, so the Blender add-on can use them without torch).

Busto's controls (docs/CONVENTIONS.md): ``pose`` [N, 6, 3] axis-angle (radians) of SMPL joints 12 neck,
13 left collar, 14 right collar, 15 head, 16 left shoulder, 17 right shoulder, **relative to the canonical
pose** (a joint's local rotation is ``R(pose_j) @ R_adjust_j``); ``expression`` [N, 64]; camera (pitch, yaw)
[N, 2] in radians (pitch = polar angle from +Y, yaw = azimuth, frontal = (pi/2, pi/2)).

Formats handled here (full description in docs/cameras-and-keyframes.md):

* **Official AniPortraitGAN keyframes** (a folder with ``expression.npy`` [N, 64], a pose file
  ``joint_eulers.npy`` / ``pose.npy`` / ``headpose.npy`` / ``shoulderpose.npy`` [N, 6, 3] of ZYX Euler angles
  ``R = Rz(e0) Ry(e1) Rx(e2)``, canonical-relative, and ``camera_pose.npy`` [N, 2] = (pitch, yaw)). The Euler
  triple describes the same canonical-relative rotation as Busto's axis-angle, so the conversion is
  ``pose = log(R_zyx(e))``; the way back returns the principal ZYX branch (e1 in [-pi/2, pi/2], e0, e2 in
  (-pi, pi]), which reproduces the official files exactly (all their angles lie on that branch).
* **Busto keyframe JSON** (``format: "busto-keyframes"``), see :func:`save_keyframes_json`.
* **3DPortraitGAN pose** (6 floats: neck then head axis-angle relative to the SMPL rest pose) and the
  360°PHQ 31-float ``dataset.json`` label (25 camera floats + that pose) with its mirror (flip) rule.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from portrait_core import conventions as C
from portrait_core.geometry import rotations_np as rn

__all__ = [
    "KeyframeTrack", "KeyframeError",
    "euler_zyx_to_pose", "pose_to_euler_zyx",
    "load_official_keyframes", "save_official_keyframes", "read_official_pose", "read_official_expression",
    "read_official_camera",
    "save_keyframes_json", "load_keyframes_json", "load_keyframes",
    "interpolate_keyframes", "sample_track",
    "canonical_adjust_matrices", "pose_from_3dportraitgan", "pose_to_3dportraitgan",
    "split_label31", "join_label31", "flip_pose6", "flip_label31", "mirror_pose",
    "JSON_FORMAT", "JSON_FORMAT_VERSION", "OFFICIAL_POSE_FILES",
]

JSON_FORMAT = "busto-keyframes"
JSON_FORMAT_VERSION = 1
#: Pose files of the official layout, in the order ``load_official_keyframes(pose="auto")`` looks for them.
OFFICIAL_POSE_FILES = ("joint_eulers.npy", "pose.npy")
#: Other official pose files (chosen explicitly with ``pose="headpose.npy"`` etc.).
OFFICIAL_EXTRA_POSE_FILES = ("headpose.npy", "shoulderpose.npy")
_ROTATION_MODES = ("slerp", "axis_angle", "euler")
#: Limits checked before anything is allocated (a hostile header or JSON must not exhaust memory): keyframes per
#: file, bytes of a keyframe JSON file, |frame number| (Blender's own limit is about 1e6), interpolated frames.
MAX_KEYFRAMES = 1_000_000
MAX_JSON_BYTES = 256 * 2**20
MAX_FRAME = 2**31 - 1
MAX_INTERPOLATED_FRAMES = 10_000_000


class KeyframeError(ValueError):
    """A keyframe file or array is malformed (the message names the file and the field)."""


# ----------------------------------------------------------------------------------------------- track
@dataclass
class KeyframeTrack:
    """A sequence of keyframes in Busto's conventions (numpy float64).

    pose: [N, 6, 3] axis-angle, canonical-relative (joints 12..17). expression: [N, 64].
    camera: [N, 2] = (pitch, yaw) radians, or None (use the caller's camera). frames: [N] increasing int64 frame
    numbers, or None (keyframes are evenly spaced; see :func:`interpolate_keyframes`). fps: frames per second.
    source: where it came from (for messages).
    """

    pose: np.ndarray
    expression: np.ndarray
    camera: np.ndarray | None = None
    frames: np.ndarray | None = None
    fps: float = 30.0
    source: str = field(default="<memory>", compare=False)

    def __post_init__(self) -> None:
        src = self.source
        self.pose = _check_array(self.pose, (None, 6, 3), src, "pose")
        n = self.pose.shape[0]
        self.expression = _check_array(self.expression, (n, C.EXPRESSION_DIM), src, "expression")
        if self.camera is not None:
            self.camera = _check_array(self.camera, (n, 2), src, "camera")
        if self.frames is not None:
            fr = np.asarray(self.frames)
            if fr.shape != (n,):
                raise KeyframeError(f"{src}: frames must have shape ({n},), got {fr.shape}")
            if fr.dtype.kind == "f":
                if not np.all(np.isfinite(fr)) or np.any(fr != np.round(fr)):
                    raise KeyframeError(f"{src}: frames must be whole numbers")
            elif fr.dtype.kind not in "iu":
                raise KeyframeError(f"{src}: frames must be integers, got dtype {fr.dtype}")
            if n and float(np.abs(fr.astype(np.float64)).max()) > MAX_FRAME:
                raise KeyframeError(f"{src}: frame numbers must lie within +/-{MAX_FRAME}")
            fr = fr.astype(np.int64)
            if n > 1 and np.any(np.diff(fr) <= 0):
                raise KeyframeError(f"{src}: frames must be strictly increasing, got {fr.tolist()}")
            self.frames = fr
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise KeyframeError(f"{src}: fps must be a positive number, got {self.fps!r}")
        self.fps = float(self.fps)

    def __len__(self) -> int:
        return self.pose.shape[0]

    @classmethod
    def neutral(cls, n: int = 1, fps: float = 30.0) -> KeyframeTrack:
        """``n`` keyframes of the canonical pose with a neutral expression."""
        return cls(np.zeros((n, 6, 3)), np.zeros((n, C.EXPRESSION_DIM)), fps=fps)

    def euler_zyx(self) -> np.ndarray:
        """The pose as official ZYX Euler angles [N, 6, 3] (principal branch)."""
        return pose_to_euler_zyx(self.pose)

    def to_torch(self, dtype=None, device=None) -> dict:
        """``{'pose': [N,6,3], 'expression': [N,64], 'camera': [N,2] or None}`` as torch tensors (imports torch)."""
        import torch

        dtype = dtype or torch.get_default_dtype()
        t = lambda a: None if a is None else torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        return {"pose": t(self.pose), "expression": t(self.expression), "camera": t(self.camera)}


def _check_array(value, shape: tuple, source: str, name: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an integer beyond float64 (JSON 1e400)
        raise KeyframeError(f"{source}: {name} is not numeric ({exc})") from None
    want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        raise KeyframeError(f"{source}: {name} must have shape {want}, got {a.shape}")
    if a.shape[0] == 0:
        raise KeyframeError(f"{source}: {name} has no keyframes")
    bad = ~np.isfinite(a)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise KeyframeError(f"{source}: {name} contains NaN/inf (first at index {idx})")
    return a


# ------------------------------------------------------------------------------- Euler <-> pose code
def euler_zyx_to_pose(euler) -> np.ndarray:
    """Official ZYX Euler [..., 3] (R = Rz(e0) Ry(e1) Rx(e2), canonical-relative) -> Busto axis-angle [..., 3]."""
    return rn.matrix_to_axis_angle(rn.euler_zyx_to_matrix(euler))


def pose_to_euler_zyx(pose) -> np.ndarray:
    """Busto axis-angle [..., 3] -> official ZYX Euler [..., 3] on the principal branch (e1 in [-pi/2, pi/2])."""
    return rn.matrix_to_euler_zyx(rn.axis_angle_to_matrix(pose))


# ------------------------------------------------------------------------------- official files
def _npy_header(path: Path, what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, read without loading (or allocating) its data."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        else:
            # (2, 0), and (3, 0): the same 4-byte length, a UTF-8 header only for structured-dtype field names,
            # which numeric keyframe arrays do not have (their header is ASCII either way)
            shape, _, dtype = fmt.read_array_header_2_0(f)
        return tuple(int(s) for s in shape), dtype, f.tell()


def _load_npy(path: Path, what: str) -> np.ndarray:
    """A numeric .npy array; its header (shape, dtype) is checked against the limits and the file size first."""
    try:
        shape, dtype, offset = _npy_header(path, what)
        size = path.stat().st_size
    except FileNotFoundError:
        raise KeyframeError(f"{path}: {what} file not found") from None
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:  # empty, truncated or foreign header
        raise KeyframeError(f"{path}: cannot read {what} as a .npy array ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject or dtype.kind not in "fiu":
        raise KeyframeError(f"{path}: {what} must be a numeric array, got dtype {dtype}")
    if shape and shape[0] > MAX_KEYFRAMES:
        raise KeyframeError(f"{path}: {what} declares {shape[0]} keyframes (at most {MAX_KEYFRAMES})")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > size - offset:
        raise KeyframeError(f"{path}: {what} declares shape {shape} ({nbytes} bytes of data) but the file holds "
                            f"{max(size - offset, 0)} (truncated or corrupt)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, MemoryError) as exc:
        raise KeyframeError(f"{path}: cannot read {what} as a .npy array ({type(exc).__name__}: {exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise KeyframeError(f"{path}: {what} must be a numeric array, got dtype {getattr(arr, 'dtype', None)}")
    return arr


def read_official_pose(path: str | os.PathLike) -> np.ndarray:
    """Official pose file [N, 6, 3] (ZYX Euler, joints 12..17) -> Busto pose code [N, 6, 3] (float64)."""
    path = Path(path)
    euler = _check_array(_load_npy(path, "pose (ZYX Euler)"), (None, 6, 3), str(path), "pose (ZYX Euler)")
    return euler_zyx_to_pose(euler)


def read_official_expression(path: str | os.PathLike) -> np.ndarray:
    """Official expression file [N, 64] -> float64 [N, 64]."""
    path = Path(path)
    return _check_array(_load_npy(path, "expression"), (None, C.EXPRESSION_DIM), str(path), "expression")


def read_official_camera(path: str | os.PathLike) -> np.ndarray:
    """Official ``camera_pose.npy`` [N, 2] -> float64 [N, 2] = (pitch, yaw), radians (column order as in the file)."""
    path = Path(path)
    cam = _check_array(_load_npy(path, "camera (pitch, yaw)"), (None, 2), str(path), "camera (pitch, yaw)")
    if np.any(cam[:, 0] < -1e-6) or np.any(cam[:, 0] > math.pi + 1e-6):
        raise KeyframeError(f"{path}: camera column 0 is the pitch (polar angle from +Y) and must lie in [0, pi]; "
                            f"got range [{cam[:, 0].min():.3f}, {cam[:, 0].max():.3f}]")
    return cam


def _resolve(folder: Path, choice, candidates: Sequence[str], what: str) -> Path | None:
    if choice is None:
        return None
    if choice == "auto":
        for name in candidates:
            if (folder / name).is_file():
                return folder / name
        return None
    p = Path(choice)
    p = p if p.is_absolute() else folder / p
    if not p.is_file():
        raise KeyframeError(f"{p}: {what} file not found")
    return p


def load_official_keyframes(
    folder: str | os.PathLike,
    *,
    expression: str | os.PathLike | None = "auto",
    pose: str | os.PathLike | None = "auto",
    camera: str | os.PathLike | None = "auto",
    fps: float = 30.0,
) -> KeyframeTrack:
    """Read a folder in the official AniPortraitGAN layout into a :class:`KeyframeTrack`.

    Each of ``expression``/``pose``/``camera`` is ``"auto"`` (use ``expression.npy`` / the first of
    ``joint_eulers.npy``, ``pose.npy`` / ``camera_pose.npy`` if present), ``None`` (skip) or a file name (relative
    to ``folder``) or path. A missing expression is neutral (zeros), a missing pose canonical (zeros), a missing
    camera None. All used files must have the same number of keyframes (the official script would silently
    truncate or crash); otherwise a :class:`KeyframeError` names the files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise KeyframeError(f"{folder}: not a folder of official keyframes")
    paths = {
        "expression": _resolve(folder, expression, ("expression.npy",), "expression"),
        "pose": _resolve(folder, pose, OFFICIAL_POSE_FILES, "pose"),
        "camera": _resolve(folder, camera, ("camera_pose.npy",), "camera"),
    }
    if all(p is None for p in paths.values()):
        raise KeyframeError(f"{folder}: no keyframe files found (expected expression.npy, "
                            f"{' or '.join(OFFICIAL_POSE_FILES)}, camera_pose.npy)")
    readers = {"expression": read_official_expression, "pose": read_official_pose, "camera": read_official_camera}
    found = {k: p for k, p in paths.items() if p is not None}
    data = {k: readers[k](p) for k, p in found.items()}
    counts = {found[k].name: len(v) for k, v in data.items()}
    if len(set(counts.values())) > 1:
        raise KeyframeError(f"{folder}: keyframe counts differ between files {counts}; choose the files to combine "
                            f"(e.g. expression=None or pose='headpose.npy')")
    n = next(iter(counts.values()))
    return KeyframeTrack(
        pose=data.get("pose", np.zeros((n, 6, 3))),
        expression=data.get("expression", np.zeros((n, C.EXPRESSION_DIM))),
        camera=data.get("camera"),
        fps=fps,
        source=str(folder),
    )


def save_official_keyframes(
    track: KeyframeTrack,
    folder: str | os.PathLike,
    *,
    pose_name: str = "pose.npy",
    dtype=np.float32,
    write_expression: bool = True,
    write_camera: bool = True,
) -> dict[str, Path]:
    """Write ``track`` in the official layout: ``expression.npy`` [N, 64], ``pose_name`` [N, 6, 3] (ZYX Euler,
    principal branch) and ``camera_pose.npy`` [N, 2] (pitch, yaw) when the track has a camera. Returns the paths.
    Frame numbers and fps are not part of the official format (keyframes are evenly spaced there)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {"pose": folder / pose_name}
    np.save(out["pose"], track.euler_zyx().astype(dtype))
    if write_expression:
        out["expression"] = folder / "expression.npy"
        np.save(out["expression"], track.expression.astype(dtype))
    if write_camera and track.camera is not None:
        out["camera"] = folder / "camera_pose.npy"
        np.save(out["camera"], track.camera.astype(dtype))
    return out


# ------------------------------------------------------------------------------- Busto JSON
def save_keyframes_json(track: KeyframeTrack, path: str | os.PathLike) -> Path:
    """Write Busto's keyframe JSON (floats written with full precision, so a round trip is exact)::

        {"format": "busto-keyframes", "format_version": 1, "fps": 30.0,
         "pose_convention": "...", "joints": ["neck", ...],
         "keyframes": [{"frame": 0, "pose": [[x, y, z] * 6], "expression": [64 floats],
                        "camera": {"pitch": p, "yaw": y}}, ...]}

    ``frame`` is omitted when the track has no frame numbers; ``camera`` when it has no camera.
    """
    path = Path(path)
    keyframes = []
    for i in range(len(track)):
        k: dict = {}
        if track.frames is not None:
            k["frame"] = int(track.frames[i])
        k["pose"] = track.pose[i].tolist()
        k["expression"] = track.expression[i].tolist()
        if track.camera is not None:
            k["camera"] = {"pitch": float(track.camera[i, 0]), "yaw": float(track.camera[i, 1])}
        keyframes.append(k)
    doc = {
        "format": JSON_FORMAT,
        "format_version": JSON_FORMAT_VERSION,
        "fps": track.fps,
        "pose_convention": "axis-angle (radians) of SMPL joints 12..17, relative to Busto's canonical pose",
        "joints": list(C.POSE_JOINT_NAMES),
        "camera_convention": "pitch = polar angle from +Y, yaw = azimuth, radians; frontal = (pi/2, pi/2)",
        "keyframes": keyframes,
    }
    from portrait_core.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=1))
    return path


def load_keyframes_json(path: str | os.PathLike) -> KeyframeTrack:
    """Read Busto's keyframe JSON (see :func:`save_keyframes_json`). A keyframe without ``pose`` is the canonical
    pose, without ``expression`` neutral. ``camera`` must be on every keyframe or on none; ``frame`` likewise."""
    path = Path(path)
    src = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise KeyframeError(f"{src}: {size} bytes; a keyframe file is at most {MAX_JSON_BYTES}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeyframeError(f"{src}: file not found") from None
    except OSError as exc:
        raise KeyframeError(f"{src}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KeyframeError(f"{src}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, over-long integers, nesting too deep
        raise KeyframeError(f"{src}: not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
        raise KeyframeError(f"{src}: 'format' must be {JSON_FORMAT!r}")
    version = doc.get("format_version")
    if version != JSON_FORMAT_VERSION:
        raise KeyframeError(f"{src}: unsupported format_version {version!r} (this Busto reads {JSON_FORMAT_VERSION})")
    kfs = doc.get("keyframes")
    if not isinstance(kfs, list) or not kfs:
        raise KeyframeError(f"{src}: 'keyframes' must be a non-empty list")
    if len(kfs) > MAX_KEYFRAMES:
        raise KeyframeError(f"{src}: {len(kfs)} keyframes (at most {MAX_KEYFRAMES})")
    poses, exprs, cams, frames = [], [], [], []
    for i, k in enumerate(kfs):
        where = f"keyframes[{i}]"
        if not isinstance(k, dict):
            raise KeyframeError(f"{src}: {where} must be an object")
        unknown = set(k) - {"frame", "pose", "expression", "camera"}
        if unknown:
            raise KeyframeError(f"{src}: {where} has unknown fields {sorted(unknown)}")
        poses.append(_check_array([k["pose"]], (1, 6, 3), src, f"{where}.pose")[0]
                     if "pose" in k else np.zeros((6, 3)))
        exprs.append(_check_array([k["expression"]], (1, C.EXPRESSION_DIM), src, f"{where}.expression")[0]
                     if "expression" in k else np.zeros(C.EXPRESSION_DIM))
        cam = k.get("camera")
        if cam is not None:
            if not isinstance(cam, dict) or set(cam) != {"pitch", "yaw"}:
                raise KeyframeError(f"{src}: {where}.camera must be {{'pitch': .., 'yaw': ..}}")
            cams.append(_check_array([[cam["pitch"], cam["yaw"]]], (1, 2), src, f"{where}.camera")[0])
        if "frame" in k:
            if not isinstance(k["frame"], int) or isinstance(k["frame"], bool):
                raise KeyframeError(f"{src}: {where}.frame must be an integer, got {k['frame']!r}")
            if abs(k["frame"]) > MAX_FRAME:
                raise KeyframeError(f"{src}: {where}.frame must lie within +/-{MAX_FRAME}")
            frames.append(k["frame"])
    n = len(kfs)
    if len(cams) not in (0, n):
        raise KeyframeError(f"{src}: 'camera' is on {len(cams)} of {n} keyframes (all or none)")
    if len(frames) not in (0, n):
        raise KeyframeError(f"{src}: 'frame' is on {len(frames)} of {n} keyframes (all or none)")
    fps = doc.get("fps", 30.0)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)):
        raise KeyframeError(f"{src}: fps must be a number, got {fps!r}")
    try:
        fps = float(fps)
    except OverflowError:
        raise KeyframeError(f"{src}: fps must be a positive number, got an integer of {len(str(fps))} digits") from None
    return KeyframeTrack(
        pose=np.stack(poses), expression=np.stack(exprs), camera=np.stack(cams) if cams else None,
        frames=np.asarray(frames, dtype=np.int64) if frames else None, fps=float(fps), source=src,
    )


def load_keyframes(path: str | os.PathLike, **kwargs) -> KeyframeTrack:
    """A Busto ``.json`` file or an official keyframe folder (kwargs go to :func:`load_official_keyframes`)."""
    p = Path(path)
    if p.is_dir():
        return load_official_keyframes(p, **kwargs)
    if p.suffix.lower() == ".json":
        return load_keyframes_json(p)
    raise KeyframeError(f"{p}: expected a Busto keyframe .json file or an official keyframe folder")


# ------------------------------------------------------------------------------- interpolation
def _interp_pose(p0: np.ndarray, p1: np.ndarray, t: np.ndarray, rotation: str) -> np.ndarray:
    """Pose [M, 6, 3] pairs and weights [M] -> [M, 6, 3]."""
    tt = t[:, None, None]
    if rotation == "slerp":
        return rn.slerp_axis_angle(p0, p1, t[:, None])
    if rotation == "axis_angle":
        return (1 - tt) * p0 + tt * p1
    if rotation == "euler":
        e0, e1 = pose_to_euler_zyx(p0), pose_to_euler_zyx(p1)
        return euler_zyx_to_pose((1 - tt) * e0 + tt * e1)
    raise ValueError(f"rotation must be one of {_ROTATION_MODES}, got {rotation!r}")


def _blend(track: KeyframeTrack, i0: np.ndarray, i1: np.ndarray, t: np.ndarray, rotation: str,
           frames: np.ndarray | None) -> KeyframeTrack:
    tt = t[:, None]
    expr = (1 - tt) * track.expression[i0] + tt * track.expression[i1]
    cam = None if track.camera is None else (1 - tt) * track.camera[i0] + tt * track.camera[i1]
    pose = _interp_pose(track.pose[i0], track.pose[i1], t, rotation)
    return KeyframeTrack(pose, expr, cam, frames, track.fps, source=track.source)


def interpolate_keyframes(track: KeyframeTrack, n_interval: int, *, loop: bool = True,
                          rotation: str = "slerp") -> KeyframeTrack:
    """Per-frame track from evenly spaced keyframes, as the official video script does.

    Keyframe i sits at frame ``i * n_interval``; frame ``i * n_interval + j`` blends keyframes i and i+1 with
    weight ``j / n_interval``. With ``loop`` the last keyframe blends back to keyframe 0 (``N * n_interval``
    frames, the official behaviour); without, the track ends on the last keyframe (``(N-1) * n_interval + 1``
    frames). Expression and camera (pitch, yaw) are linear. Rotations: ``"slerp"`` (default) interpolates each
    joint along the geodesic from R_i to R_{i+1} (``R_i exp(t log(R_i^T R_{i+1}))``, constant angular speed);
    ``"euler"`` is linear on the official ZYX Euler angles (bit-for-bit the official behaviour); ``"axis_angle"``
    linear on the axis-angle vectors. For the small angles of the official files all three agree to ~1e-3 rad.
    The result has frame numbers 0, 1, ...
    """
    if not isinstance(n_interval, int) or n_interval < 1:
        raise ValueError(f"n_interval must be a positive int, got {n_interval!r}")
    if rotation not in _ROTATION_MODES:
        raise ValueError(f"rotation must be one of {_ROTATION_MODES}, got {rotation!r}")
    n = len(track)
    total = n * n_interval if loop else (n - 1) * n_interval + 1
    if total > MAX_INTERPOLATED_FRAMES:
        raise ValueError(f"{n} keyframes x n_interval {n_interval} = {total} frames (at most "
                         f"{MAX_INTERPOLATED_FRAMES})")
    f = np.arange(total)
    i0 = np.minimum(f // n_interval, n - 1)
    t = (f - i0 * n_interval) / n_interval
    i1 = (i0 + 1) % n if loop else np.minimum(i0 + 1, n - 1)
    return _blend(track, i0, i1, t.astype(np.float64), rotation, f.astype(np.int64))


def sample_track(track: KeyframeTrack, frames, *, rotation: str = "slerp") -> KeyframeTrack:
    """Evaluate a track with frame numbers at the given (integer or fractional) frames; values are held
    constant before the first and after the last keyframe. Same rotation modes as :func:`interpolate_keyframes`.
    The result's frame numbers are ``frames`` rounded (must be increasing whole numbers to be kept), else None."""
    if track.frames is None:
        raise KeyframeError(f"{track.source}: sample_track needs keyframe frame numbers (use interpolate_keyframes)")
    q = np.asarray(frames, dtype=np.float64).reshape(-1)
    kf = track.frames.astype(np.float64)
    idx = np.clip(np.searchsorted(kf, q, side="right") - 1, 0, len(track) - 1)
    nxt = np.minimum(idx + 1, len(track) - 1)
    span = kf[nxt] - kf[idx]
    t = np.where(span > 0, (q - kf[idx]) / np.where(span > 0, span, 1.0), 0.0)
    t = np.clip(t, 0.0, 1.0)
    keep = np.all(q == np.round(q)) and (len(q) < 2 or np.all(np.diff(q) > 0))
    return _blend(track, idx, nxt, t, rotation, q.astype(np.int64) if keep else None)


# ------------------------------------------------------------------------------- 3DPortraitGAN / 360°PHQ
def canonical_adjust_matrices() -> np.ndarray:
    """[6, 3, 3] canonical adjust rotations R_adjust for the pose joints 12..17 (identity where none)."""
    out = np.tile(np.eye(3), (6, 1, 1))
    for k, j in enumerate(C.POSE_JOINTS):
        if j in C.CANONICAL_ADJUST_EULER_ZYX:
            out[k] = rn.euler_zyx_to_matrix(C.CANONICAL_ADJUST_EULER_ZYX[j])
    return out


def _check_last(x, n: int, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim < 1 or a.shape[-1] != n:
        raise KeyframeError(f"{name} must have shape [..., {n}], got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise KeyframeError(f"{name} contains NaN/inf")
    return a


def pose_from_3dportraitgan(pose6, *, shoulders: str = "canonical") -> np.ndarray:
    """3DPortraitGAN pose [..., 6] (neck then head axis-angle, relative to SMPL rest) -> Busto pose [..., 6, 3].

    neck (no adjust): ``pose_12 = p[0:3]``; head: ``pose_15 = log(R(p[3:6]) @ R_adjust_15^-1)`` so that
    ``R(pose_15) @ R_adjust_15`` is the given rest-relative rotation. Collars stay at rest (= canonical, zero).
    The label has no shoulder rotations: ``shoulders="canonical"`` (default) keeps Busto's canonical arms-down
    shoulders (zeros); ``"rest"`` reproduces the SMPL rest shoulders (``log(R_adjust^-1)``).
    """
    p = _check_last(pose6, 6, "3DPortraitGAN pose")
    if shoulders not in ("canonical", "rest"):
        raise ValueError(f"shoulders must be 'canonical' or 'rest', got {shoulders!r}")
    adj = canonical_adjust_matrices()
    out = np.zeros(p.shape[:-1] + (6, 3))
    out[..., 0, :] = p[..., 0:3]
    out[..., 3, :] = rn.matrix_to_axis_angle(rn.axis_angle_to_matrix(p[..., 3:6]) @ adj[3].T)
    if shoulders == "rest":
        for k in (4, 5):
            out[..., k, :] = rn.matrix_to_axis_angle(adj[k].T)
    return out


def pose_to_3dportraitgan(pose) -> np.ndarray:
    """Busto pose [..., 6, 3] -> 3DPortraitGAN pose [..., 6]: neck ``pose_12`` and head
    ``log(R(pose_15) @ R_adjust_15)`` (rest-relative). Collar and shoulder rotations are not representable and are
    dropped."""
    p = np.asarray(pose, dtype=np.float64)
    if p.ndim < 2 or p.shape[-2:] != (6, 3):
        raise KeyframeError(f"Busto pose must have shape [..., 6, 3], got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise KeyframeError("Busto pose contains NaN/inf")
    head = rn.matrix_to_axis_angle(rn.axis_angle_to_matrix(p[..., 3, :]) @ canonical_adjust_matrices()[3])
    return np.concatenate([p[..., 0, :], head], axis=-1)


def split_label31(label) -> tuple[np.ndarray, np.ndarray]:
    """360°PHQ ``dataset.json`` label [..., 31] -> (camera label [..., 25], 3DPortraitGAN pose [..., 6])."""
    a = _check_last(label, 31, "360PHQ label")
    return a[..., :25].copy(), a[..., 25:].copy()


def join_label31(label25, pose6) -> np.ndarray:
    """Inverse of :func:`split_label31`."""
    return np.concatenate([_check_last(label25, 25, "camera label"), _check_last(pose6, 6, "3DPortraitGAN pose")], -1)


def flip_pose6(pose6) -> np.ndarray:
    """Mirror (x -> -x) a 3DPortraitGAN pose [..., 6]: negate p[1], p[2], p[4], p[5] (the y and z components of the
    neck and head axis-angles; both joints lie on the symmetry plane)."""
    p = _check_last(pose6, 6, "3DPortraitGAN pose").copy()
    p[..., [1, 2, 4, 5]] *= -1
    return p


def flip_label31(label) -> np.ndarray:
    """Mirror a 360°PHQ label [..., 31]: the camera 4x4 entries (0,1), (0,2), (1,0), (2,0), (0,3) are negated
    (same as :meth:`Camera.mirror`) and the pose by :func:`flip_pose6`."""
    cam, pose = split_label31(label)
    c2w = cam[..., :16].reshape(*cam.shape[:-1], 4, 4).copy()
    for i, j in ((0, 1), (0, 2), (1, 0), (2, 0), (0, 3)):
        c2w[..., i, j] *= -1
    cam = np.concatenate([c2w.reshape(*cam.shape[:-1], 16), cam[..., 16:]], -1)
    return join_label31(cam, flip_pose6(pose))


#: Left/right partner of each pose-code slot (neck, L collar, R collar, head, L shoulder, R shoulder).
_MIRROR_SLOTS = (0, 2, 1, 3, 5, 4)


def mirror_pose(pose) -> np.ndarray:
    """Mirror a Busto pose code [..., 6, 3] across the YZ plane: swap left/right collars and shoulders and negate
    the y and z axis-angle components. Exact because the canonical pose is itself mirror-symmetric
    (R_adjust of the left shoulder mirrors to the right one's; the head's is about x)."""
    p = np.asarray(pose, dtype=np.float64)
    if p.ndim < 2 or p.shape[-2:] != (6, 3):
        raise KeyframeError(f"Busto pose must have shape [..., 6, 3], got {p.shape}")
    out = p[..., list(_MIRROR_SLOTS), :].copy()
    out[..., 1:] *= -1
    return out

