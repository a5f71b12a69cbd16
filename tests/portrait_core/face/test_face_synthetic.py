"""The embedded synthetic 3DMM: layout, geometry (decimetres, centred, +Z facing, symmetric), landmarks, determinism."""

from __future__ import annotations

import time

import numpy as np
import pytest

from portrait_core.face import build_synthetic_bfm, fingerprint, validate_bfm
from portrait_core.face import synthetic as syn


@pytest.fixture(scope="module")
def bfm():
    return build_synthetic_bfm()


def _v(bfm):
    return bfm["meanshape"].reshape(-1, 3).astype(np.float64)


def test_layout_is_valid_and_one_based(bfm):
    d = validate_bfm(bfm, source="synthetic")
    N = d["meanshape"].shape[1] // 3
    F = d["tri"].shape[0]
    assert 7000 < N < 12000 and 14000 < F < 24000
    assert d["tri"].min() == 1 and d["tri"].max() == N
    assert d["point_buf"].max() == F + 1  # padded with the dummy face
    assert np.unique(d["tri"]).size == N  # no isolated vertex
    # point_buf lists exactly the faces that contain each vertex (plus padding)
    pb = d["point_buf"] - 1
    tri = d["tri"] - 1
    count = np.bincount(tri.reshape(-1), minlength=N)
    assert np.array_equal((pb < F).sum(1), count)
    rows, slots = np.nonzero(pb < F)
    assert np.all((tri[pb[rows, slots]] == rows[:, None]).any(1))
    # front mask faces only use front-mask vertices
    front = set((d["frontmask2_idx"].reshape(-1)).tolist())
    assert set(np.unique(d["tri_mask2"]).tolist()) <= front
    assert set(np.unique(d["skinmask"]).tolist()) == {0.0, 1.0}


def test_surface_size_units_and_orientation(bfm):
    v = _v(bfm)
    np.testing.assert_allclose(v.mean(0), 0, atol=1e-5)  # centred
    width = v[:, 0].max() - v[:, 0].min()
    height = v[:, 1].max() - v[:, 1].min()
    assert 1.35 < width < 1.55, width  # decimetres
    assert 1.7 < height < 1.9, height
    tri = bfm["tri"] - 1
    fn = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    assert (fn[:, 2] > 0).mean() > 0.9  # faces look toward +Z, counter-clockwise seen from the front
    # mirror symmetry: (-x, y, z) of every vertex is a vertex
    from scipy.spatial import cKDTree

    d, _ = cKDTree(v).query(v * np.array([-1, 1, 1]))
    assert d.max() < 1e-5


def test_landmarks_ibug_order(bfm):
    v = _v(bfm)
    kp = bfm["keypoints"].reshape(-1) - 1
    assert np.unique(kp).size == 68
    L = v[kp]
    jaw, brows, nose, eyes, lips = L[0:17], L[17:27], L[27:36], L[36:48], L[48:68]
    assert np.all(np.diff(jaw[1:16, 0]) > 0)  # 0 on the subject's right (-x) round the chin to 16 on the left
    assert jaw[0, 0] < -0.5 and jaw[16, 0] > 0.5 and jaw[0, 1] > jaw[3, 1]
    assert np.argmin(jaw[:, 1]) == 8  # chin
    assert np.argmax(L[:, 2]) == 30  # nose tip is the most forward landmark
    assert brows[:, 1].min() > eyes[:, 1].max() > nose[4:, 1].max() > lips[:, 1].max()
    assert np.all(np.diff(nose[:4, 1]) < 0)  # bridge goes down to the tip
    assert L[36, 0] < L[39, 0] < 0 < L[42, 0] < L[45, 0]  # eye corners
    assert L[37, 1] > L[41, 1] and L[43, 1] > L[47, 1]  # upper lids above lower lids
    assert L[48, 0] < 0 < L[54, 0] and L[51, 1] > L[57, 1]  # mouth corners, upper over lower lip
    assert L[62, 1] > L[66, 1]  # inner upper lip above inner lower lip (distinct vertices)
    # iBUG mirror pairs are mirror images
    pairs = [(0, 16), (4, 12), (17, 26), (21, 22), (36, 45), (39, 42), (37, 44), (41, 46), (31, 35), (48, 54),
             (60, 64), (59, 55)]
    for a, b in pairs:
        np.testing.assert_allclose(L[a] * [-1, 1, 1], L[b], atol=1e-5, err_msg=f"{a}<->{b}")


def test_bases_magnitudes_and_texture(bfm):
    N = bfm["meanshape"].shape[1] // 3
    idb = np.linalg.norm(bfm["idBase"].reshape(N, 3, 80), axis=1).max(0)  # dm per unit, per component
    assert idb.max() < 0.1 and idb.min() > 0.001  # ~0.1 mm .. 1 cm per unit
    exb = np.linalg.norm(bfm["exBase"].reshape(N, 3, 64), axis=1).max(0)
    assert np.all(exb[:8] > 0.02) and exb.max() < 0.1
    tex = bfm["meantex"].reshape(N, 3)
    assert tex.min() >= 0 and tex.max() <= 255
    kp = bfm["keypoints"].reshape(-1) - 1
    forehead = np.argmax(bfm["meanshape"].reshape(N, 3)[:, 1])
    assert tex[kp[48:60]].sum(1).mean() < tex[forehead].sum() - 60  # lips darker than skin
    assert tex[kp[60:68]].sum(1).max() < tex[forehead].sum() - 60
    assert tex[kp[19]].sum() < tex[forehead].sum() - 150  # brows darker still


def test_deterministic_and_fast():
    t0 = time.perf_counter()
    a = syn._build()
    dt = time.perf_counter() - t0
    b = syn._build()
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(build_synthetic_bfm()) == fingerprint(a)
    assert dt < 4.0, f"building the synthetic 3DMM took {dt:.2f} s (budget 2 s on an idle core)"
    # copies: mutating one result never leaks into the cache
    c = build_synthetic_bfm()
    c["meanshape"][:] = 0
    assert fingerprint(build_synthetic_bfm()) == fingerprint(a)


# Recorded once; changes only when the synthetic construction is changed on purpose (then update docs/face.md too).
# Integer arrays are compared exactly; float arrays through rounded summaries (robust to last-bit libm differences).
EXPECTED_INDEX_SHA256 = "db89f0cc8036de4d86fcb65b68c6842bee313b856bd1223cea50bf39762d9843"
EXPECTED_SUMMARY = {
    "meanshape": (1.8659920897334814e-07, 8060.326801533243, 3636.4530485728383, 1.336083374764712),
    "idBase": (43.823426701095045, 4475.880723144235, 45.439172832626305, 105.96266358837909),
    "exBase": (-48.414829559291, 525.2068735867597, 9.571782789856698, -133.4109536775177),
    "meantex": (4705143.293930054, 4705143.293930054, 840824744.878999, 672390.5529670715),
    "texBase": (609470.9677634883, 3827660.6428764886, 23321368.21993078, 494716.0259683812),
}


def _summary(bfm):
    out = {}
    for k in ("meanshape", "idBase", "exBase", "meantex", "texBase"):
        a = bfm[k].astype(np.float64)
        out[k] = (a.sum(), np.abs(a).sum(), (a * a).sum(), a[:, ::7].sum())
    return out


def _index_sha(bfm):
    return fingerprint({k: bfm[k] for k in ("tri", "point_buf", "keypoints", "frontmask2_idx", "tri_mask2")})


def test_fingerprint_matches_record(bfm):
    if EXPECTED_INDEX_SHA256 is None:
        pytest.fail(f"record EXPECTED_INDEX_SHA256={_index_sha(bfm)!r} EXPECTED_SUMMARY={_summary(bfm)!r}")
    assert _index_sha(bfm) == EXPECTED_INDEX_SHA256
    got = _summary(bfm)
    for k, vals in EXPECTED_SUMMARY.items():
        np.testing.assert_allclose(got[k], vals, rtol=1e-5, atol=1e-3, err_msg=k)


@pytest.mark.parametrize("key", ["idBase", "exBase", "texBase"])
def test_bases_are_mirror_closed(bfm, key):
    """Mirroring (x -> -x) maps every basis field onto +-1 times a basis field (a signed permutation)."""
    from scipy.spatial import cKDTree

    v = _v(bfm)
    N = v.shape[0]
    _, partner = cKDTree(v).query(v * np.array([-1, 1, 1]))
    base = bfm[key].astype(np.float64).reshape(N, 3, -1)
    flip = np.array([-1.0, 1.0, 1.0]) if key != "texBase" else np.ones(3)  # colours do not flip
    mirrored = base[partner] * flip[None, :, None]
    A = base.reshape(3 * N, -1)
    B = mirrored.reshape(3 * N, -1)
    An = A / np.linalg.norm(A, axis=0)
    Bn = B / np.linalg.norm(B, axis=0)
    C = An.T @ Bn  # cosine between field i and mirrored field j
    best = np.abs(C).argmax(0)
    assert np.array_equal(np.sort(best), np.arange(A.shape[1]))  # a permutation
    assert np.all(np.abs(C[best, np.arange(A.shape[1])]) > 1 - 1e-5)
