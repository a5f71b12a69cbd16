"""``PortraitDataset``: a torch Dataset over any supported dataset (Busto folder, packed zip, SHHQ-HS, 360°PHQ).

Each item is a dict of tensors (float32):

=============== ============ =====================================================================
key             shape        meaning
=============== ============ =====================================================================
image           [3, H, W]    portrait, sRGB values scaled to [-1, 1], on white
mask            [1, H, W]    foreground alpha in [0, 1] (all ones when the source has no mask)
face            [3, h, w]    face-camera crop in [-1, 1] (cut from the portrait when the source has none)
camera          [25]         portrait camera label (cam2world OpenCV + normalised intrinsics)
face_camera     [25]         face camera label
pose            [6, 3]       axis-angle of SMPL joints 12..17 relative to the canonical pose
expression      [64]         3DMM expression coefficients
identity        [80]         3DMM identity coefficients
body_shape      [10]         SMPL betas
mirrored        []           1.0 for mirrored items
index           []           record index (int64)
=============== ============ =====================================================================

``mirror=True`` doubles the dataset: item ``i + N`` is item ``i`` flipped left-right with labels mirrored
(``mirror.py``: camera flip rule, pose axis-angle + joint swap, expression/identity mirror matrices of the face
model). Problems (malformed labels, missing or corrupt files) are collected at construction and reported
together, each naming the file and the field; ``on_error='skip'`` drops those records with a warning instead.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from .labels import ARRAY_FIELDS, LabelError
from .mirror import mirror_camera25, mirror_pose
from .readers import Source, crop_face, open_source
from .safety import check_resolution


def _resize(arr: np.ndarray, size: int, resample: str = "lanczos") -> np.ndarray:
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    from PIL import Image

    filt = {"lanczos": Image.Resampling.LANCZOS, "bilinear": Image.Resampling.BILINEAR}[resample]
    return np.array(Image.fromarray(arr).resize((size, size), filt))


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class PortraitDataset(Dataset):
    """Portraits, masks, face crops and labels from ``root`` (folder or archive in any supported format).

    ``resolution`` / ``face_resolution``: output sizes (resized with Lanczos when they differ from the files;
    None keeps the stored size). ``mirror``: append mirrored copies. ``on_error``: 'raise' (default) or 'skip'.
    ``check_images``: decode every file once at construction so corrupt files are reported up front.
    ``face_model``: the FaceModel whose basis the expression/identity labels use (for mirroring); default: the
    synthetic model when the dataset says ``face_model: synthetic``, otherwise expression/identity are left
    unmirrored with a warning.
    """

    def __init__(self, root: str | os.PathLike, resolution: int | None = None, face_resolution: int | None = None,
                 mirror: bool = False, on_error: str = "raise", check_images: bool = True, face_model=None,
                 masks: str | None = None, fmt: str = "auto"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.source: Source = open_source(root, fmt=fmt, strict=False, masks=masks)
        problems = [str(p) for p in self.source.problems]
        records = list(self.source.records)
        keep = []
        for i, rec in enumerate(records):
            bad = []
            for key in ("image", "mask", "face"):
                rel = rec.get(key)
                if not rel:
                    continue
                why = self.source.verify_image(rel) if check_images else (None if self.source.has_file(rel) else "file not found")
                if why:
                    bad.append(f"{self.source.describe(rel)}: {self._where(rec, i)}.{key}: {why}")
            problems += bad
            if not bad:
                keep.append(rec)
        if problems:
            if on_error == "raise":
                raise LabelError(problems)
            warnings.warn(f"PortraitDataset({root}): skipping {len(problems)} problem(s):\n  " + "\n  ".join(problems),
                          stacklevel=2)
        if not keep:
            raise LabelError(f"{root}: (dataset): no usable records")
        self.records = keep
        self.info = self.source.info
        self.resolution = resolution or int(self.info.get("resolution") or 0) or None
        self.face_resolution = face_resolution or int(self.info.get("face_resolution") or 0) or self.resolution
        check_resolution(self.resolution, f"{root}: resolution", allow_none=True)
        check_resolution(self.face_resolution, f"{root}: face_resolution", allow_none=True)
        self.mirror = mirror
        self._labels = {k: np.stack([np.asarray(r[k], dtype=np.float32) for r in keep]) for k in ARRAY_FIELDS}
        self._mirror_mats = None
        if mirror:
            self._mirror_mats = self._face_mirror(face_model)

    @staticmethod
    def _where(rec: dict, i: int) -> str:
        return f"images[{i}] ({rec.get('name')})"

    def _face_mirror(self, face_model):
        from .mirror import mirror_matrices

        if face_model is None and self.info.get("face_model") == "synthetic":
            from portrait_core.face.model import FaceModel

            face_model = FaceModel.synthetic()
        if face_model is None:
            warnings.warn(f"{self.source.root}: no face model for mirroring expression/identity "
                          f"(face_model={self.info.get('face_model')!r}); they stay unmirrored", stacklevel=3)
            return None
        m = mirror_matrices(face_model)
        return {"expression": m["expression"].astype(np.float32), "identity": m["identity"].astype(np.float32)}

    def __len__(self) -> int:
        return len(self.records) * (2 if self.mirror else 1)

    def labels(self, key: str) -> np.ndarray:
        """All records' label array ``key`` (unmirrored), e.g. labels('camera') -> [N, 25]."""
        return self._labels[key]

    def _image(self, rel: str, mode: str, i: int, key: str) -> np.ndarray:
        try:
            return self.source.read_png(rel, mode)
        except (OSError, FileNotFoundError) as e:
            raise LabelError(f"{e} (while loading {self._where(self.records[i], i)}.{key})") from None

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self.records)
        if not 0 <= index < len(self):
            raise IndexError(index)
        flip = index >= n
        i = index % n
        rec = self.records[i]
        img = self._image(rec["image"], "RGB", i, "image")
        mask = self._image(rec["mask"], "L", i, "mask") if rec.get("mask") else np.full(img.shape[:2], 255, np.uint8)
        if rec.get("face"):
            face = self._image(rec["face"], "RGB", i, "face")
        else:
            face = crop_face(img, self._labels["camera"][i], self._labels["face_camera"][i],
                             self.face_resolution or img.shape[0])
        res = self.resolution or img.shape[0]
        img, mask = _resize(img, res), _resize(mask, res, "bilinear")
        face = _resize(face, self.face_resolution or face.shape[0])
        labels = {k: self._labels[k][i].copy() for k in ARRAY_FIELDS}
        if flip:
            img, mask, face = img[:, ::-1], mask[:, ::-1], face[:, ::-1]
            labels["camera"] = mirror_camera25(labels["camera"]).astype(np.float32)
            labels["face_camera"] = mirror_camera25(labels["face_camera"]).astype(np.float32)
            labels["pose"] = mirror_pose(labels["pose"]).astype(np.float32)
            if self._mirror_mats is not None:
                labels["expression"] = self._mirror_mats["expression"] @ labels["expression"]
                labels["identity"] = self._mirror_mats["identity"] @ labels["identity"]
        item = {"image": _to_tensor(img), "mask": torch.from_numpy(np.ascontiguousarray(mask)).float().div_(255)[None],
                "face": _to_tensor(face)}
        item.update({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in labels.items()})
        item["mirrored"] = torch.tensor(float(flip))
        item["index"] = torch.tensor(i, dtype=torch.int64)
        return item
