"""Label samplers: Busto's one implementation of "draw generator inputs from label distributions", used by
inference (seeds -> avatars), training (the fake-input stream), evaluation and the shipped default model.

A :class:`LabelSampler` holds empirical tables, each drawn from independently of the others:

* ``identity`` [N, 80] + ``body_shape`` [N, 10]: 3DMM identity and SMPL betas, drawn **jointly**
  (the official ``id_shape_sampler_body.npy``);
* ``appearance`` [A, D]: appearance codes, the generator's ``noise`` input when its checkpoint says its noise
  latent is an appearance code (:mod:`portrait_core.assets.appearance`); None means N(0, I) noise;
* ``camera`` [M, 25] + ``pose`` [M, 6, 3] (+ optional ``face_camera`` [M, 25]): portrait camera label and pose
  code, drawn **jointly** (the official ``camera_pose_joint_sample.npy``);
* ``expression`` [K, 64] (``expression_body.npy``).

A table that is None falls back to the synthetic renderer's distributions (``gaussian_fallback``). ``mirror=True``
replaces a draw by its mirror image with probability 1/2 (camera flip rule, pose mirror, expression/identity
mirror matrices when given).

File format (one, ``save``/``load``): a ``.safetensors`` file with metadata ``format = "busto-label-samplers"``,
``format_version = "2"`` and JSON ``settings`` (mirror, gaussian, source); float32 tensors named as the tables
above plus optional float16 ``expression_mirror`` [64, 64] / ``identity_mirror`` [80, 80] (least-squares fits,
stored at half precision to keep the file small; loaded as float32). ``load`` also reads version
"1" files (all six tables, e.g. the shipped ``default_samplers.safetensors``) and the old ``.npz`` tables
(``format = "busto-label-sampler"``).

Which samplers belong to a checkpoint is decided by :func:`portrait_core.generator.loading.samplers_for`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SAMPLER_FORMAT = "busto-label-samplers"
SAMPLER_FORMAT_VERSION = "2"
READ_VERSIONS = ("1", "2")
LEGACY_NPZ_FORMAT = "busto-label-sampler"
DEFAULT_SAMPLERS = "default_samplers.safetensors"
#: table name -> trailing shape (None: any width)
TABLES = {"identity": (80,), "body_shape": (10,), "appearance": None, "camera": (25,), "pose": (6, 3),
          "expression": (64,), "face_camera": (25,)}
MIRRORS = {"expression_mirror": (64, 64), "identity_mirror": (80, 80)}
#: tables drawn jointly (same number of rows)
JOINT = (("identity", "body_shape"), ("camera", "pose", "face_camera"))
#: the tables a version-1 file always holds
V1_TABLES = ("identity", "body_shape", "appearance", "camera", "pose", "expression")
#: the most rows a table may declare (checked before reading it)
MAX_ROWS = 10_000_000


class SamplerError(ValueError):
    """A sampler file is missing, of another format, or holds tables of the wrong shape (the message names it)."""


def default_samplers_path() -> Path:
    """Path of the shipped default model's label samplers (``portrait_core/assets``)."""
    return Path(__file__).resolve().parents[1] / "assets" / DEFAULT_SAMPLERS


@dataclass
class LabelSampler:
    """Empirical (or Gaussian) label tables, float32 tensors (see the module docstring)."""

    identity: Tensor | None = None
    body_shape: Tensor | None = None
    appearance: Tensor | None = None
    camera: Tensor | None = None
    pose: Tensor | None = None
    expression: Tensor | None = None
    face_camera: Tensor | None = None
    mirror: bool = False
    expression_mirror: Tensor | None = None
    identity_mirror: Tensor | None = None
    gaussian: dict = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        for name in (*TABLES, *MIRRORS):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Tensor):
                setattr(self, name, torch.as_tensor(np.asarray(v), dtype=torch.float32))

    # --- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_dataset(cls, dataset, mirror: bool = False, max_rows: int | None = None, seed: int = 0) -> LabelSampler:
        """All labels of a ``PortraitDataset`` (or anything with ``labels(key)``), one row per image;
        ``max_rows`` subsamples. Falls back to ``labels.json`` under ``dataset.root``."""
        if not (hasattr(dataset, "labels") and callable(dataset.labels)):
            return cls.from_labels_json(dataset.root)
        t = {k: torch.from_numpy(np.asarray(dataset.labels(k), dtype=np.float32))
             for k in ("camera", "pose", "expression", "identity", "body_shape")}
        t["pose"] = t["pose"].reshape(-1, 6, 3)
        try:
            t["face_camera"] = torch.from_numpy(np.asarray(dataset.labels("face_camera"), dtype=np.float32))
        except (KeyError, ValueError):
            pass
        n = t["camera"].shape[0]
        if max_rows is not None and n > max_rows:
            idx = torch.from_numpy(np.random.default_rng(seed).choice(n, max_rows, replace=False))
            t = {k: v[idx] for k, v in t.items()}
        mats = getattr(dataset, "_mirror_mats", None) or {}
        return cls(**t, mirror=mirror, expression_mirror=mats.get("expression"), identity_mirror=mats.get("identity"),
                   source=str(getattr(getattr(dataset, "source", None), "root", "")))

    @classmethod
    def from_labels_json(cls, root: str | os.PathLike) -> LabelSampler:
        """One row per record of ``root/labels.json``."""
        from portrait_core.data.labels import load_labels_json

        recs = load_labels_json(Path(root) / "labels.json").get("images") or []
        if not recs:
            raise SamplerError(f"{root}/labels.json has no image records")
        keys = ("camera", "face_camera", "pose", "expression", "identity", "body_shape")
        return cls(**{k: torch.tensor(np.asarray([r[k] for r in recs], dtype=np.float32)) for k in keys},
                   source=str(root))

    @classmethod
    def from_official_tables(cls, camera_pose_joint: np.ndarray, id_shape: np.ndarray, expression: np.ndarray,
                             mirror: bool = False) -> LabelSampler:
        """From the AniPortraitGAN release's tables: [N, 20] (pitch, yaw, 6x3 ZYX Euler), [M, 90], [K, 64]."""
        from portrait_core.geometry.camera import Camera
        from portrait_core.geometry.rotations import euler_zyx_to_matrix, matrix_to_axis_angle

        cj = np.asarray(camera_pose_joint, dtype=np.float64)
        if cj.ndim != 2 or cj.shape[1] != 20:
            raise ValueError(f"camera_pose_joint_sample: expected [N, 20], got {list(cj.shape)}")
        ids = np.asarray(id_shape, np.float32)
        if ids.ndim != 2 or ids.shape[1] != 90:
            raise ValueError(f"id_shape_sampler: expected [M, 90], got {list(ids.shape)}")
        cam = Camera.portrait(yaw=torch.as_tensor(cj[:, 1]), pitch=torch.as_tensor(cj[:, 0])).to_label25()
        aa = matrix_to_axis_angle(euler_zyx_to_matrix(torch.as_tensor(cj[:, 2:].reshape(-1, 6, 3))))
        return cls(camera=cam.float(), pose=aa.float(), identity=torch.from_numpy(ids[:, :80].copy()),
                   body_shape=torch.from_numpy(ids[:, 80:].copy()),
                   expression=torch.as_tensor(np.asarray(expression, np.float32)), mirror=mirror,
                   source="official-tables")

    @classmethod
    def gaussian_fallback(cls, yaw_mode: str = "frontal", expression_std: float = 0.3) -> LabelSampler:
        """No dataset: the synthetic renderer's label distributions (see synth/avatar.py)."""
        if yaw_mode not in ("frontal", "360"):
            raise ValueError(f"yaw_mode must be 'frontal' or '360', got {yaw_mode!r}")
        return cls(gaussian={"yaw_mode": yaw_mode, "expression_std": expression_std}, source="gaussian")

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], where: str = "samplers", required=(), **settings) -> LabelSampler:
        """Validated tables (``required``: names that must be present); errors name ``where`` and the table."""
        for name in required:
            if name not in tensors:
                raise SamplerError(f"{where}: missing tensor {name!r}")
        for name in tensors:
            if name not in TABLES and name not in MIRRORS:
                raise SamplerError(f"{where}: unknown tensor {name!r} (expected some of {sorted({**TABLES, **MIRRORS})})")
        for name, t in tensors.items():
            if name in MIRRORS:
                ok = tuple(t.shape) == MIRRORS[name]
                expected = list(MIRRORS[name])
            else:
                trailing = TABLES[name]
                ok = (t.dim() == 2 and t.shape[1] >= 1) if trailing is None else \
                    (t.dim() == 1 + len(trailing) and tuple(t.shape[1:]) == trailing)
                ok = ok and t.shape[0] >= 1
                expected = f"[N, {'D' if trailing is None else ', '.join(map(str, trailing))}]"
            if not ok:
                raise SamplerError(f"{where}: tensor {name!r} has shape {list(t.shape)}, expected {expected}")
            if not torch.isfinite(t).all():
                raise SamplerError(f"{where}: tensor {name!r} contains NaN or inf")
        for group in JOINT:
            present = [k for k in group if k in tensors]
            sizes = {tensors[k].shape[0] for k in present}
            if len(sizes) > 1:
                raise SamplerError(f"{where}: tensors {tuple(present)} are drawn jointly and must have the same "
                                   f"number of rows, got {sorted(sizes)}")
            if present and not all(k in tensors for k in group[:2]):
                missing = [k for k in group[:2] if k not in tensors]
                raise SamplerError(f"{where}: tensor {present[0]!r} is drawn jointly with {missing[0]!r}, which is "
                                   f"missing")
        return cls(**{k: v.float() for k, v in tensors.items()}, **settings)

    # --- basics ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Rows of the (camera, pose) table (one per image for a dataset's tables)."""
        return 0 if self.camera is None else self.camera.shape[0]

    @property
    def noise(self) -> Tensor | None:
        """The table the generator's noise latent is drawn from (``appearance``); None = N(0, I)."""
        return self.appearance

    @noise.setter
    def noise(self, value: Tensor | None) -> None:
        self.appearance = value

    def tables(self) -> dict[str, Tensor]:
        """The present tables and mirror matrices by name."""
        return {k: getattr(self, k) for k in (*TABLES, *MIRRORS) if getattr(self, k) is not None}

    def to(self, device) -> LabelSampler:
        return self._replace({k: v.to(device) for k, v in self.tables().items()})

    def _replace(self, tensors: dict[str, Tensor]) -> LabelSampler:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw.update(tensors)
        return type(self)(**kw)

    # --- drawing --------------------------------------------------------------------------------------
    # Each method keeps its own draw order (their outputs for a given seed/generator state are part of the
    # project's reproducibility: shipped seeds, resumed training runs, reported evaluation numbers).

    def identities(self, n: int, seed: int | None = None):
        """``(Latents, body_shape [n, 10])`` for ``seed``: identity and body shape drawn jointly from one row,
        the appearance code (``Latents.noise``) from another (N(0, I) noise without an appearance table)."""
        from portrait_core.generator import Latents

        g = _seeded(seed)
        if self.identity is None:
            identity = torch.randn(n, 80, generator=g)
            body_shape = torch.randn(n, 10, generator=g).clamp(-2, 2)
        else:
            i = torch.randint(self.identity.shape[0], (n,), generator=g)
            identity, body_shape = self.identity[i].clone(), self.body_shape[i].clone()
        if self.appearance is None:
            noise = torch.randn(n, 80, generator=g)
        else:
            noise = self.appearance[torch.randint(self.appearance.shape[0], (n,), generator=g)].clone()
        return Latents(identity, noise), body_shape

    def views(self, n: int, seed: int | None = None):
        """``(Camera, pose [n, 6, 3])`` drawn jointly (portrait camera with the portrait depth range)."""
        from portrait_core import conventions as C
        from portrait_core.geometry.camera import Camera

        g = _seeded(seed)
        if self.camera is None:
            cam, pose = self._gauss_camera_pose(n, g)
            cam, pose = torch.as_tensor(cam, dtype=torch.float32), torch.as_tensor(pose, dtype=torch.float32)
        else:
            i = torch.randint(self.camera.shape[0], (n,), generator=g)
            cam, pose = self.camera[i], self.pose[i].clone()
        cam = Camera.from_label25(cam)
        r = (cam.origin - cam.origin.new_tensor(C.PORTRAIT_LOOK_AT)).norm(dim=-1)
        return cam.with_near_far(r - C.PORTRAIT_DEPTH_HALF_RANGE, r + C.PORTRAIT_DEPTH_HALF_RANGE), pose

    def expressions(self, n: int, seed: int | None = None) -> Tensor:
        """[n, 64] expressions for ``seed``."""
        g = _seeded(seed)
        if self.expression is None:
            return torch.as_tensor(self._gauss_expression(n, g), dtype=torch.float32)
        return self.expression[torch.randint(self.expression.shape[0], (n,), generator=g)].clone()

    def inputs(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``n`` full generator inputs from the tables (identity + body shape, appearance, (camera, pose),
        expression rows drawn in that order): identity, noise, expression, body_shape, pose, camera."""
        g = generator
        i_id = torch.randint(self.identity.shape[0], (n,), generator=g)
        i_app = torch.randint(self.appearance.shape[0], (n,), generator=g)
        i_cam = torch.randint(self.camera.shape[0], (n,), generator=g)
        i_exp = torch.randint(self.expression.shape[0], (n,), generator=g)
        return {"identity": self.identity[i_id], "noise": self.appearance[i_app],
                "expression": self.expression[i_exp], "body_shape": self.body_shape[i_id],
                "pose": self.pose[i_cam], "camera": self.camera[i_cam]}

    def fake_inputs(self, batch: int, generator: torch.Generator, mirror: bool,
                    noise_dim: int = 80) -> dict[str, Tensor]:
        """The adversarial training's fake-input draw (its generator state is saved with the run, so this order is
        fixed): (camera, pose) row, (identity, body shape) row, expression row, noise (an appearance row or
        N(0, I)), then a mirror flip per draw applied to (camera, pose) when ``mirror``."""
        g = generator
        i_cam = torch.randint(self.camera.shape[0], (batch,), generator=g)
        i_id = torch.randint(self.identity.shape[0], (batch,), generator=g)
        i_exp = torch.randint(self.expression.shape[0], (batch,), generator=g)
        if self.appearance is not None:
            noise = self.appearance[torch.randint(self.appearance.shape[0], (batch,), generator=g)]
        else:
            noise = torch.randn(batch, noise_dim, generator=g)
        flip = torch.rand(batch, generator=g) < 0.5
        cam, pose = self.camera[i_cam], self.pose[i_cam]
        if mirror:
            cam = torch.where(flip[:, None], _mirror_label25(cam), cam)
            pose = torch.where(flip[:, None, None], _mirror_pose(pose), pose)
        return {"identity": self.identity[i_id], "noise": noise, "expression": self.expression[i_exp],
                "body_shape": self.body_shape[i_id], "pose": pose, "camera": cam}

    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """n label draws: camera [n, 25], pose [n, 6, 3], identity [n, 80], body_shape [n, 10], expression [n, 64]
        (+ appearance [n, D] with an appearance table), mirrored with probability 1/2 when ``self.mirror``."""
        from .mirror import mirror_camera25, mirror_pose

        g = generator
        out: dict[str, np.ndarray] = {}
        if self.camera is not None:
            i = _randint(self.camera.shape[0], n, g)
            out["camera"], out["pose"] = _f64(self.camera[i]), _f64(self.pose[i])
        else:
            out["camera"], out["pose"] = self._gauss_camera_pose(n, g)
        if self.identity is not None:
            i = _randint(self.identity.shape[0], n, g)
            out["identity"], out["body_shape"] = _f64(self.identity[i]), _f64(self.body_shape[i])
        else:
            out["identity"] = _randn((n, 80), g)
            out["body_shape"] = np.clip(_randn((n, 10), g), -2, 2)
        if self.appearance is not None:
            out["appearance"] = _f64(self.appearance[_randint(self.appearance.shape[0], n, g)])
        if self.expression is not None:
            out["expression"] = _f64(self.expression[_randint(self.expression.shape[0], n, g)])
        else:
            out["expression"] = self._gauss_expression(n, g)
        if self.mirror:
            flip = _rand(n, g) < 0.5
            if flip.any():
                out["camera"][flip] = mirror_camera25(out["camera"][flip])
                out["pose"][flip] = mirror_pose(out["pose"][flip])
                if self.expression_mirror is not None:
                    out["expression"][flip] = out["expression"][flip] @ _f64(self.expression_mirror).T
                if self.identity_mirror is not None:
                    out["identity"][flip] = out["identity"][flip] @ _f64(self.identity_mirror).T
        return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in out.items()}

    def _gauss_expression(self, n: int, g) -> np.ndarray:
        std = self.gaussian.get("expression_std", 0.3)
        return _randn((n, 64), g) * std * np.exp(-np.arange(64) / 24.0)

    def _gauss_camera_pose(self, n: int, g) -> tuple[np.ndarray, np.ndarray]:
        from portrait_core.geometry.camera import Camera

        from .synth.avatar import CLIP_STD, FRONTAL_PITCH_STD, FRONTAL_YAW_STD, POSE_STD

        clip = lambda x: np.clip(x, -CLIP_STD, CLIP_STD)
        pitch = math.pi / 2 + clip(_randn((n,), g)) * FRONTAL_PITCH_STD
        if self.gaussian.get("yaw_mode", "frontal") == "360":
            yaw = (_rand(n, g) * 2 - 1) * math.pi
        else:
            yaw = math.pi / 2 + clip(_randn((n,), g)) * FRONTAL_YAW_STD
        cam = Camera.portrait(yaw=torch.as_tensor(yaw), pitch=torch.as_tensor(pitch)).to_label25().numpy()
        return cam, clip(_randn((n, 6, 3), g)) * POSE_STD

    # --- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the one sampler file format (see the module docstring), atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        settings = {"mirror": bool(self.mirror), "gaussian": self.gaussian, "source": self.source}
        tensors = {k: v.detach().cpu().to(torch.float16 if k in MIRRORS else torch.float32).contiguous()
                   for k, v in self.tables().items()}
        from portrait_core.atomic import atomic_path

        with atomic_path(path) as tmp:  # fsynced, the umask's permissions
            save_file(tensors, str(tmp), metadata={"format": SAMPLER_FORMAT, "format_version": SAMPLER_FORMAT_VERSION,
                                                   "settings": json.dumps(settings)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> LabelSampler:
        """Read a sampler file (default: the shipped model's); errors name the file and the problem."""
        path = Path(path) if path is not None else default_samplers_path()
        if not path.is_file():
            raise SamplerError(f"{path}: no such sampler file")
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"PK\x03\x04":
            return _load_legacy_npz(path)
        return _load_safetensors(path)


def _load_safetensors(path: Path) -> LabelSampler:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != SAMPLER_FORMAT or meta.get("format_version") not in READ_VERSIONS:
                raise SamplerError(f"{path}: format {meta.get('format')!r} v{meta.get('format_version')!r}, expected "
                                   f"{SAMPLER_FORMAT!r} v{' or v'.join(READ_VERSIONS)}")
            for k in f.keys():
                shape = f.get_slice(k).get_shape()
                if len(shape) > 3 or math.prod(shape) > MAX_ROWS * 128:
                    raise SamplerError(f"{path}: tensor {k!r} declares shape {shape}, too large for a sampler table")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SamplerError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise SamplerError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {e})") from e
    try:
        settings = json.loads(meta.get("settings") or "{}")
        if not isinstance(settings, dict):
            raise ValueError("not an object")
    except ValueError as e:
        raise SamplerError(f"{path}: metadata 'settings' is not a JSON object ({e})") from None
    required = V1_TABLES if meta["format_version"] == "1" else ()
    return LabelSampler.from_tensors(tensors, where=str(path), required=required,
                                     mirror=bool(settings.get("mirror", False)),
                                     gaussian=dict(settings.get("gaussian") or {}),
                                     source=str(settings.get("source", "")))


def _load_legacy_npz(path: Path) -> LabelSampler:
    """The old ``.npz`` tables: camera_pose [N, 43], identity_shape [M, 90], expression [K, 64] + JSON meta."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SamplerError(f"{path}: (file): not a label-sampler .npz: {e}") from None
    with z:
        if "meta" not in z.files:
            raise SamplerError(f"{path}: meta: missing")
        try:
            meta = json.loads(bytes(z["meta"]).decode())
        except (ValueError, UnicodeDecodeError) as e:
            raise SamplerError(f"{path}: meta: not JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != LEGACY_NPZ_FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else meta
            raise SamplerError(f"{path}: meta.format: expected {LEGACY_NPZ_FORMAT!r}, got {got!r}")
        arrays = {}
        for key, width in (("camera_pose", 43), ("identity_shape", 90), ("expression", 64)):
            if key in z.files:
                a = z[key].astype(np.float32)
                if a.ndim != 2 or a.shape[1] != width or len(a) == 0:
                    raise SamplerError(f"{path}: {key}: expected [N, {width}], got {list(a.shape)}")
                arrays[key] = torch.from_numpy(a)
        for key in MIRRORS:
            if key in z.files:
                arrays[key] = torch.from_numpy(z[key].astype(np.float32))
    t: dict[str, Tensor] = {}
    if "camera_pose" in arrays:
        cp = arrays.pop("camera_pose")
        t["camera"], t["pose"] = cp[:, :25].contiguous(), cp[:, 25:].reshape(-1, 6, 3).contiguous()
    if "identity_shape" in arrays:
        ids = arrays.pop("identity_shape")
        t["identity"], t["body_shape"] = ids[:, :80].contiguous(), ids[:, 80:].contiguous()
    t.update(arrays)
    return LabelSampler.from_tensors(t, where=str(path), mirror=bool(meta.get("mirror")),
                                     gaussian=meta.get("gaussian") or {}, source=str(meta.get("source", "")))


def _seeded(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(seed if seed is not None else torch.seed() % (2 ** 62))


def _mirror_pose(pose: Tensor) -> Tensor:
    """Torch twin of :func:`portrait_core.data.mirror.mirror_pose` (swap left/right joints, negate y, z)."""
    from .mirror import POSE_ROW_SWAP

    sign = torch.tensor([1.0, -1.0, -1.0], dtype=pose.dtype, device=pose.device)
    return pose[:, list(POSE_ROW_SWAP)] * sign


def _mirror_label25(label: Tensor) -> Tensor:
    """Torch twin of :func:`portrait_core.data.mirror.mirror_camera25` (the ``Camera.mirror`` rule)."""
    c2w = label[:, :16].reshape(-1, 4, 4)
    s = torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=label.dtype, device=label.device)
    c2w = c2w * s[:, None] * s[None, :]
    K = label[:, 16:].reshape(-1, 3, 3).clone()
    K[:, 0, 1] = -K[:, 0, 1]
    K[:, 0, 2] = K[:, 2, 2] - K[:, 0, 2]
    return torch.cat([c2w.reshape(-1, 16), K.reshape(-1, 9)], dim=1)


def _f64(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def _randint(high: int, n: int, g) -> np.ndarray:
    return torch.randint(0, high, (n,), generator=g).numpy()


def _randn(shape, g) -> np.ndarray:
    return torch.randn(shape, generator=g, dtype=torch.float64).numpy()


def _rand(n, g) -> np.ndarray:
    return torch.rand((n,), generator=g, dtype=torch.float64).numpy()
