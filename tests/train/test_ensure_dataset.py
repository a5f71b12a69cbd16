"""Training and the user's data (issue 19 item 5): ``train`` never writes into a dataset it did not create, and
accepts every dataset form the readers accept (Busto folder or packed zip, 360°PHQ), through the same reader as
``python -m portrait_core.data validate``."""

from __future__ import annotations

import json
import types

import pytest

from portrait_core.data.labels import LabelError
from portrait_core.data.pack import pack_dataset
from tests.portrait_core.data.hostile_helpers import busto, phq360, tree
from train import data as D


def _no_render(monkeypatch):
    """Fail the test if ensure_dataset tries to start the synthetic renderer."""
    def refuse(*a, **k):
        raise AssertionError(f"ensure_dataset started a subprocess: {a}")

    monkeypatch.setattr(D, "subprocess", types.SimpleNamespace(run=refuse))


def test_phq360_folder_is_used_as_is_and_never_written(tmp_path, monkeypatch):
    """Regression: `train tiny data.root=<360PHQ folder>` rendered 64 images and a labels.json into it."""
    _no_render(monkeypatch)
    root = phq360(tmp_path / "phq", n=3)
    before = tree(root)
    assert D.ensure_dataset(str(root), 16, 64) == root
    ds = D.open_dataset(root, 16, 16, False)
    assert len(ds) == 3 and ds[0]["image"].shape == (3, 16, 16)
    assert tree(root) == before


def test_packed_zip_is_accepted(tmp_path, monkeypatch):
    _no_render(monkeypatch)
    zpath, _ = pack_dataset(busto(tmp_path / "ds", n=2), tmp_path / "ds.zip")
    assert D.ensure_dataset(str(zpath), 16, 64) == zpath
    ds = D.open_dataset(zpath, 16, 16, True)
    assert len(ds) == 4 and ds[3]["mirrored"] == 1


@pytest.mark.parametrize("content", ["file", "labels_only_junk", "zip_without_labels"])
def test_folders_holding_other_data_are_refused(tmp_path, monkeypatch, content):
    _no_render(monkeypatch)
    if content == "file":
        root = tmp_path / "photos"
        root.mkdir()
        (root / "holiday.jpg").write_bytes(b"not really")
    elif content == "labels_only_junk":
        root = tmp_path / "notes"
        root.mkdir()
        (root / "README.txt").write_text("my notes")
    else:
        import zipfile

        root = tmp_path / "archive.zip"
        with zipfile.ZipFile(root, "w") as zf:
            zf.writestr("other.txt", "x")
    before = tree(root) if root.is_dir() else root.read_bytes()
    with pytest.raises(D.DataError, match=rf"{root}: not a dataset: .*new or empty folder"):
        D.ensure_dataset(str(root), 16, 64)
    assert (tree(root) if root.is_dir() else root.read_bytes()) == before


def test_renders_only_into_new_empty_or_own_folders(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, check=False):
        out = cmd[cmd.index("--out") + 1]
        calls.append(out)
        busto(tmp_path / out, n=1)  # stands in for the renderer's labels.json
        return type("R", (), {"returncode": 0})()

    monkeypatch.setattr(D, "subprocess", types.SimpleNamespace(run=fake_run))
    new = tmp_path / "new"
    empty = tmp_path / "empty"
    empty.mkdir()
    own = tmp_path / "own"
    own.mkdir()
    (own / D.SYNTH_MARKER).write_text(json.dumps({"count": 4}))  # an unfinished render of train's own
    for root in (new, empty, own):
        assert D.ensure_dataset(str(root), 16, 4, log=lambda *_: None) == root
    assert calls == [str(new), str(empty), str(own)]
    with pytest.raises(D.DataError, match="not found. Create one with"):
        D.ensure_dataset(str(tmp_path / "absent"), 16, 0)


def test_a_phq360_folder_shadowed_by_an_earlier_render_is_named(tmp_path, monkeypatch):
    _no_render(monkeypatch)
    root = phq360(tmp_path / "phq", n=1)
    busto(root, n=1)
    (root / D.SYNTH_MARKER).write_text("{}")
    with pytest.raises(D.DataError, match="shadows this folder's 360°PHQ dataset.json"):
        D.ensure_dataset(str(root), 16, 64)


def test_synthesize_refuses_a_folder_holding_other_data(tmp_path):
    """The renderer itself never writes into someone else's data (checked before Blender starts)."""
    from portrait_core.data.synth import synthesize

    root = phq360(tmp_path / "phq", n=1)
    before = tree(root)
    with pytest.raises(LabelError, match=r"\(folder\): holds other files and no synth.json"):
        synthesize(root, 2, resolution=16, progress=False)
    assert tree(root) == before


def test_open_dataset_errors_are_named_for_train_and_data_tools(tmp_path):
    root = busto(tmp_path / "ds", n=2)
    doc = json.loads((root / "labels.json").read_text())
    doc["images"][1]["image"] = "../../etc/hostname"
    (root / "labels.json").write_text(json.dumps(doc))
    with pytest.raises(D.DatasetError) as e:
        D.open_dataset(root, 16, 16, False)
    assert isinstance(e.value, D.DataError) and isinstance(e.value, LabelError)
    assert f"{root / 'labels.json'}: images[1].image: path '../../etc/hostname' has a '..' component" in str(e.value)
