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

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from portrait_core.assets import find_samplers, uses_appearance_codes  # noqa: F401 (re-exported for train/)
from train.networks import mirror_label25, mirror_pose

LABEL_KEYS = ("camera", "face_camera", "pose", "expression", "identity", "body_shape")


class DataError(RuntimeError):
    pass


def ensure_dataset(root: str, resolution: int, count: int, log=print) -> Path:
    """``root`` if it holds labels.json; else, if ``count`` > 0, render a synthetic set there with
    ``python -m portrait_core.data synth`` (needs the bpy module); else raise a DataError saying how to get one."""
    p = Path(root)
    if (p / "labels.json").exists():
        return p
    cmd = [sys.executable, "-m", "portrait_core.data", "synth", "--out", str(p), "--count", str(count or 1000),
           "--resolution", str(resolution), "--meshes"]
    if count <= 0:
        raise DataError(f"dataset {p} not found (no labels.json). Create one with: python {' '.join(cmd[1:])} "
                        f"(or point data.root=... at a Busto-format dataset)")
    log(f"dataset {p} not found: rendering {count} synthetic images ({' '.join(cmd[2:])})")
    r = subprocess.run(cmd, check=False)
    if r.returncode != 0 or not (p / "labels.json").exists():
        raise DataError(f"could not render the synthetic dataset (exit {r.returncode}); run {' '.join(cmd[1:])}")
    return p


def open_dataset(root: str | os.PathLike, resolution: int, face_resolution: int | None, mirror: bool):
    """``portrait_core.data.dataset.PortraitDataset`` (mirror appends x-flipped copies with mirrored labels;
    ``face_resolution`` None: the face crops at the dataset's own size)."""
    from portrait_core.data.dataset import PortraitDataset

    return PortraitDataset(str(root), resolution=resolution, face_resolution=face_resolution, mirror=mirror)


@dataclass
class LabelTable:
    """All labels of a dataset as tensors (float32): camera/face_camera [N, 25], pose [N, 6, 3], expression [N, 64],
    identity [N, 80], body_shape [N, 10]."""

    camera: Tensor
    face_camera: Tensor
    pose: Tensor
    expression: Tensor
    identity: Tensor
    body_shape: Tensor
    noise: Tensor | None = None
    """Optional [M, noise_dim] table the noise latent is drawn from (appearance codes); None = N(0, I)."""

    def __len__(self) -> int:
        return self.camera.shape[0]

    @classmethod
    def from_dataset(cls, dataset) -> LabelTable:
        """From a PortraitDataset's label arrays (any source format it reads); falls back to labels.json."""
        if hasattr(dataset, "labels") and callable(dataset.labels):
            return cls(**{k: torch.from_numpy(np.asarray(dataset.labels(k), dtype=np.float32)) for k in LABEL_KEYS})
        return cls.from_labels_json(dataset.root)

    @classmethod
    def from_labels_json(cls, root: str | os.PathLike) -> LabelTable:
        from portrait_core.data.labels import load_labels_json

        doc = load_labels_json(Path(root) / "labels.json")
        recs = doc.get("images") or []
        if not recs:
            raise DataError(f"{root}/labels.json has no image records")
        cols = {k: torch.tensor(np.asarray([r[k] for r in recs], dtype=np.float32)) for k in LABEL_KEYS}
        return cls(**cols)

    def to(self, device) -> LabelTable:
        return LabelTable(**{k: getattr(self, k).to(device) for k in LABEL_KEYS},
                          noise=None if self.noise is None else self.noise.to(device))


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


def sample_fake_inputs(table: LabelTable, batch: int, gen: torch.Generator, mirror: bool,
                       noise_dim: int = 80) -> FakeInputs:
    """Draw ``batch`` generator inputs from the label distributions (see module docstring). CPU tensors."""
    n = len(table)
    i_cam = torch.randint(n, (batch,), generator=gen)
    i_id = torch.randint(n, (batch,), generator=gen)
    i_exp = torch.randint(n, (batch,), generator=gen)
    if table.noise is not None:
        noise = table.noise[torch.randint(table.noise.shape[0], (batch,), generator=gen)]
    else:
        noise = torch.randn(batch, noise_dim, generator=gen)
    flip = torch.rand(batch, generator=gen) < 0.5
    cam, pose = table.camera[i_cam], table.pose[i_cam]
    if mirror:
        cam = torch.where(flip[:, None], mirror_label25(cam), cam)
        pose = torch.where(flip[:, None, None], mirror_pose(pose), pose)
    return FakeInputs(table.identity[i_id], noise, table.expression[i_exp], table.body_shape[i_id], pose, cam)


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


