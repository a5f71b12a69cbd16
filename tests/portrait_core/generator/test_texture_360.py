"""The '360' mode's texture parametrisations: the octahedral map (default) against the spherical one."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait_core.generator import rendering as R
from portrait_core.generator.config import generator_config
from portrait_core.generator.generator import Generator
from portrait_core.generator.structures import Latents

unit = st.floats(-1.0, 1.0, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(unit, unit, unit)
def test_octahedral_round_trip_direction(x, y, z):
    d = torch.tensor([x, y, z], dtype=torch.float64)
    if d.norm() < 1e-3:
        return
    uv = R.octahedral_uv(d)
    assert uv.abs().max() <= 1.0 + 1e-12
    assert torch.allclose(R.octahedral_directions(uv), d / d.norm(), atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(unit, unit)
def test_octahedral_round_trip_uv(u, v):
    uv = torch.tensor([u, v], dtype=torch.float64)
    back = R.octahedral_uv(R.octahedral_directions(uv))
    # points on the square's boundary have a mirror twin (u, 1) ~ (-u, 1): compare as directions there
    if (uv.abs() > 1 - 1e-9).any():
        assert torch.allclose(R.octahedral_directions(back), R.octahedral_directions(uv), atol=1e-9)
    else:
        assert torch.allclose(back, uv, atol=1e-9)


def test_landmarks_sit_inside_the_texture():
    """The top of the head is the centre, the face and the back of the head lie inside the inner diamond."""
    up, face, back = torch.tensor([[0.0, 1, 0], [0, 0.6, 1], [0, 0.6, -1]])
    assert R.octahedral_uv(up).abs().max() < 1e-7
    f, b = R.octahedral_uv(face), R.octahedral_uv(back)
    assert f[1] > 0.5 and b[1] < -0.5 and f.abs().sum() < 1 and b.abs().sum() < 1
    assert torch.allclose(R.octahedral_uv(torch.tensor([0.0, 0.0, 1.0])), torch.tensor([0.0, 1.0]))


def _arc(n: int = 721) -> torch.Tensor:
    """A great circle through the back of the head and both poles (x = 0 plane) plus the back's horizontal
    circle: both cross the spherical map's seam (azimuth +-pi) or its poles."""
    t = torch.linspace(0, 2 * math.pi, n, dtype=torch.float64)
    vertical = torch.stack([torch.zeros_like(t), torch.sin(t), torch.cos(t)], -1)
    horizontal = torch.stack([torch.sin(t), 0.3 * torch.ones_like(t), torch.cos(t)], -1)
    return torch.stack([vertical, horizontal / horizontal.norm(dim=-1, keepdim=True)])  # [2, n, 3]


def _smooth_texture(layout: str, res: int) -> torch.Tensor:
    """A texture holding a smooth function of direction (the direction itself) at its texel centres."""
    uv = R.texel_centres(res, torch.float64)
    dirs = R.octahedral_directions(uv) if layout == "octahedral" else R.spherical_directions(uv)
    return dirs.T.reshape(1, 1, 3, res, res)


def test_lookup_is_continuous_across_the_former_seam():
    """Reading a texture of f(direction) = direction along circles over the back and the poles (64^2): the
    octahedral lookup moves about one step per step; the spherical one jumps at the pole."""
    res, dirs = 64, _arc()
    jumps = {}
    for layout in ("octahedral", "spherical"):
        uv = R.texture_coords(dirs, layout, torch.zeros(3, dtype=torch.float64), 0.3)
        got = R.sample_textures(_smooth_texture(layout, res), uv.reshape(1, -1, 1, 2), layout)[0, :, 0]
        got = got.reshape(dirs.shape)
        err = (got - dirs).norm(dim=-1)
        jumps[layout] = (err.max().item(), (got[:, 1:] - got[:, :-1]).norm(dim=-1).max().item())
    step = 2 * math.pi / 720
    assert jumps["octahedral"][0] < 0.025 and jumps["octahedral"][1] < 2 * step  # measured 0.019, 1.3 steps
    assert jumps["spherical"][1] > 4 * step  # measured 5.6 steps: at the pole, where texels pinch and clamp


def test_pad_texture_continues_the_sphere():
    """Padding holds the texel whose direction is closest to the padded texel's position continued across the
    edge: for f(direction) = direction, padded values differ from their neighbours by about one texel."""
    res = 16
    for layout in ("octahedral", "spherical"):
        padded = R.pad_texture(_smooth_texture(layout, res), layout, 2)[0, 0]
        step_x = (padded[:, :, 1:] - padded[:, :, :-1]).norm(dim=0).max()
        step_y = (padded[:, 1:, :] - padded[:, :-1, :]).norm(dim=0).max()
        assert max(step_x, step_y) < 4 * math.pi / res, layout  # no jump across a fold, seam or pole
    frontal = R.pad_texture(torch.ones(1, 2, 4, 4), "frontal", 1)
    assert frontal.shape == (1, 2, 6, 6) and frontal[..., 0, :].abs().sum() == 0
    with pytest.raises(ValueError, match="unknown texture layout 'cube'"):
        R.pad_texture(frontal, "cube", 1)


@pytest.mark.parametrize("layout", ["frontal", "octahedral", "spherical"])
def test_unpad_inverts_pad(layout):
    tex = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    assert torch.allclose(R.unpad_texture(R.pad_texture(tex, layout, 3), layout, 3), tex, atol=1e-12)
    noisy = R.pad_texture(tex, layout, 3) + 0.1 * torch.rand(2, 3, 18, 18, dtype=torch.float64)
    deep = R.unpad_texture(noisy, layout, 3)[..., 3:-3, 3:-3]  # more than pad from every edge: untouched
    assert torch.equal(deep, noisy[..., 6:-6, 6:-6])


def texel_solid_angles(layout: str, res: int) -> torch.Tensor:
    """Solid angle of every texel [T*T] (two spherical triangles per texel, from its corner directions)."""
    c = torch.linspace(-1, 1, res + 1, dtype=torch.float64)
    v, u = torch.meshgrid(c, c, indexing="ij")
    uv = torch.stack([u, v], -1)
    d = R.octahedral_directions(uv) if layout == "octahedral" else R.spherical_directions(uv)
    a, b, cc, dd = d[:-1, :-1], d[:-1, 1:], d[1:, 1:], d[1:, :-1]

    def tri(p, q, r):  # Van Oosterom-Strackee
        num = (p * torch.cross(q, r, dim=-1)).sum(-1).abs()
        den = 1 + (p * q).sum(-1) + (q * r).sum(-1) + (r * p).sum(-1)
        return 2 * torch.atan2(num, den)

    return (tri(a, b, cc) + tri(a, cc, dd)).reshape(-1)


def test_area_distortion_is_bounded_unlike_the_spherical_map():
    """Max / min texel solid angle: octahedral stays below 3 sqrt(3) = 5.2 at every resolution (measured 4.54 at
    32^2, 5.03 at 128^2), spherical grows with the resolution (0.64 T: pole pinching; 20.6 and 81.5). Both cover
    the sphere exactly once."""
    ratios = {}
    for layout in ("octahedral", "spherical"):
        for res in (32, 128):
            omega = texel_solid_angles(layout, res)
            assert omega.sum().item() == pytest.approx(4 * math.pi, rel=1e-3)
            ratios[layout, res] = (omega.max() / omega.min()).item()
    assert ratios["octahedral", 32] < 3 * math.sqrt(3) and ratios["octahedral", 128] < 3 * math.sqrt(3)
    assert ratios["spherical", 32] > 10 and ratios["spherical", 128] > 3 * ratios["spherical", 32]


def test_config_default_and_layouts():
    tiny = generator_config("tiny")
    assert tiny.render.texture_layout == "frontal" and generator_config("paper").render.mode == "frontal"
    assert generator_config("tiny", render={"mode": "360"}).render.texture_layout == "octahedral"
    old = generator_config("tiny", render={"mode": "360", "sphere_map": "spherical"})
    assert old.render.texture_layout == "spherical"
    with pytest.raises(ValueError, match="render.sphere_map must be"):
        generator_config("tiny", render={"mode": "360", "sphere_map": "cube"})


def test_superres_keeps_the_sphere_continuous():
    """360-mode super-resolution pads with the sphere's continuation, so across the octahedral fold (row 0 next to
    itself flipped) the output steps about as much as between neighbouring rows inside; the same network on the
    unpadded texture (zero padding, what the frontal path does) jumps there."""
    torch.manual_seed(0)
    g = Generator(generator_config("tiny", render={"mode": "360"})).eval()
    with torch.no_grad():
        g.superres.residual_gain.fill_(1.0)  # a trained network's residual, not the near-identity start
    res = g.cfg.render.texture_resolution
    smooth = _smooth_texture("octahedral", res).float()  # [1, 1, 3, T, T]: smooth on the sphere
    tex = torch.cat([smooth * 0.4 + 0.5, smooth[:, :, :1] * 0.3 + 0.6,
                     smooth[:, :, [0, 1, 2, 0]][:, :, : g.cfg.radiance.feature_dim]], 2)
    styles = g.superres_styles(Latents.sample(1, seed=0))
    with torch.no_grad():
        out = g.super_resolve_textures(tex, styles)
        plain = g.superres(tex, styles)
    s = res * g.cfg.superres.scale
    assert out.shape == plain.shape == (1, 1, 4, s, s)

    def fold_vs_inside(x):
        fold = (x[..., 0, :] - x[..., 0, :].flip(-1)).abs().mean()  # row 0 and its neighbour across the edge
        inside = (x[..., 0, :] - x[..., 1, :]).abs().mean()
        return (fold / inside).item()

    assert fold_vs_inside(out) < 0.6  # measured 0.42 (blended margins); 1.7 with the margins only cropped
    assert fold_vs_inside(plain) > 1.5 * fold_vs_inside(out)  # measured 0.80
