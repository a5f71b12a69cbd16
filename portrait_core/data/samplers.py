"""Label-distribution samplers for training and inference (the official release's sampler tables, generalised).

Three empirical tables, each row from one dataset image, drawn independently of each other:

* ``camera_pose`` [N, 25 + 18]: portrait camera label + pose code (6x3 axis-angle) — drawn **jointly**
  (the official ``camera_pose_joint_sample.npy`` holds (pitch, yaw, 6x3 Euler));
* ``identity_shape`` [N, 80 + 10]: 3DMM identity + SMPL betas — drawn **jointly** (``id_shape_sampler_body.npy``);
* ``expression`` [N, 64] (``expression_body.npy``).

``mirror=True`` replaces a drawn row by its mirror image with probability 1/2 (camera flip rule, pose mirror,
expression/identity mirror matrices when given). Without a dataset, ``LabelSampler.gaussian`` draws from the
synthetic renderer's distributions (frontal or 360 cameras, N(0, POSE_STD) pose, N(0, 1) identity and betas,
small expressions). ``save``/``load`` use a small ``.npz`` (float16 tables + JSON metadata) a checkpoint can carry.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .mirror import mirror_camera25, mirror_pose

SAMPLER_FORMAT = "busto-label-sampler"
SAMPLER_VERSION = 1


@dataclass
class LabelSampler:
    """Empirical (or Gaussian) label tables; ``sample(n, generator)`` -> dict of float32 tensors."""

    camera_pose: np.ndarray | None = None  # [N, 43]
    identity_shape: np.ndarray | None = None  # [M, 90]
    expression: np.ndarray | None = None  # [K, 64]
    mirror: bool = False
    expression_mirror: np.ndarray | None = None  # [64, 64]
    identity_mirror: np.ndarray | None = None  # [80, 80]
    gaussian: dict = field(default_factory=dict)  # settings of the fallback when a table is None
    source: str = ""

    # --- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_dataset(cls, dataset, mirror: bool = False, max_rows: int | None = None, seed: int = 0) -> LabelSampler:
        """Tables from a ``PortraitDataset`` (or anything with ``labels(key)``); ``max_rows`` subsamples."""
        cam = np.asarray(dataset.labels("camera"), dtype=np.float32)
        pose = np.asarray(dataset.labels("pose"), dtype=np.float32).reshape(len(cam), 18)
        ids = np.concatenate([dataset.labels("identity"), dataset.labels("body_shape")], axis=1).astype(np.float32)
        exp = np.asarray(dataset.labels("expression"), dtype=np.float32)
        cp = np.concatenate([cam, pose], axis=1)
        if max_rows is not None and len(cp) > max_rows:
            idx = np.random.default_rng(seed).choice(len(cp), max_rows, replace=False)
            cp, ids, exp = cp[idx], ids[idx], exp[idx]
        mats = getattr(dataset, "_mirror_mats", None) or {}
        return cls(camera_pose=cp, identity_shape=ids, expression=exp, mirror=mirror,
                   expression_mirror=mats.get("expression"), identity_mirror=mats.get("identity"),
                   source=str(getattr(getattr(dataset, "source", None), "root", "")))

    @classmethod
    def from_official_tables(cls, camera_pose_joint: np.ndarray, id_shape: np.ndarray, expression: np.ndarray,
                             mirror: bool = False) -> LabelSampler:
        """From the AniPortraitGAN release's tables: [N, 20] (pitch, yaw, 6x3 ZYX Euler), [M, 90], [K, 64]."""
        from portrait_core.geometry.camera import Camera
        from portrait_core.geometry.rotations import euler_zyx_to_matrix, matrix_to_axis_angle

        cj = np.asarray(camera_pose_joint, dtype=np.float64)
        if cj.ndim != 2 or cj.shape[1] != 20:
            raise ValueError(f"camera_pose_joint_sample: expected [N, 20], got {list(cj.shape)}")
        cam = Camera.portrait(yaw=torch.as_tensor(cj[:, 1]), pitch=torch.as_tensor(cj[:, 0])).to_label25().numpy()
        aa = matrix_to_axis_angle(euler_zyx_to_matrix(torch.as_tensor(cj[:, 2:].reshape(-1, 6, 3)))).numpy()
        return cls(camera_pose=np.concatenate([cam, aa.reshape(-1, 18)], 1).astype(np.float32),
                   identity_shape=np.asarray(id_shape, np.float32), expression=np.asarray(expression, np.float32),
                   mirror=mirror, source="official-tables")

    @classmethod
    def gaussian_fallback(cls, yaw_mode: str = "frontal", expression_std: float = 0.3) -> LabelSampler:
        """No dataset: the synthetic renderer's label distributions (see synth/avatar.py)."""
        if yaw_mode not in ("frontal", "360"):
            raise ValueError(f"yaw_mode must be 'frontal' or '360', got {yaw_mode!r}")
        return cls(gaussian={"yaw_mode": yaw_mode, "expression_std": expression_std}, source="gaussian")

    # --- drawing --------------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """n draws: camera [n, 25], pose [n, 6, 3], identity [n, 80], body_shape [n, 10], expression [n, 64]."""
        g = generator
        out: dict[str, np.ndarray] = {}
        if self.camera_pose is not None:
            rows = self.camera_pose[_randint(len(self.camera_pose), n, g)].astype(np.float64)
            out["camera"], out["pose"] = rows[:, :25], rows[:, 25:].reshape(n, 6, 3)
        else:
            out["camera"], out["pose"] = self._gauss_camera_pose(n, g)
        if self.identity_shape is not None:
            rows = self.identity_shape[_randint(len(self.identity_shape), n, g)].astype(np.float64)
            out["identity"], out["body_shape"] = rows[:, :80], rows[:, 80:]
        else:
            out["identity"] = _randn((n, 80), g)
            out["body_shape"] = np.clip(_randn((n, 10), g), -2, 2)
        if self.expression is not None:
            out["expression"] = self.expression[_randint(len(self.expression), n, g)].astype(np.float64)
        else:
            std = self.gaussian.get("expression_std", 0.3)
            out["expression"] = _randn((n, 64), g) * std * np.exp(-np.arange(64) / 24.0)
        if self.mirror:
            flip = _rand(n, g) < 0.5
            if flip.any():
                out["camera"][flip] = mirror_camera25(out["camera"][flip])
                out["pose"][flip] = mirror_pose(out["pose"][flip])
                if self.expression_mirror is not None:
                    out["expression"][flip] = out["expression"][flip] @ np.asarray(self.expression_mirror).T
                if self.identity_mirror is not None:
                    out["identity"][flip] = out["identity"][flip] @ np.asarray(self.identity_mirror).T
        return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in out.items()}

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
    def save(self, path: str | os.PathLike) -> None:
        """Write a compact ``.npz``: float16 tables and mirror matrices (float32 cameras/poses) + JSON metadata."""
        arrays: dict[str, np.ndarray] = {}
        if self.camera_pose is not None:
            arrays["camera_pose"] = self.camera_pose.astype(np.float32)
        if self.identity_shape is not None:
            arrays["identity_shape"] = self.identity_shape.astype(np.float16)
        if self.expression is not None:
            arrays["expression"] = self.expression.astype(np.float16)
        if self.expression_mirror is not None:
            arrays["expression_mirror"] = np.asarray(self.expression_mirror, np.float16)
        if self.identity_mirror is not None:
            arrays["identity_mirror"] = np.asarray(self.identity_mirror, np.float16)
        meta = {"format": SAMPLER_FORMAT, "version": SAMPLER_VERSION, "mirror": self.mirror,
                "gaussian": self.gaussian, "source": self.source}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = f"{path}.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LabelSampler:
        """Read :meth:`save` output; errors name the file and the field."""
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: (file): not a label-sampler .npz: {e}") from None
        with z:
            if "meta" not in z.files:
                raise ValueError(f"{path}: meta: missing")
            meta = json.loads(bytes(z["meta"]).decode())
            if meta.get("format") != SAMPLER_FORMAT:
                raise ValueError(f"{path}: meta.format: expected {SAMPLER_FORMAT!r}, got {meta.get('format')!r}")
            shapes = {"camera_pose": 43, "identity_shape": 90, "expression": 64}
            kw = {}
            for key, width in shapes.items():
                if key in z.files:
                    a = z[key].astype(np.float32)
                    if a.ndim != 2 or a.shape[1] != width or len(a) == 0:
                        raise ValueError(f"{path}: {key}: expected [N, {width}], got {list(a.shape)}")
                    kw[key] = a
            for key in ("expression_mirror", "identity_mirror"):
                if key in z.files:
                    kw[key] = z[key].astype(np.float32)
        return cls(mirror=bool(meta.get("mirror")), gaussian=meta.get("gaussian") or {}, source=meta.get("source", ""),
                   **kw)


def _randint(high: int, n: int, g) -> np.ndarray:
    return torch.randint(0, high, (n,), generator=g).numpy()


def _randn(shape, g) -> np.ndarray:
    return torch.randn(shape, generator=g, dtype=torch.float64).numpy()


def _rand(n, g) -> np.ndarray:
    return torch.rand((n,), generator=g, dtype=torch.float64).numpy()
