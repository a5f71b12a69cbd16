"""Safe loading of SMPL-format files: restricted unpickler, legacy module paths, validation errors."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from portrait_core.body.io import (
    SMPL_KEYS,
    RestrictedUnpickler,
    SMPLFileError,
    load_smpl_file,
    save_smpl_npz,
    smplx_struct,
)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _FakeCh:
    """Pickled under the name chumpy.ch.Ch (see _as_legacy): state holds the array 'x' like chumpy's."""

    def __init__(self, x):
        self.x = x
        self._dirty_vars = set()


def _as_legacy(blob: bytes) -> bytes:
    """Rewrite protocol-2 GLOBAL opcodes to the names in the official (Python 2, chumpy, scipy<1.8) files."""
    this = _FakeCh.__module__.encode()
    blob = blob.replace(b"c" + this + b"\n_FakeCh\n", b"cchumpy.ch\nCh\n")
    return blob.replace(b"cscipy.sparse._csc\ncsc_matrix\n", b"cscipy.sparse.csc\ncsc_matrix\n")


def _official_like(data: dict) -> bytes:
    d = {k: data[k] for k in SMPL_KEYS}
    d["v_template"] = _FakeCh(np.asarray(data["v_template"]))
    d["shapedirs"] = _FakeCh(np.asarray(data["shapedirs"]))
    d["posedirs"] = np.zeros((len(data["v_template"]), 3, 207), np.float32)
    d["J_regressor"] = sp.csc_matrix(data["J_regressor"])
    return _as_legacy(pickle.dumps(d, protocol=2))


def test_code_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Payload(marker)}, protocol=2))
    with pytest.raises(SMPLFileError) as err:
        load_smpl_file(path)
    assert not marker.exists()
    msg = str(err.value)
    assert str(path) in msg and "system" in msg and "refused" in msg


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_payload_refused_for_every_protocol(tmp_path, protocol):
    marker = tmp_path / "pwned"
    blob = pickle.dumps([_Payload(marker)], protocol=protocol)
    with pytest.raises(SMPLFileError):
        RestrictedUnpickler(io.BytesIO(blob), source="x.pkl", encoding="latin1").load()
    assert not marker.exists()


def test_legacy_chumpy_and_scipy_paths_load(tmp_path, synthetic_data):
    blob = _official_like(synthetic_data)
    assert b"chumpy.ch\nCh" in blob and b"scipy.sparse.csc\ncsc_matrix" in blob
    with pytest.raises(ModuleNotFoundError):  # a plain pickle.load needs chumpy
        pickle.loads(blob, encoding="latin1")
    path = tmp_path / "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl"
    path.write_bytes(blob)
    data = load_smpl_file(path)
    assert isinstance(data["v_template"], np.ndarray)
    np.testing.assert_allclose(data["v_template"], synthetic_data["v_template"])
    np.testing.assert_allclose(data["J_regressor"].toarray(), synthetic_data["J_regressor"].toarray())
    assert data["f"].dtype == np.uint32 and data["kintree_table"].shape == (2, 24)


def test_official_layout_pickle_loads_through_smplx(synthetic_pkl, synthetic_data):
    import smplx

    from portrait_core.body.synthetic import synthetic_vertex_ids

    vid = synthetic_vertex_ids(synthetic_data)
    kw = dict(vertex_ids=vid, use_hands=False, use_feet_keypoints=False)
    direct = smplx.SMPL(model_path=str(synthetic_pkl), **kw)  # smplx's own pickle.load
    safe = smplx.SMPL(model_path="", data_struct=smplx_struct(load_smpl_file(synthetic_pkl)), **kw)
    with torch.no_grad():
        a, b = direct(), safe()
    assert a.vertices.shape == (1, len(synthetic_data["v_template"]), 3) and a.joints.shape == (1, 29, 3)
    torch.testing.assert_close(a.vertices, b.vertices)
    np.testing.assert_allclose(a.vertices[0].numpy(), synthetic_data["v_template"], atol=1e-6)
    np.testing.assert_allclose(a.joints[0, :24].numpy(), synthetic_data["J"], atol=1e-5)


def test_npz_round_trip_and_smplx(tmp_path, synthetic_data):
    import smplx

    from portrait_core.body.model import BodyModel
    from portrait_core.body.synthetic import synthetic_vertex_ids

    path = save_smpl_npz(tmp_path / "smpl.npz", synthetic_data)
    assert path.stat().st_size < 2_000_000
    data = load_smpl_file(path)
    layer = smplx.SMPL(
        model_path="",
        data_struct=smplx_struct(data),
        vertex_ids=synthetic_vertex_ids(synthetic_data),
        use_hands=False,
        use_feet_keypoints=False,
    )
    with torch.no_grad():
        np.testing.assert_allclose(layer().vertices[0].numpy(), synthetic_data["v_template"], atol=1e-6)
    m = BodyModel.from_file(path)
    ref = BodyModel.synthetic()
    pose = 0.2 * torch.ones(1, 6, 3)
    assert (m.posed(None, pose).vertices - ref.posed(None, pose).vertices).abs().max() < 1e-5


def _write(tmp_path, data, name="SMPL_NEUTRAL.pkl"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(data, protocol=2))
    return path


@pytest.mark.parametrize(
    "key,value,expect",
    [
        ("shapedirs", np.zeros((10, 3, 16)), "shapedirs"),
        ("posedirs", np.zeros((5, 3, 200)), "posedirs"),
        ("weights", np.zeros((7, 24)), "weights"),
        ("J_regressor", sp.csc_matrix((23, 5)), "J_regressor"),
        ("kintree_table", np.zeros((2, 23), np.int64), "kintree_table"),
        ("f", np.zeros((4, 4), np.int64), "'f'"),
        ("v_template", np.full((5, 3), np.nan), "non-finite"),
    ],
)
def test_wrong_keys_name_file_and_key(tmp_path, synthetic_data, key, value, expect):
    V = 5
    d = {
        "v_template": np.random.default_rng(0).normal(size=(V, 3)),
        "shapedirs": np.zeros((V, 3, 10)),
        "posedirs": np.zeros((V, 3, 207)),
        "J_regressor": sp.csc_matrix(np.full((24, V), 1.0 / V)),
        "weights": np.full((V, 24), 1.0 / 24),
        "kintree_table": synthetic_data["kintree_table"],
        "f": np.array([[0, 1, 2], [2, 3, 4]], np.uint32),
    }
    load_smpl_file(_write(tmp_path, d, "ok.pkl"))  # the baseline is valid
    d[key] = value
    path = _write(tmp_path, d)
    with pytest.raises(SMPLFileError) as err:
        load_smpl_file(path)
    assert str(path) in str(err.value) and expect in str(err.value)


def test_missing_key_is_named(tmp_path, synthetic_data):
    d = {k: synthetic_data[k] for k in SMPL_KEYS if k != "weights"}
    path = _write(tmp_path, d)
    with pytest.raises(SMPLFileError, match="missing key.*'weights'") as err:
        load_smpl_file(path)
    assert str(path) in str(err.value)


def test_truncated_files(tmp_path, synthetic_pkl, synthetic_data):
    blob = synthetic_pkl.read_bytes()
    cut = tmp_path / "SMPL_NEUTRAL.pkl"
    cut.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(SMPLFileError, match="truncated or corrupt") as err:
        load_smpl_file(cut)
    assert str(cut) in str(err.value)
    npz = save_smpl_npz(tmp_path / "m.npz", synthetic_data)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(npz.read_bytes()[:5000])
    with pytest.raises(SMPLFileError) as err:
        load_smpl_file(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(SMPLFileError, match="no such file"):
        load_smpl_file(tmp_path / "absent.pkl")


class _FakeOp:
    """A chumpy expression object without an array state (pickled as chumpy.reordering.transpose)."""

    def __init__(self):
        self.a = None


def test_chumpy_objects_without_arrays(tmp_path, synthetic_data):
    d = {k: synthetic_data[k] for k in SMPL_KEYS}
    d["J_regressor"] = sp.csc_matrix(d["J_regressor"])
    d["unused"] = _FakeOp()
    this = _FakeOp.__module__.encode()
    blob = pickle.dumps(d, protocol=2).replace(b"c" + this + b"\n_FakeOp\n", b"cchumpy.reordering\ntranspose\n")
    path = tmp_path / "ok.pkl"
    path.write_bytes(blob)
    assert "unused" not in load_smpl_file(path)  # ignored keys may hold any chumpy expression
    d["weights"] = d.pop("unused")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(
        pickle.dumps(d, protocol=2).replace(b"c" + this + b"\n_FakeOp\n", b"cchumpy.reordering\ntranspose\n")
    )
    with pytest.raises(SMPLFileError, match="'weights' is a chumpy object") as err:
        load_smpl_file(bad)
    assert str(bad) in str(err.value)
