"""Data for training: the real-image stream (deterministic, resumable, sharded across ranks) and the sampling of
fake inputs from the dataset's label distributions.

Real order: epoch e is a permutation of all indices drawn from (seed, e); global step s takes the next
``global_batch`` entries and rank r takes its contiguous slice. Position = (epoch, offset) in global samples, so a
resume (on any world size with the same global batch) continues with exactly the next images, and every image is
seen once per epoch across ranks.

Fake inputs: (camera, pose) are drawn jointly from one dataset record, (identity, body_shape) jointly from
another, expression from a third, noise ~ N(0, I) - from a dedicated ``torch.Generator`` whose state is saved.
With mirroring, half of the draws take the x-mirrored (camera, pose). A generator whose noise latent is an
appearance code (the shipped default model, ``train.supervised`` runs) instead draws its noise from the appearance
rows of its label samplers (``LabelTable.noise``; see :func:`find_samplers`).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from portrait_core.data.labels import LabelError
from portrait_core.data.samplers import LabelSampler
from portrait_core.generator.loading import find_samplers, uses_appearance_codes  # noqa: F401 (re-exported for train/)
from train.networks import NECK_HEAD

LABEL_KEYS = ("camera", "face_camera", "pose", "expression", "identity", "body_shape")


class DataError(RuntimeError):
    pass


SYNTH_MARKER = "synth.json"
"""Written by ``portrait_core.data synth`` into every folder it renders: the one kind of folder training writes to."""


class DatasetError(LabelError, DataError):
    """A dataset the readers reject (a DataError for ``train``'s CLI, a LabelError for the data tools)."""


def _render_refusal(p: Path) -> str | None:
    """Why training may not render a synthetic dataset into ``p``, or None (``p`` does not exist, is an empty
    folder, or holds an unfinished synthetic render of its own)."""
    if not p.exists():
        return None
    if not p.is_dir():
        return "it is a file but not a dataset archive (a zip holding labels.json or dataset.json)"
    if (p / SYNTH_MARKER).is_file():
        return None
    entries = sorted(e.name for e in p.iterdir())
    if not entries:
        return None
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    return f"the folder holds files ({shown}) but no dataset in a format the readers accept"


def ensure_dataset(root: str, resolution: int, count: int, log=print) -> Path:
    """``root`` if it holds a dataset in any form the readers accept (Busto folder or packed ``.zip``, SHHQ-HS
    folder, 360°PHQ folder/zip: ``portrait_core.data.readers.detect_format``, as ``validate`` uses); else, if
    ``count`` > 0, render a synthetic set there with ``python -m portrait_core.data synth`` (needs the bpy module).

    Training never writes into data it did not create: it renders only into a folder that does not exist, is
    empty, or holds an unfinished synthetic render (``synth.json``); anything else raises a DataError.
    """
    from portrait_core.data.readers import detect_format

    p = Path(root)
    try:
        fmt = detect_format(p)
    except LabelError:
        fmt = None
    if fmt is not None:
        if fmt == "busto" and (p / SYNTH_MARKER).is_file() and (p / "dataset.json").is_file():
            raise DataError(f"{p}: a synthetic labels.json (with {SYNTH_MARKER}) shadows this folder's 360°PHQ "
                            f"dataset.json (an earlier version of train rendered into it); remove labels.json, "
                            f"{SYNTH_MARKER}, records/ and the synthetic images/, masks/, faces/, meshes/ to use it")
        return p
    cmd = [sys.executable, "-m", "portrait_core.data", "synth", "--out", str(p), "--count", str(count or 1000),
           "--resolution", str(resolution), "--meshes"]
    refusal = _render_refusal(p)
    if refusal is not None:
        raise DataError(f"{p}: not a dataset: {refusal}. Point data.root=... at a dataset (`python -m "
                        f"portrait_core.data validate {p}` says what is wrong with one), or at a new or empty "
                        f"folder to render a synthetic one there")
    if count <= 0:
        raise DataError(f"dataset {p} not found. Create one with: python {' '.join(cmd[1:])} "
                        f"(or point data.root=... at a dataset: Busto folder or .zip, SHHQ-HS or 360°PHQ)")
    log(f"dataset {p} not found: rendering {count} synthetic images ({' '.join(cmd[2:])})")
    r = subprocess.run(cmd, check=False)
    if r.returncode != 0 or not (p / "labels.json").exists():
        raise DataError(f"could not render the synthetic dataset (exit {r.returncode}); run {' '.join(cmd[1:])}")
    return p


def open_dataset(root: str | os.PathLike, resolution: int, face_resolution: int | None, mirror: bool):
    """``portrait_core.data.dataset.PortraitDataset`` over any dataset form the readers accept, through the reader
    ``validate`` uses (mirror appends x-flipped copies with mirrored labels; ``face_resolution`` None: the face
    crops at the dataset's own size). Label problems raise a :class:`DatasetError` naming file and field."""
    from portrait_core.data.dataset import PortraitDataset

    try:
        return PortraitDataset(str(root), resolution=resolution, face_resolution=face_resolution, mirror=mirror)
    except DatasetError:
        raise
    except LabelError as e:
        raise DatasetError(e.problems) from None


#: All labels of a dataset as a label sampler, one row per image (float32): camera/face_camera [N, 25], pose
#: [N, 6, 3], expression [N, 64], identity [N, 80], body_shape [N, 10]; ``noise`` (= ``appearance``) optional
#: [M, noise_dim] appearance codes the noise latent is drawn from, None = N(0, I). Busto has one sampler class.
LabelTable = LabelSampler


@dataclass
class FakeInputs:
    """One batch of generator inputs (all on one device)."""

    identity: Tensor  # [B, 80]
    noise: Tensor  # [B, 80]
    expression: Tensor  # [B, 64]
    body_shape: Tensor  # [B, 10]
    pose: Tensor  # [B, 6, 3] (label pose; the pose branch may replace neck/head)
    camera: Tensor  # [B, 25] portrait camera label

    def slice(self, a: int, b: int) -> FakeInputs:
        return FakeInputs(*(getattr(self, k)[a:b] for k in ("identity", "noise", "expression", "body_shape",
                                                             "pose", "camera")))

    def to(self, device) -> FakeInputs:
        return FakeInputs(*(getattr(self, k).to(device) for k in ("identity", "noise", "expression", "body_shape",
                                                                  "pose", "camera")))


def sample_fake_inputs(table: LabelSampler, batch: int, gen: torch.Generator, mirror: bool,
                       noise_dim: int = 80) -> FakeInputs:
    """Draw ``batch`` generator inputs from the label distributions (see module docstring and
    :meth:`LabelSampler.fake_inputs`). CPU tensors."""
    d = table.fake_inputs(batch, gen, mirror, noise_dim)
    return FakeInputs(d["identity"], d["noise"], d["expression"], d["body_shape"], d["pose"], d["camera"])


class GlobalOrder:
    """Deterministic epoch permutations over ``n`` items; state = (epoch, offset)."""

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise DataError("empty dataset")
        self.n, self.seed = n, seed
        self.epoch, self.offset = 0, 0

    def _perm(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def next_global(self, global_batch: int) -> Tensor:
        """The next ``global_batch`` indices (crossing into the next epoch when needed)."""
        out = []
        need = global_batch
        while need > 0:
            perm = self._perm(self.epoch)
            take = perm[self.offset:self.offset + need]
            out.append(take)
            need -= take.numel()
            self.offset += take.numel()
            if self.offset >= self.n:
                self.epoch, self.offset = self.epoch + 1, 0
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "n": self.n, "seed": self.seed}

    def load_state_dict(self, s: dict) -> None:
        if int(s["n"]) != self.n:
            raise DataError(f"resume: the dataset has {self.n} images but the checkpoint was trained on {s['n']}")
        self.epoch, self.offset = int(s["epoch"]), int(s["offset"])


def rank_slice(indices: Tensor, rank: int, world: int) -> Tensor:
    per = indices.numel() // world
    return indices[rank * per:(rank + 1) * per]


def collate(items: list[dict]) -> dict[str, Tensor]:
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


class RealStream:
    """Fetches this rank's share of each global batch from a map-style dataset (optionally with a thread pool)."""

    def __init__(self, dataset, order: GlobalOrder, global_batch: int, rank: int = 0, world: int = 1,
                 workers: int = 0):
        self.dataset, self.order, self.global_batch = dataset, order, global_batch
        self.rank, self.world = rank, world
        self._pool = None
        if workers > 0:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(workers)

    def next(self) -> dict[str, Tensor]:
        idx = rank_slice(self.order.next_global(self.global_batch), self.rank, self.world).tolist()
        if self._pool is not None:
            items = list(self._pool.map(self.dataset.__getitem__, idx))
        else:
            items = [self.dataset[i] for i in idx]
        return collate(items)




# ------------------------------------------------------------------------------------------ coarse pose labels
def coarse_pose(pose: Tensor, degrees: float, seed: int = 0, joints: tuple[int, ...] = NECK_HEAD) -> Tensor:
    """Coarse copies of pose labels ``pose`` [N, 6, 3] (axis-angle, canonical-relative; ``data.pose_label_noise``):
    the rows ``joints`` (default neck and head, the joints the 3DPortraitGAN pose branch learns) of record ``i``
    are rotated by exactly ``degrees`` about axes drawn from ``(seed, i)`` alone (uniform on the sphere, one per
    joint; ``R_coarse = R_noise R_label``), so a record's coarse label depends on nothing else in the dataset and
    its angular error against the true label is ``degrees``. Other rows are returned unchanged."""
    from portrait_core.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    pose = torch.as_tensor(pose, dtype=torch.float32).reshape(-1, 6, 3)
    if degrees <= 0 or pose.shape[0] == 0:
        return pose.clone()
    axes = torch.from_numpy(np.stack([np.random.default_rng([seed, i]).standard_normal((len(joints), 3))
                                      for i in range(pose.shape[0])]))
    noise = axes / axes.norm(dim=-1, keepdim=True) * math.radians(degrees)  # [N, J, 3] float64
    rows = list(joints)
    out = pose.clone()
    rot = axis_angle_to_matrix(noise) @ axis_angle_to_matrix(pose[:, rows].double())
    out[:, rows] = matrix_to_axis_angle(rot).float()
    return out


class CoarsePoseDataset:
    """A ``PortraitDataset`` whose pose labels are :func:`coarse_pose` copies: ``labels('pose')`` (the fake-input
    tables) and each item's ``pose`` (mirrored items: the mirrored coarse label) are coarse; the stored label is
    each item's ``true_pose`` and :attr:`true_pose` [N, 6, 3]. Everything else is the wrapped dataset's."""

    def __init__(self, dataset, degrees: float, seed: int = 0):
        self.dataset, self.degrees, self.seed = dataset, float(degrees), int(seed)
        self.true_pose = np.asarray(dataset.labels("pose"), dtype=np.float32).reshape(-1, 6, 3)
        self.pose = coarse_pose(torch.from_numpy(self.true_pose), degrees, seed).numpy()

    def __len__(self) -> int:
        return len(self.dataset)

    def labels(self, key: str) -> np.ndarray:
        return self.pose if key == "pose" else self.dataset.labels(key)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        from portrait_core.data.mirror import mirror_pose

        item = self.dataset[index]
        pose = self.pose[int(item["index"])]
        if float(item["mirrored"]) > 0:
            pose = mirror_pose(pose)
        item["true_pose"] = item["pose"]
        item["pose"] = torch.from_numpy(np.ascontiguousarray(pose, dtype=np.float32))
        return item

    def __getattr__(self, name: str):  # the wrapped dataset's records, info, source, mirror matrices ...
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
