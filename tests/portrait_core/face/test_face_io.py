"""BFM_model_front.mat loader/saver: round trip of the synthetic layout and errors that name file and key."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from portrait_core.face import BFM_KEYS, BFMFormatError, build_synthetic_bfm, load_bfm_mat, save_bfm_mat


def _tiny_bfm() -> dict[str, np.ndarray]:
    """A minimal valid layout: a square of 4 vertices / 2 triangles (decimetres, 1-based)."""
    N, F = 4, 2
    rng = np.random.default_rng(0)
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    tri = np.array([[1, 2, 3], [2, 4, 3]])
    pb = np.full((N, 8), F + 1)
    pb[0, 0] = 1
    pb[1, :2] = [1, 2]
    pb[2, :2] = [1, 2]
    pb[3, 0] = 2
    return {
        "meanshape": v.reshape(1, -1),
        "idBase": rng.normal(size=(3 * N, 80)).astype(np.float32),
        "exBase": rng.normal(size=(3 * N, 64)).astype(np.float32),
        "meantex": np.full((1, 3 * N), 200.0, np.float32),
        "texBase": rng.normal(size=(3 * N, 80)).astype(np.float32),
        "tri": tri,
        "point_buf": pb,
        "keypoints": (np.arange(68) % N + 1).reshape(1, 68),
        "frontmask2_idx": np.array([[1], [2], [3]]),
        "tri_mask2": np.array([[1, 2, 3]]),
        "skinmask": np.ones((1, N), np.float32),
    }


def _write_raw(path, d):
    scipy.io.savemat(str(path), d)
    return path


@pytest.fixture(scope="module")
def synthetic_mat(tmp_path_factory):
    bfm = build_synthetic_bfm()
    path = tmp_path_factory.mktemp("bfm") / "BFM_model_front.mat"
    save_bfm_mat(path, bfm)
    return bfm, path


def test_round_trip_synthetic_layout(synthetic_mat):
    bfm, path = synthetic_mat
    raw = scipy.io.loadmat(str(path))
    assert set(BFM_KEYS) <= set(raw)
    N = bfm["meanshape"].shape[1] // 3
    F = bfm["tri"].shape[0]
    # exact on-disk orientation of the Deep3DFaceRecon layout
    assert raw["meanshape"].shape == (1, 3 * N)
    assert raw["idBase"].shape == (3 * N, 80)
    assert raw["exBase"].shape == (3 * N, 64)
    assert raw["meantex"].shape == (1, 3 * N)
    assert raw["texBase"].shape == (3 * N, 80)
    assert raw["tri"].shape == (F, 3)
    assert raw["point_buf"].shape == (N, 8)
    assert raw["keypoints"].shape == (1, 68)
    assert raw["frontmask2_idx"].shape[1] == 1
    assert raw["tri_mask2"].shape[1] == 3
    assert raw["skinmask"].shape == (1, N)
    loaded = load_bfm_mat(path)
    for k in BFM_KEYS:
        assert loaded[k].shape == bfm[k].shape, k
        np.testing.assert_array_equal(loaded[k], bfm[k], err_msg=k)
    # 1-based indices survive: faces start at 1, the padding face is F+1
    assert loaded["tri"].min() == 1 and loaded["tri"].max() == N
    assert loaded["point_buf"].min() == 1 and loaded["point_buf"].max() == F + 1
    assert loaded["tri"].dtype == np.int64 and loaded["meanshape"].dtype == np.float32


def test_accepts_column_keypoints_and_float_indices(tmp_path):
    d = _tiny_bfm()
    d["keypoints"] = d["keypoints"].reshape(68, 1).astype(np.float64)
    d["tri"] = d["tri"].astype(np.float64)
    out = load_bfm_mat(_write_raw(tmp_path / "m.mat", d))
    assert out["keypoints"].shape == (1, 68)
    np.testing.assert_array_equal(out["tri"], [[1, 2, 3], [2, 4, 3]])


def _expect_error(tmp_path, d, *words):
    path = _write_raw(tmp_path / "BFM_model_front.mat", d)
    with pytest.raises(BFMFormatError) as ei:
        load_bfm_mat(path)
    msg = str(ei.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_missing_key_names_file_and_key(tmp_path):
    d = _tiny_bfm()
    del d["exBase"]
    _expect_error(tmp_path, d, "'exBase'", "missing")


def test_wrong_shape_names_file_and_key(tmp_path):
    d = _tiny_bfm()
    d["idBase"] = d["idBase"][:, :79]
    _expect_error(tmp_path, d, "'idBase'", "(12, 79)")
    d = _tiny_bfm()
    d["point_buf"] = d["point_buf"][:, :6]
    _expect_error(tmp_path, d, "'point_buf'", "shape")
    d = _tiny_bfm()
    d["meanshape"] = d["meanshape"][:, :11]
    _expect_error(tmp_path, d, "'meanshape'", "multiple of 3")


def test_out_of_range_index_names_file_and_key(tmp_path):
    d = _tiny_bfm()
    d["tri"] = d["tri"].copy()
    d["tri"][1, 2] = 5  # N + 1
    _expect_error(tmp_path, d, "'tri'", "out of range", "value 5")
    d = _tiny_bfm()
    d["tri"] = d["tri"] - 1  # someone saved 0-based indices
    _expect_error(tmp_path, d, "'tri'", "out of range", "1-based")
    d = _tiny_bfm()
    d["point_buf"] = d["point_buf"].copy()
    d["point_buf"][0, 7] = 4  # F + 2
    _expect_error(tmp_path, d, "'point_buf'", "out of range")
    d = _tiny_bfm()
    d["keypoints"] = d["keypoints"].copy()
    d["keypoints"][0, 30] = 0
    _expect_error(tmp_path, d, "'keypoints'", "out of range")


def test_non_finite_names_file_and_key(tmp_path):
    d = _tiny_bfm()
    d["exBase"] = d["exBase"].copy()
    d["exBase"][3, 5] = np.nan
    _expect_error(tmp_path, d, "'exBase'", "non-finite")


def test_truncated_file_names_file(synthetic_mat, tmp_path):
    _, good = synthetic_mat
    data = good.read_bytes()
    for cut in (100, len(data) // 2, len(data) - 1000):
        bad = tmp_path / f"cut{cut}.mat"
        bad.write_bytes(data[:cut])
        with pytest.raises(BFMFormatError) as ei:
            load_bfm_mat(bad)
        assert str(bad) in str(ei.value)


def test_v73_hdf5_file_is_explained(tmp_path):
    # a MATLAB v7.3 file is HDF5 behind a 512-byte MATLAB text header
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    path = tmp_path / "v73.mat"
    path.write_bytes(header.ljust(512, b" ") + b"\x89HDF\r\n\x1a\n" + b"\0" * 1024)
    with pytest.raises(BFMFormatError, match="v7.3") as ei:
        load_bfm_mat(path)
    assert str(path) in str(ei.value)


def test_not_a_mat_file_and_missing_file(tmp_path):
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"this is not a MATLAB file at all" * 10)
    with pytest.raises(BFMFormatError) as ei:
        load_bfm_mat(junk)
    assert str(junk) in str(ei.value)
    with pytest.raises(FileNotFoundError, match="nope.mat"):
        load_bfm_mat(tmp_path / "nope.mat")


def test_save_validates_before_writing(tmp_path):
    d = _tiny_bfm()
    d["tri"] = d["tri"] + 10
    path = tmp_path / "out.mat"
    with pytest.raises(BFMFormatError, match="'tri'"):
        save_bfm_mat(path, d)
    assert not path.exists()
