"""The one atomic-write helper: files get the umask's permissions (mkstemp alone made 0600 checkpoints and
labels.json that a render-farm node running as another user cannot read), a failed write leaves the old file and
no temporary file (issue 19, item 9). Each writer that goes through it is checked at least once."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from portrait_core.atomic import atomic_path, atomic_write_bytes, atomic_write_json, creation_mode, current_umask


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_current_umask_and_creation_mode(umask):
    assert current_umask() == umask
    assert creation_mode() == 0o666 & ~umask


def test_atomic_write_gets_the_umask_mode_like_open(tmp_path, umask):
    ref = tmp_path / "plain.txt"
    ref.write_text("x")
    p = atomic_write_bytes(tmp_path / "sub" / "a.bin", b"abc")
    assert p.read_bytes() == b"abc"
    assert _mode(p) == _mode(ref) == 0o666 & ~umask
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "labels.json"
    atomic_write_json(p, {"v": 1})
    with pytest.raises(ValueError):
        atomic_write_json(p, {"v": float("nan")})  # allow_nan=False
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(p.read_text()) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["labels.json"]


def test_atomic_path_suffix_for_writers_that_add_extensions(tmp_path):
    p = tmp_path / "cache.npz"
    with atomic_path(p, suffix=".tmp.npz") as tmp:
        np.savez_compressed(tmp, a=np.arange(3))
    with np.load(p) as z:
        assert z["a"].tolist() == [0, 1, 2]
    assert [x.name for x in tmp_path.iterdir()] == ["cache.npz"]


@pytest.fixture()
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_every_writer_creates_0644_under_umask_022(tmp_path, umask022):
    """Generator checkpoint, labels.json, keyframe JSON, synthetic-data PLY and PNG."""
    import torch

    from portrait_core.data.labels import write_json_atomic
    from portrait_core.generator import Generator, generator_config, save_generator
    from portrait_core.geometry.keyframes import KeyframeTrack, save_keyframes_json

    torch.manual_seed(0)
    written = [save_generator(tmp_path / "g.safetensors", Generator(generator_config("tiny")))]
    write_json_atomic(tmp_path / "labels.json", {"a": 1})
    written.append(tmp_path / "labels.json")
    track = KeyframeTrack(pose=np.zeros((2, 6, 3)), expression=np.zeros((2, 64)))
    written.append(save_keyframes_json(track, tmp_path / "k.json"))
    from portrait_core.data.synth.meshes import write_ply

    write_ply(tmp_path / "m.ply", np.zeros((3, 3), np.float32), np.array([[0, 1, 2]]))
    written.append(tmp_path / "m.ply")
    from portrait_core.data.synth.render import _write_png

    _write_png(tmp_path / "i.png", np.zeros((4, 4, 3), np.uint8))
    written.append(tmp_path / "i.png")
    for p in written:
        assert _mode(p) == 0o644, (p, oct(_mode(p)))
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")], list(tmp_path.iterdir())
