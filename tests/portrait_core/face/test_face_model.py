"""FaceModel on the synthetic 3DMM: units/frame, named expressions, normals, displace_points, projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from portrait_core.face import EXPRESSION_NAMES, FaceModel, build_synthetic_bfm, project_deep3d, save_bfm_mat


@pytest.fixture(scope="module")
def fm():
    return FaceModel.synthetic()


def _expr(name: str, amount: float, batch: int = 1) -> torch.Tensor:
    e = torch.zeros(batch, 64)
    e[:, EXPRESSION_NAMES[name]] = amount
    return e


ZID = torch.zeros(1, 80)
ZEX = torch.zeros(1, 64)


def test_shapes_units_and_frame(fm):
    g = torch.Generator().manual_seed(1)
    idc, ex = torch.randn(3, 80, generator=g), torch.randn(3, 64, generator=g)
    v = fm.vertices(idc, ex)
    N = fm.num_vertices
    assert v.shape == (3, N, 3) and v.dtype == torch.float32
    assert fm.faces.shape == (fm.num_faces, 3) and int(fm.faces.min()) == 0 and int(fm.faces.max()) == N - 1
    assert fm.landmark_indices.shape == (68,) and int(fm.landmark_indices.max()) < N
    lm = fm.landmarks(idc, ex)
    torch.testing.assert_close(lm, v[:, fm.landmark_indices], atol=1e-7, rtol=0)
    mean = fm.vertices(ZID, ZEX)[0]
    torch.testing.assert_close(mean.mean(0), torch.zeros(3), atol=1e-6, rtol=0)  # origin = centroid
    width = float(mean[:, 0].max() - mean[:, 0].min())
    assert 0.135 < width < 0.155  # metres (1.45 dm)
    L = mean[fm.landmark_indices]
    assert L[30, 2] > L[8, 2] and L[19, 1] > L[8, 1]  # nose toward +Z, brows above chin (+Y up)
    assert L[45, 0] > 0 > L[36, 0]  # subject's left eye at +X
    torch.testing.assert_close(fm.expression_offsets(idc, ex), v - fm.neutral_vertices(idc))
    assert fm.state_dict() == {}  # the 3DMM basis is never saved into a checkpoint


def test_from_mat_matches_synthetic(fm, tmp_path):
    path = tmp_path / "BFM_model_front.mat"
    save_bfm_mat(path, build_synthetic_bfm())
    other = FaceModel.from_mat(path)
    g = torch.Generator().manual_seed(2)
    idc, ex = torch.randn(2, 80, generator=g), torch.randn(2, 64, generator=g)
    assert torch.equal(other.vertices(idc, ex), fm.vertices(idc, ex))
    assert torch.equal(other.faces, fm.faces) and torch.equal(other.landmark_indices, fm.landmark_indices)
    assert str(path) in repr(other)


def test_bad_controls_raise(fm):
    with pytest.raises(ValueError, match="expression must be"):
        fm.vertices(ZID, torch.zeros(1, 63))
    with pytest.raises(ValueError, match="identity has batch"):
        fm.vertices(torch.zeros(2, 80), torch.zeros(3, 64))


def test_jaw_open_moves_lower_lip_not_forehead(fm):
    v0 = fm.vertices(ZID, ZEX)[0]
    v1 = fm.vertices(ZID, _expr("jaw_open", 3.0))[0]
    L0, L1 = v0[fm.landmark_indices], v1[fm.landmark_indices]
    for i in (57, 66, 8):  # lower lip outer/inner, chin
        assert L1[i, 1] - L0[i, 1] < -0.005, i  # > 5 mm down
    assert (L1[62] - L0[62]).norm() < 0.002  # inner upper lip nearly still
    gap0, gap1 = (L0[62] - L0[66]).norm(), (L1[62] - L1[66]).norm()
    assert gap1 - gap0 > 0.005  # the mouth opens
    forehead = v0[:, 1] > L0[19, 1]
    assert forehead.sum() > 100
    assert float((v1 - v0)[forehead].norm(dim=-1).max()) < 1e-4  # forehead stays


def test_smile_widens_and_raises_mouth_corners(fm):
    L0 = fm.landmarks(ZID, ZEX)[0]
    L1 = fm.landmarks(ZID, _expr("smile", 2.0))[0]
    assert (L1[54, 0] - L1[48, 0]) - (L0[54, 0] - L0[48, 0]) > 0.006
    assert L1[48, 1] - L0[48, 1] > 0.003 and L1[54, 1] - L0[54, 1] > 0.003
    # symmetric
    torch.testing.assert_close((L1 - L0)[48] * torch.tensor([-1, 1, 1]), (L1 - L0)[54], atol=1e-6, rtol=0)


def test_blink_closes_the_eyelids(fm):
    def gaps(L):
        return torch.stack([(L[37] - L[41]).norm(), (L[38] - L[40]).norm(), (L[43] - L[47]).norm(),
                            (L[44] - L[46]).norm()])

    g0 = gaps(fm.landmarks(ZID, ZEX)[0])
    g1 = gaps(fm.landmarks(ZID, _expr("blink", 1.0))[0])
    g2 = gaps(fm.landmarks(ZID, _expr("blink", 2.5))[0])
    assert torch.all(g1 < g0) and torch.all(g2 < 0.25 * g0)
    L0, L2 = fm.landmarks(ZID, ZEX)[0], fm.landmarks(ZID, _expr("blink", 2.5))[0]
    assert L2[37, 1] - L0[37, 1] < -0.005  # it is the upper lid that comes down
    assert (L2[30] - L0[30]).norm() < 1e-5 and (L2[51] - L0[51]).norm() < 1e-5  # nose and mouth stay


def test_other_named_expressions(fm):
    L0 = fm.landmarks(ZID, ZEX)[0]

    def d(name, amount=2.0):
        return fm.landmarks(ZID, _expr(name, amount))[0] - L0

    assert torch.all(d("brow_raise")[17:27, 1] > 0.003) and d("brow_raise")[48:68].norm(dim=-1).max() < 1e-5
    assert torch.all(d("pucker")[[51, 57, 62, 66], 2] > 0.003) and d("pucker")[54, 0] < -0.002
    assert d("frown")[48, 1] < -0.004 and d("frown")[54, 1] < -0.004
    bf = d("brow_furrow")
    assert bf[21, 0] > 0.001 and bf[22, 0] < -0.001 and bf[21, 1] < 0  # inner brows in and down
    v0 = fm.vertices(ZID, ZEX)[0]
    n0 = fm.vertex_normals(v0[None])[0]
    dp = fm.expression_offsets(ZID, _expr("cheek_puff", 2.0))[0]
    assert float((dp * n0).sum(-1).max()) > 0.006  # cheeks move out along the normal
    names = sorted(EXPRESSION_NAMES, key=EXPRESSION_NAMES.get)
    assert names[:4] == ["jaw_open", "smile", "brow_raise", "blink"]


def _trimesh_normals(v, faces):
    m = trimesh.Trimesh(v.numpy().astype(np.float64), faces.numpy(), process=False)
    return torch.from_numpy(np.asarray(m.vertex_normals, dtype=np.float32))


@pytest.mark.parametrize("seed", [None, 3])
def test_point_buf_normals_match_trimesh(fm, seed):
    if seed is None:
        idc, ex = ZID, ZEX
    else:
        g = torch.Generator().manual_seed(seed)
        idc, ex = torch.randn(1, 80, generator=g), torch.randn(1, 64, generator=g)
    v = fm.vertices(idc, ex)
    n = fm.vertex_normals(v)[0]
    ref = _trimesh_normals(v[0], fm.faces)
    cos = (n * ref).sum(-1)
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(len(n)), atol=1e-5, rtol=0)
    assert float(cos.median()) > 0.9999
    assert float(torch.quantile(cos, 0.01)) > 0.99
    assert float((n[:, 2] > 0).float().mean()) > 0.9  # outward = toward +Z


def test_displace_points_at_vertices_equals_offsets(fm):
    g = torch.Generator().manual_seed(4)
    idc, ex = torch.randn(2, 80, generator=g), torch.randn(2, 64, generator=g)
    neutral = fm.neutral_vertices(idc)
    sel = torch.randperm(fm.num_vertices, generator=g)[:1500]
    got = fm.displace_points(neutral[:, sel], idc, ex)
    want = fm.expression_offsets(idc, ex)[:, sel]
    torch.testing.assert_close(got, want, atol=2e-7, rtol=0)
    # chunking and the neighbour search (kd-tree / torch cdist) do not change the result, also off the surface
    pts = torch.cat([neutral[:, sel[:300]], neutral[:, sel[:300]] + torch.randn(2, 300, 3, generator=g) * 0.01], 1)
    ref = fm.displace_points(pts, idc, ex, method="kdtree")
    torch.testing.assert_close(fm.displace_points(pts, idc, ex, method="cdist", chunk=97), ref, atol=1e-9, rtol=0)
    assert (ref.norm(dim=-1) == 0).any() and (ref.norm(dim=-1) > 0).sum() > 300  # some faded out, most not


def test_displace_points_fades_to_zero_away_from_the_face(fm):
    ex = _expr("jaw_open", 3.0)
    neutral = fm.neutral_vertices(ZID)
    n = fm.vertex_normals(neutral)
    chin = fm.landmark_indices[8]
    base = fm.expression_offsets(ZID, ex)[0, chin]
    dists = torch.tensor([0.0, 0.002, 0.004, 0.008, 0.012, 0.016, 0.019, 0.021, 0.03, 0.1])
    pts = neutral[0, chin] + dists[:, None] * n[0, chin]
    out = fm.displace_points(pts[None], ZID, ex)[0]
    mag = out.norm(dim=-1)
    assert float(mag[0]) > 0.005 and torch.allclose(out[0], base, atol=1e-7)
    assert abs(float(mag[1]) - float(mag[0])) < 0.1 * float(mag[0])  # full strength near the surface
    assert torch.all(mag[3:] <= mag[2:-1] + 1e-6)  # then fades monotonically along the normal
    assert float(mag[3]) > 0.5 * float(mag[0])  # still strong 8 mm off the surface
    assert torch.all(mag[-3:] == 0)  # exactly zero beyond ~2 cm
    far = torch.rand(1, 5000, 3, generator=torch.Generator().manual_seed(5)) * 0.4 - 0.2
    far = far[:, (far[0] - neutral[0].mean(0)).norm(dim=-1) > 0.15]
    assert torch.all(fm.displace_points(far, ZID, ex) == 0)


def test_displace_points_gradients(fm):
    ex = _expr("smile", 1.0).requires_grad_(True)
    pts = fm.neutral_vertices(ZID)[:, fm.landmark_indices] + torch.tensor([0.0, 0.0, 0.004])
    out = fm.displace_points(pts, ZID, ex)
    out.square().sum().backward()
    assert ex.grad is not None and float(ex.grad[0, EXPRESSION_NAMES["smile"]]) > 0


def test_deep3d_projection(fm):
    L = fm.landmarks(ZID, ZEX)
    px = project_deep3d(L)[0]
    assert px.shape == (68, 2)
    assert float(px.min()) > 20 and float(px.max()) < 204  # inside the 224 crop
    assert px[45, 0] > 112 > px[36, 0]  # subject's left eye on the image right
    assert px[8, 1] > px[30, 1] > px[19, 1]  # image rows grow downward: brow, nose, chin
    # the camera: a point on the optical axis lands on the principal point, focal 1015 at 10 dm
    p = torch.tensor([[0.0, 0.0, 0.0], [0.01, 0.0, 0.0]])
    torch.testing.assert_close(project_deep3d(p), torch.tensor([[112.0, 112.0], [112.0 + 1015 * 0.1 / 10, 112.0]]))
