"""Shared fixtures for the training tests: one small dataset per session (the data engineer's ``synth`` at 32^2
when Blender is available, else the point-splat fixture of fixtures.py), and fast tiny configs."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from train.config import preset


def _has_portrait_dataset() -> bool:
    try:
        from portrait_core.data.dataset import PortraitDataset  # noqa: F401
    except ImportError:
        return False
    return True


class _FixtureReader(torch.utils.data.Dataset):
    """Stand-in reader for a Busto-format folder, used only while portrait_core.data.PortraitDataset is missing."""

    def __init__(self, root, resolution, face_resolution, mirror=False):
        import json

        from PIL import Image

        doc = json.loads((Path(root) / "labels.json").read_text())
        self.recs, self.root, self.res, self.fres = doc["images"], Path(root), resolution, face_resolution
        self._img = lambda p, r: torch.from_numpy(np.asarray(Image.open(self.root / p).convert("RGB").resize(
            (r, r), Image.BILINEAR), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1

    def __len__(self):
        return len(self.recs)

    def __getitem__(self, i):
        r = self.recs[i]
        out = {"image": self._img(r["image"], self.res), "face": self._img(r["face"], self.fres)}
        out["mask"] = (out["image"][:1] < 0.99).float()
        for k in ("camera", "face_camera", "pose", "expression", "identity", "body_shape"):
            out[k] = torch.tensor(r[k], dtype=torch.float32)
        return out


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny networks are latency-bound: one thread is as fast as two and far faster on a shared, loaded CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory) -> Path:
    """A 160-image 32^2 dataset, generated once per session."""
    from tests.train.fixtures import write_fixture_dataset

    root = tmp_path_factory.mktemp("data") / "fixture32"
    write_fixture_dataset(root, count=160, resolution=32, face_resolution=32, seed=0)
    return root


def install_reader_if_needed() -> None:
    """For subprocesses: the same stand-in as ``dataset_reader`` (no-op once PortraitDataset exists)."""
    if not _has_portrait_dataset():
        import train.data as D

        D.open_dataset = lambda root, res, fres, mirror: _FixtureReader(root, res, fres, mirror)


@pytest.fixture()
def dataset_reader(monkeypatch):
    """Make train.data.open_dataset work before PortraitDataset exists (no-op once it does)."""
    if not _has_portrait_dataset():
        import train.data as D

        monkeypatch.setattr(D, "open_dataset", lambda root, res, fres, mirror: _FixtureReader(root, res, fres, mirror))
    yield


@pytest.fixture(scope="session")
def face_recon_ckpt(dataset_root, tmp_path_factory) -> Path:
    from train import face_recon as FR

    ds = _FixtureReader(dataset_root, 32, 32) if not _has_portrait_dataset() else None
    if ds is None:
        from portrait_core.data.dataset import PortraitDataset

        ds = PortraitDataset(str(dataset_root), resolution=32, face_resolution=32, mirror=False)
    data = FR.collect(ds, FR.default_projector())
    torch.set_num_threads(1)
    net, report = FR.fit(data, steps=40, batch=16, width=16, seed=0)
    path = tmp_path_factory.mktemp("recon") / "face_recon.pt"
    FR.save(path, net, report)
    return path


def tiny_cfg(dataset_root: Path, out: Path, face_recon: Path, **run_over):
    cfg = preset("tiny")
    return replace(
        cfg,
        data=replace(cfg.data, root=str(dataset_root), generate_count=0, mirror=True),
        model=replace(cfg.model, face_recon=str(face_recon)),
        run=replace(cfg.run, out=str(out), progress=False, tensorboard=False, **run_over),
    )


os.environ.setdefault("BUSTO_TEST", "1")
