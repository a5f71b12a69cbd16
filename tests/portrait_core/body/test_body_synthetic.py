"""The synthetic SMPL-format body: layout, determinism, symmetry, geometry, regressor, weights, cache."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from portrait_core.body import synthetic as S
from portrait_core.conventions import FACE_CENTRE, SMPL_PARENTS

_SWAP = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22]


def test_layout(synthetic_data):
    d = synthetic_data
    V = d["v_template"].shape[0]
    assert 2000 <= V <= 10000
    assert d["shapedirs"].shape == (V, 3, 10)
    assert d["posedirs"].shape == (V, 3, 207) and not d["posedirs"].any()
    assert isinstance(d["J_regressor"], sp.csc_matrix) and d["J_regressor"].shape == (24, V)
    assert d["weights"].shape == (V, 24)
    np.testing.assert_allclose(d["weights"].sum(1), 1.0, atol=1e-12)
    assert d["kintree_table"].shape == (2, 24) and d["kintree_table"][0, 0] == 4294967295
    assert tuple(d["kintree_table"][0, 1:]) == SMPL_PARENTS[1:]
    assert d["f"].dtype == np.uint32 and d["f"].shape[1] == 3 and d["f"].max() < V


def test_determinism():
    a, ma = S._build()
    b, mb = S._build()
    for k in S.SMPL_KEYS:
        x, y = a[k], b[k]
        if sp.issparse(x):
            x, y = x.toarray(), y.toarray()
        assert np.array_equal(x, y), k
    assert np.array_equal(ma, mb)


def test_mirror_symmetry(synthetic_data):
    d = synthetic_data
    v, m = d["v_template"], d["mirror_index"]
    assert np.array_equal(m[m], np.arange(len(v)))
    assert np.array_equal(v[m] * (-1, 1, 1), v)
    np.testing.assert_array_equal(d["weights"][m][:, _SWAP], d["weights"])
    sd = d["shapedirs"]
    np.testing.assert_allclose(sd[m] * np.array([-1, 1, 1])[None, :, None], sd, atol=1e-12)
    Jr = d["J_regressor"].toarray()
    np.testing.assert_allclose(Jr[_SWAP][:, m], Jr, atol=1e-10)
    faces = {tuple(sorted(f)) for f in d["f"].tolist()}
    assert {tuple(sorted(m[list(f)])) for f in faces} == faces
    J = d["J"]
    np.testing.assert_array_equal(J[_SWAP] * (-1, 1, 1), J)


def test_mesh_is_closed_and_outward():
    import trimesh

    d, _ = S._build()
    mesh = trimesh.Trimesh(d["v_template"], d["f"].astype(np.int64), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0.01  # outward normals, a few tens of litres


def test_joint_regressor_reproduces_joints(synthetic_data):
    d = synthetic_data
    J = d["J_regressor"] @ d["v_template"]
    np.testing.assert_allclose(J, S.synthetic_joints(), atol=1e-6)  # float32 cache
    np.testing.assert_allclose(d["J_regressor"].sum(1), 1.0, atol=1e-6)  # affine rows follow translations
    assert np.allclose(S.synthetic_joints()[15] - S.synthetic_joints()[12], (0, 0.065, 0.03))


def test_head_accommodates_the_face(body):
    """Front of the (canonical) head around y = 0.15 m lies at z = 0.12-0.13 m, just ahead of FACE_CENTRE."""
    v = body.canonical(None).vertices[0].numpy()
    band = (np.abs(v[:, 1] - FACE_CENTRE[1]) < 0.012) & (np.abs(v[:, 0]) > 0.02) & (np.abs(v[:, 0]) < 0.04)
    front = v[band, 2].max()
    assert 0.115 <= front <= 0.135
    assert front > FACE_CENTRE[2]
    head = v[body.head_mask.numpy()]
    assert 0.13 < head[:, 0].max() - head[:, 0].min() < 0.20  # head width
    assert 0.22 < v[:, 1].max() < 0.30  # top of the head above the neck joint


def test_skinning_regions(synthetic_data):
    W = synthetic_data["weights"]
    used = set(np.nonzero(W.sum(0))[0].tolist())
    assert used <= {6, 9, 12, 13, 14, 15, 16, 17, 18, 19}
    v = synthetic_data["v_template"]
    top = v[:, 1].argmax()
    assert W[top, 15] == 1.0
    arm = v[:, 0].argmax()
    assert W[arm, [16, 18]].sum() == pytest.approx(1.0)


def test_cache_round_trip_and_corruption(tmp_path, monkeypatch):
    monkeypatch.setenv("BUSTO_CACHE_DIR", str(tmp_path))
    a = S.build_synthetic_smpl()
    path = S._cache_path()
    assert path.exists() and path.parent == tmp_path and path.stat().st_size < 1_500_000
    b = S.build_synthetic_smpl()
    np.testing.assert_array_equal(a["v_template"], b["v_template"])
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["v_template"] = arrays["v_template"] + 1.0  # tampered: checksum no longer matches
    np.savez_compressed(path, **arrays)
    with pytest.raises(ValueError, match="checksum"):
        S._read_cache(path)
    c = S.build_synthetic_smpl()  # rebuilt
    np.testing.assert_array_equal(c["v_template"], a["v_template"])
