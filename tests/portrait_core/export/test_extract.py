"""Field -> mesh: volume, winding, sparse == dense, clean-up, decimation, colours, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from portrait_core.export.extract import (
    EmptyFieldError,
    evaluate_grid,
    evaluate_grid_sparse,
    extract_mesh_from_field,
    grid_shape,
    marching_cubes,
)

from . import analytic
from .conftest import sphere_field

BOX = ((-0.3, -0.3, -0.3), (0.3, 0.3, 0.3))


@pytest.mark.parametrize("resolution,sparse", [(64, False), (160, True)])
def test_sphere_volume_and_outward_normals(resolution, sparse):
    r, c = 0.2, (0.02, -0.01, 0.03)
    m = extract_mesh_from_field(sphere_field(r, c), BOX, resolution, 0.0, sparse=sparse)
    exact = 4.0 / 3.0 * math.pi * r**3
    err = (m.volume() - exact) / exact
    print(f"sphere {resolution}^3 sparse={sparse}: volume error {100 * err:+.3f}%")
    assert abs(err) < 0.02
    assert m.faces.dtype == np.uint32 and m.vertices.dtype == np.float32
    radial = m.vertices - np.asarray(c, np.float32)
    assert np.allclose(np.linalg.norm(radial, axis=1), r, atol=0.6 * 0.6 / (resolution - 1))
    cos = (m.normals * radial).sum(1) / np.linalg.norm(radial, axis=1)
    assert cos.min() > 0.95  # outward
    assert m.to_trimesh().is_watertight


def test_grid_matches_node_positions():
    g = evaluate_grid(lambda p: p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2], ((0, 0, 0), (1, 2, 3)), (3, 5, 4), chunk_size=7)
    i, j, k = np.meshgrid(np.linspace(0, 1, 3), np.linspace(0, 2, 5), np.linspace(0, 3, 4), indexing="ij")
    assert np.allclose(g, i + 10 * j + 100 * k, atol=1e-4)
    assert grid_shape(((0, 0, 0), (1, 2, 0.5)), 101) == (51, 101, 26)


def test_sparse_grid_equals_dense_near_the_surface():
    bounds, res = analytic.BOUNDS, (97, 93, 53)
    dense = evaluate_grid(analytic.field, bounds, res)
    sparse, frac = evaluate_grid_sparse(analytic.field, bounds, res, 0.0, stride=4)
    print(f"sparse grid: {100 * frac:.1f}% of the nodes evaluated")
    assert frac < 0.4
    assert np.array_equal(dense >= 0, sparse >= 0)
    # every node of every voxel the surface passes through is exact, so marching cubes gives the same mesh
    s = torch.from_numpy((dense >= 0).astype(np.float32))[None, None]
    cut = (torch.nn.functional.max_pool3d(s, 2, 1) != -torch.nn.functional.max_pool3d(-s, 2, 1))[0, 0].numpy()
    nodes = np.zeros(dense.shape, bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                nodes[dx:dx + cut.shape[0], dy:dy + cut.shape[1], dz:dz + cut.shape[2]] |= cut
    assert np.allclose(sparse[nodes], dense[nodes], atol=1e-6)
    a = marching_cubes(dense, bounds, 0.0)
    b = marching_cubes(sparse, bounds, 0.0)
    assert a[1].shape == b[1].shape and np.allclose(a[0], b[0], atol=1e-6)


def test_clean_keeps_big_components_and_decimates():
    two = lambda p: torch.maximum(0.15 - (p - torch.tensor([-0.1, 0, 0])).norm(dim=-1),  # noqa: E731
                                  0.02 - (p - torch.tensor([0.22, 0, 0])).norm(dim=-1))
    m = extract_mesh_from_field(two, BOX, 64, 0.0)
    assert m.vertices[:, 0].max() < 0.1  # the small blob is dropped
    keep = extract_mesh_from_field(two, BOX, 64, 0.0, min_component_fraction=0.0)
    assert keep.vertices[:, 0].max() > 0.2
    d = extract_mesh_from_field(two, BOX, 64, 0.0, decimate=2000)
    assert 1500 <= d.num_faces <= 2000
    assert abs(d.volume() - m.volume()) / m.volume() < 0.02


def test_colours_come_from_the_outward_view():
    seen = {}

    def colour(p, view_dirs):
        seen["dirs"], seen["points"] = view_dirs, p
        return (0.5 - 0.5 * view_dirs).clamp(0, 1)  # encodes the normal

    m = extract_mesh_from_field(sphere_field(0.2), BOX, 48, 0.0, color_fn=colour)
    assert m.colors.shape == (m.num_vertices, 3)
    assert np.allclose(m.colors, 0.5 + 0.5 * m.normals, atol=1e-5)
    assert float((seen["dirs"] * torch.from_numpy(m.vertices)).sum(-1).max()) < 0  # looking inwards


@pytest.mark.parametrize("which", ["empty", "full"])
def test_mesh_free_field_raises_clear_error(which, tmp_path):
    from portrait_core.export.gltf import write_glb  # noqa: F401  (nothing may be written)

    fn = (lambda p: -torch.ones(p.shape[0])) if which == "empty" else (lambda p: torch.ones(p.shape[0]))
    out = tmp_path / "x.glb"
    with pytest.raises(EmptyFieldError, match="everywhere in the box"):
        m = extract_mesh_from_field(fn, BOX, 40, 0.0)
        write_glb(out, m)
    with pytest.raises(EmptyFieldError):
        extract_mesh_from_field(fn, BOX, 200, 0.0)  # sparse path too
    assert not out.exists()


def test_bad_fields_and_arguments():
    with pytest.raises(ValueError, match="non-finite"):
        extract_mesh_from_field(lambda p: torch.full((p.shape[0],), float("nan")), BOX, 16, 0.0)
    with pytest.raises(ValueError, match="values for"):
        extract_mesh_from_field(lambda p: torch.zeros(3), BOX, 16, 0.0)
    with pytest.raises(ValueError, match="bounds"):
        extract_mesh_from_field(sphere_field(0.1), ((0, 0, 0), (1, -1, 1)), 16, 0.0)
    with pytest.raises(ValueError, match="resolution"):
        extract_mesh_from_field(sphere_field(0.1), BOX, 1, 0.0)


def test_hollow_shell_keeps_inner_wall_facing_the_cavity():
    shell = lambda p: torch.minimum(0.25 - p.norm(dim=-1), p.norm(dim=-1) - 0.15)  # noqa: E731
    m = extract_mesh_from_field(shell, BOX, 64, 0.0)
    r = np.linalg.norm(m.vertices, axis=1)
    radial = (m.normals * m.vertices).sum(1) / r
    assert np.all(radial[r > 0.2] > 0.9) and np.all(radial[r < 0.2] < -0.9)
    exact = 4.0 / 3.0 * math.pi * (0.25**3 - 0.15**3)
    assert abs(m.volume() - exact) / exact < 0.02


def test_body_distance_mask_keeps_the_body_and_drops_what_is_far():
    from portrait_core.export.extract import body_distance_mask

    rng = np.random.default_rng(0)
    body = rng.normal(0, 0.05, (500, 3))
    mask = body_distance_mask(body, ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5)), max_distance=0.1, fade=0.02)
    near = torch.from_numpy(body[:50]).float()
    far = torch.tensor([[0.0, 0.0, -0.45], [0.4, 0.4, 0.0]])
    assert torch.all(mask(near) > 0.99) and torch.all(mask(far) < 1e-6)
    assert mask(torch.tensor([[2.0, 0.0, 0.0]])).item() == 0.0  # outside the box


def test_body_distance_mask_is_tighter_behind_the_body():
    from portrait_core.export.extract import body_distance_mask

    body = np.array([[0.0, 0.0, 0.0]])  # one vertex: distance and direction are exact
    box = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    mask = body_distance_mask(body, box, max_distance=0.1, fade=0.02, grid=101, max_distance_behind=0.04)
    at = lambda *p: mask(torch.tensor([p], dtype=torch.float32)).item()  # noqa: E731
    assert at(0, 0, 0.09) > 0.99 and at(0.09, 0, 0) > 0.99 and at(0, 0.09, 0) > 0.99  # front, side, top: 10 cm
    assert at(0, 0, -0.03) > 0.99 and at(0, 0, -0.09) < 1e-6  # behind: 4 cm
    assert at(0, 0.05, -0.05) < 1e-6 and at(0.06, 0, -0.03) > 0.99  # 45 deg is behind, 27 deg from the side not
    same = body_distance_mask(body, box, max_distance=0.1, fade=0.02, grid=101)
    assert same(torch.tensor([[0.0, 0.0, -0.09]])).item() > 0.99  # without the option: 10 cm all round
