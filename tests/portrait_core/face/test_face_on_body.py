"""The synthetic face placed by BodyModel.face_transform sits on the synthetic body's head surface."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from portrait_core.face import FaceModel

body_model = pytest.importorskip(
    "portrait_core.body.model", reason="portrait_core.body.model (BodyModel.synthetic) is not available"
)


@pytest.fixture(scope="module")
def placed():
    body = body_model.BodyModel.synthetic()
    fm = FaceModel.synthetic()
    betas = torch.zeros(1, 10)
    head = body.canonical(betas).vertices[0].double().numpy()
    T = body.face_transform(betas)[0].double().numpy()
    v = fm.vertices(torch.zeros(1, 80), torch.zeros(1, 64))[0].double().numpy()
    v = v @ T[:3, :3].T + T[:3, 3]
    mesh = trimesh.Trimesh(head, body.faces.numpy(), process=False)
    # dense surface samples (about 2 mm apart) stand in for the exact point-to-triangle distance
    pts, fid = trimesh.sample.sample_surface(mesh, 200_000, seed=0)
    dist, idx = cKDTree(pts).query(v)
    signed = np.einsum("ij,ij->i", v - pts[idx], mesh.face_normals[fid[idx]])  # > 0 outside the head
    return fm, v, dist, signed


def test_face_lies_on_the_head(placed):
    fm, v, dist, signed = placed
    assert np.median(dist) < 0.010, f"median face-to-head distance {np.median(dist) * 1e3:.1f} mm"
    assert np.percentile(dist, 90) < 0.02
    # nothing deep inside the head (the face may stand a little proud of the body's simplified head, not sink in)
    assert signed.min() > -0.008, f"deepest face vertex {signed.min() * 1e3:.1f} mm inside the head"
    assert (signed < -0.005).mean() < 0.01
    assert np.median(signed) > 0
    # the face's outline meets the head (no floating mask edge): boundary vertices within 1 cm of the surface
    f = fm.faces.numpy()
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    uniq, count = np.unique(edges, axis=0, return_counts=True)
    boundary = np.unique(uniq[count == 1])
    assert np.median(np.abs(signed[boundary])) < 0.008
    assert np.percentile(np.abs(signed[boundary]), 95) < 0.012


def test_face_centre_and_orientation_on_the_body(placed):
    fm, v, _, _ = placed
    L = v[fm.landmark_indices.numpy()]
    assert L[30, 2] > v[:, 2].mean() + 0.02  # the nose points forward (+Z) out of the head
    assert L[19, 1] > L[30, 1] > L[8, 1]  # brow above nose above chin (+Y up)
    assert L[45, 0] > 0 > L[36, 0]  # subject's left eye on +X
