"""``python -m portrait_core.data pack DIR`` without ``--out`` writes beside the dataset, never into the current
folder (the repository root, when run from there)."""

from __future__ import annotations

from hostile_helpers import busto

from portrait_core.data.__main__ import main as data_cli
from portrait_core.data.pack import default_archive_path


def test_default_archive_is_beside_the_dataset(tmp_path):
    assert default_archive_path(tmp_path / "out" / "synth") == (tmp_path / "out" / "synth.zip").resolve()
    assert default_archive_path(tmp_path / "a.zip") == (tmp_path / "a-packed.zip").resolve()
    assert default_archive_path(tmp_path / "ds/") == (tmp_path / "ds.zip").resolve()


def test_pack_without_out_writes_beside_the_dataset_not_the_cwd(tmp_path, monkeypatch, capsys):
    root = busto(tmp_path / "data" / "ds", n=2)
    cwd = tmp_path / "repo"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert data_cli(["pack", str(root)]) == 0
    archive = tmp_path / "data" / "ds.zip"
    assert archive.is_file() and str(archive) in capsys.readouterr().out
    assert list(cwd.iterdir()) == []
    assert data_cli(["validate", str(archive)]) == 0
    # packing the archive again does not overwrite it
    assert data_cli(["pack", str(archive)]) == 0
    assert (tmp_path / "data" / "ds-packed.zip").is_file() and archive.is_file()
