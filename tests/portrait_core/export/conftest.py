"""Fixtures for the export tests: the synthetic body, an upper-body mesh around it, an analytic bust."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from portrait_core.export.extract import Mesh, vertex_normals


@pytest.fixture(scope="session")
def body():
    from portrait_core.body.model import BodyModel

    return BodyModel.synthetic()


@pytest.fixture(scope="session")
def body_mesh(body) -> Mesh:
    """The synthetic body's canonical surface above the waist, pushed 4 mm outwards (a 'clothed' stand-in for an
    extracted avatar mesh), coloured by height."""
    v = body.canonical().vertices[0].double().numpy()
    f = body.faces.numpy()
    keep = (v[f][:, :, 1] > -0.42).all(1)
    used = np.unique(f[keep])
    remap = -np.ones(len(v), np.int64)
    remap[used] = np.arange(len(used))
    vv, ff = v[used], remap[f[keep]].astype(np.uint32)
    vv = vv + 0.004 * vertex_normals(vv, ff)
    t = ((vv[:, 1] - vv[:, 1].min()) / np.ptp(vv[:, 1]))[:, None]
    colors = (t * np.array([0.9, 0.7, 0.6]) + (1 - t) * np.array([0.2, 0.3, 0.7])).astype(np.float32)
    return Mesh(vv.astype(np.float32), ff, vertex_normals(vv, ff), colors)


@pytest.fixture(scope="session")
def body_rig(body, body_mesh):
    from portrait_core.export.rig import build_rig

    return build_rig(body_mesh, body)


@pytest.fixture
def test_pose() -> np.ndarray:
    """A pose code [6,3] that moves every pose joint (radians, canonical-relative)."""
    p = np.zeros((6, 3))
    p[0] = (0.1, 0.35, 0.0)    # neck: turn
    p[1] = (0.0, 0.0, 0.15)    # left collar
    p[3] = (0.45, -0.2, 0.1)   # head: nod + turn
    p[4] = (0.2, 0.0, 0.45)    # left shoulder
    p[5] = (-0.1, 0.2, -0.3)   # right shoulder
    return p


def sphere_field(radius: float, centre=(0.0, 0.0, 0.0)):
    c = torch.tensor(centre, dtype=torch.float32)
    return lambda p: radius - (p - c).norm(dim=-1)
