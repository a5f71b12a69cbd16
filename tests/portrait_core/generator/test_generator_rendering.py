"""Pure rendering functions: intersections, compositing, grids, texture parametrisations."""

from __future__ import annotations

import math

import pytest
import torch

from portrait_core.generator import rendering as R


def _sphere_rays(n_rays: int = 64, samples: int = 400):
    """Rays from z = 1 towards -Z through a disc of radius 0.35 around the origin; s(x) = |x|."""
    g = torch.Generator().manual_seed(0)
    xy = (torch.rand(n_rays, 2, generator=g, dtype=torch.float64) - 0.5) * 0.7
    origins = torch.cat([xy, torch.ones(n_rays, 1, dtype=torch.float64)], -1)
    t = torch.linspace(0.0, 2.0, samples, dtype=torch.float64)
    points = origins[:, None, :] + t[None, :, None] * torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
    return xy, points, t


def test_intersections_with_a_spherical_field_land_on_the_spheres():
    xy, points, t = _sphere_rays()
    s = points.norm(dim=-1)
    levels = torch.tensor([0.4, 0.3, 0.2], dtype=torch.float64)
    cr = R.intersect_levels(s, t[None, :], levels)
    rho = xy.norm(dim=-1, keepdim=True)
    expected_valid = rho < levels  # the ray hits sphere l iff its distance to the centre < l
    assert torch.equal(cr.valid, expected_valid)
    # analytic first hit: z = +sqrt(l^2 - rho^2), depth along the ray = 1 - z
    z = torch.sqrt((levels**2 - rho**2).clamp_min(0))
    err = (cr.depth - (1.0 - z)).abs()[expected_valid]
    assert err.max() < 2e-3  # linear interpolation between samples 5 mm apart
    hits = R.interpolate_at_crossings(points, cr)
    radius_err = (hits.norm(dim=-1) - levels)[expected_valid].abs()
    assert radius_err.max() < 1e-4  # s is linear along the ray up to curvature; hits sit on the level sets
    assert (hits[..., 2][expected_valid] > 0).all()  # the FIRST crossing is the front of the sphere


def test_intersections_need_a_falling_crossing_and_flag_the_rest_invalid():
    s = torch.tensor([[0.5, 0.1, 0.5], [0.1, 0.2, 0.3]])  # ray 2 rises through 0.25: no falling crossing
    depth = torch.tensor([[1.0, 2.0, 3.0]])
    cr = R.intersect_levels(s, depth, torch.tensor([0.3]))
    assert cr.valid.tolist() == [[True], [False]]
    assert cr.depth[0, 0].item() == pytest.approx(1.5)
    assert cr.index[1, 0].item() == 1 and cr.frac[1, 0].item() == 1.0  # last interval, last sample


def test_intersections_are_differentiable_in_the_field():
    s = torch.tensor([[0.5, 0.1]], requires_grad=True)
    cr = R.intersect_levels(s, torch.tensor([[0.0, 1.0]]), torch.tensor([0.3]))
    cr.depth.sum().backward()
    # depth = (s0 - l) / (s0 - s1): d/ds0 = (l - s1)/(s0 - s1)^2 = 0.2/0.16
    assert s.grad[0, 0].item() == pytest.approx(0.2 / 0.16, rel=1e-5)


def test_composite_matches_a_hand_computed_case_and_sorts_by_depth():
    rgb = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])  # [1, L=3, 3]
    alpha = torch.tensor([[0.5, 0.25, 0.9]])
    depth = torch.tensor([[2.0, 1.0, 3.0]])  # level 1 (blue) is in front
    valid = torch.tensor([[True, True, False]])  # level 2 is invalid: ignored
    out = R.composite(rgb, alpha, depth, valid, background=1.0)
    w_blue, w_red = 0.25, 0.5 * 0.75
    assert out.weights[0].tolist() == pytest.approx([w_red, w_blue, 0.0])
    rest = 1 - w_blue - w_red
    assert out.rgb[0].tolist() == pytest.approx([w_red + rest, rest, w_blue + rest])
    assert out.depth[0].item() == pytest.approx((w_red * 2 + w_blue * 1) / (w_red + w_blue))
    assert out.opacity[0].item() == pytest.approx(w_red + w_blue)


def test_composite_weights_are_in_unit_interval_and_sum_to_at_most_one():
    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(100, 24, generator=g)
    depth = torch.rand(100, 24, generator=g)
    valid = torch.rand(100, 24, generator=g) > 0.3
    out = R.composite(torch.rand(100, 24, 3, generator=g), alpha, depth, valid)
    assert (out.weights >= 0).all() and (out.weights <= 1).all()
    assert (out.weights.sum(-1) <= 1 + 1e-6).all()
    assert (out.weights[~valid] == 0).all()
    assert ((out.rgb >= 0) & (out.rgb <= 1 + 1e-6)).all()


def test_alpha_from_sigma_is_zero_where_invalid():
    sigma = torch.tensor([10.0, 10.0, -10.0])
    a = R.alpha_from_sigma(sigma, torch.tensor([True, False, True]), 0.04)
    assert a[0].item() == pytest.approx(1 - math.exp(-0.04 * 10.0000454), rel=1e-5)
    assert a[1].item() == 0.0 and 0 < a[2].item() < 1e-5


def test_grid_lookup_is_exact_for_affine_fields():
    centre, half = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([0.5, 0.4, 0.3])
    nodes = R.grid_points(centre, half, 5)  # [z, y, x, 3]
    assert torch.allclose(nodes[0, 0, 0], centre - half) and torch.allclose(nodes[-1, -1, -1], centre + half)
    field = nodes @ torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]]) + 0.25  # affine, 2 channels
    volume = field.permute(3, 0, 1, 2)[None]
    pts = centre + (torch.rand(1, 50, 3) * 2 - 1) * half
    got = R.sample_grid(volume, pts, centre, half)
    want = pts @ torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]]) + 0.25
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("mode", ["frontal", "spherical", "octahedral"])
def test_bake_rays_hit_back_at_their_own_texel(mode):
    """A crossing found on a bake ray has that texel's coordinates, so the bake and the lookup agree."""
    centre = torch.tensor([0.0, 0.13, 0.06], dtype=torch.float64)
    res = 8
    points, depths = R.texture_rays(res, mode, centre, 0.3, 0.45, 200)
    s = (points - centre).norm(dim=-1)
    cr = R.intersect_levels(s, depths, torch.tensor([0.2, 0.1], dtype=torch.float64))
    hits = R.interpolate_at_crossings(points, cr)
    uv = R.texture_coords(hits, mode, centre, 0.3)
    texel = (torch.arange(res, dtype=torch.float64) + 0.5) / res * 2 - 1
    v, u = torch.meshgrid(texel, texel, indexing="ij")
    want = torch.stack([u.reshape(-1), v.reshape(-1)], -1)[:, None, :].expand_as(uv)
    ok = cr.valid
    if mode != "frontal":
        assert ok.all()  # radial rays hit every closed shell
    assert ok.any()
    assert torch.allclose(uv[ok], want[ok], atol=1e-6)


def test_spherical_parametrisation_separates_front_and_back():
    centre = torch.zeros(3)
    front, back = torch.tensor([0.0, 0.0, 0.1]), torch.tensor([0.0, 0.0, -0.1])
    uv = R.texture_coords(torch.stack([front, back]), "spherical", centre, 0.3)
    assert uv[0, 0].abs() < 1e-6 and uv[1, 0].abs() > 0.99  # front at u = 0, back at the seam u = +-1
    uv_f = R.texture_coords(torch.stack([front, back]), "frontal", centre, 0.3)
    assert torch.allclose(uv_f[0], uv_f[1])  # the orthographic map folds them: that is why 360 mode exists


def test_spherical_texture_lookup_wraps_across_the_seam():
    tex = torch.zeros(1, 1, 1, 4, 8)
    tex[..., 0] = 1.0  # first texel column (u just above -1)
    tex[..., -1] = 3.0  # last texel column (u just below +1)
    uv = torch.tensor([[[[1.0, 0.0]], [[-1.0, 0.0]]]]).reshape(1, 2, 1, 2)
    out = R.sample_textures(tex, uv, "spherical")
    assert out[0, :, 0, 0].tolist() == pytest.approx([2.0, 2.0])  # the seam blends both sides
    out_f = R.sample_textures(tex, uv, "frontal")
    assert out_f[0, :, 0, 0].tolist() == pytest.approx([1.5, 0.5])  # zero padding outside a frontal texture
