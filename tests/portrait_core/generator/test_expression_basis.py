"""The linear expression basis (``expression.basis``) and the face grid (``render.face_grid``)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait_core import conventions as C
from portrait_core.generator import Generator, generator_config
from portrait_core.generator.checkpoint import EXPRESSION_KEYS, load_generator, replaced_keys, save_generator
from portrait_core.generator.networks import combine_basis, combine_basis_reference
from portrait_core.generator.structures import Latents

from .conftest import randomise_zero_inits


def basis_generator(face_grid: int = 12, basis: int = 6, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    cfg = generator_config("tiny", expression={"basis": basis, "shading": True},
                           render={"expression_grid": 10, "face_grid": face_grid})
    G = Generator(cfg).eval()
    randomise_zero_inits(G, seed)
    return G


def face_points(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tensor(C.FACE_CENTRE) + (torch.rand(1, n, 3, generator=g) * 2 - 1) * 0.06


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), shared=st.booleans(), fields=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_combine_basis_equals_the_reference(batch, shared, fields, seed):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(1 if shared else batch, fields, 3, 4, 5, generator=g)
    coefficients = torch.randn(batch, fields, generator=g)
    fast = combine_basis(basis, coefficients)
    assert fast.shape == (batch, 3, 4, 5)
    assert torch.allclose(fast, combine_basis_reference(basis, coefficients), atol=1e-5)


def test_fields_are_linear_in_the_expression_and_zero_at_neutral():
    G = basis_generator()
    g = torch.Generator().manual_seed(1)
    identity, points = torch.randn(1, 80, generator=g), face_points(200)
    e1, e2 = torch.randn(1, 64, generator=g), torch.randn(1, 64, generator=g)
    with torch.no_grad():
        f = [G.expression_fields(points, identity, e) for e in (e1, e2, 2 * e1 - 0.5 * e2)]
        neutral = G.expression_fields(points, identity, torch.zeros(1, 64))
    assert f[0].abs().max() > 1e-4  # the randomised heads move points: the checks below can fail
    assert torch.allclose(f[2], 2 * f[0] - 0.5 * f[1], atol=1e-6)
    assert neutral.abs().max() == 0


def test_the_mapping_sees_the_identity_alone():
    G = basis_generator()
    assert G.expression_mapping.in_dim == G.cfg.identity_dim
    identity = torch.randn(2, 80)
    with torch.no_grad():
        a = G.expression_styles(identity, torch.zeros(2, 64))
        b = G.expression_styles(identity, torch.randn(2, 64))
    assert torch.equal(a, b)


def test_avatar_frames_read_the_baked_basis_like_the_generator():
    G = basis_generator()
    latents = Latents(torch.randn(1, 80), torch.randn(1, G.cfg.noise_dim))
    avatar = G.make_avatar(latents, torch.zeros(1, 10), super_resolve=False)
    expression = torch.randn(2, 64)
    points = face_points(300).expand(2, -1, -1)
    with torch.no_grad():
        baked = avatar._expression_fn(expression)(points)
        fresh = G.expression_fields_fn(latents.identity.expand(2, -1), expression)(points)
    assert baked.shape == (2, 300, 4)
    assert torch.allclose(baked, fresh, atol=1e-5)


def test_grids_follow_the_network_and_the_face_grid_is_finer():
    """Inside the face box's inner part the lookup is the face grid's; its trilinear error against the network
    is smaller than the head-box grid's alone."""
    errors = {}
    for face_grid in (0, 24):
        G = basis_generator(face_grid=face_grid)
        identity, expression = torch.randn(1, 80, generator=torch.Generator().manual_seed(2)), torch.randn(1, 64)
        points = torch.tensor(G.cfg.expression.face_box_centre) + (torch.rand(1, 500, 3) * 2 - 1) * 0.5 * \
            torch.tensor(G.cfg.expression.face_box_half_extent)
        with torch.no_grad():
            exact = G.expression_fields(points, identity, expression)
            grid = G.expression_fields_fn(identity, expression)(points)
        errors[face_grid] = float((grid - exact).abs().mean() / exact.abs().mean())
    assert errors[24] < 0.5 * errors[0]


def test_basis_checkpoint_round_trip_and_replaced_keys(tmp_path):
    G = basis_generator()
    path = save_generator(tmp_path / "basis.safetensors", G)
    H = load_generator(path)
    assert H.cfg.expression.basis == 6 and H.cfg.render.face_grid == 12
    for k, v in G.state_dict().items():
        assert torch.equal(v, H.state_dict()[k]), k
    plain = generator_config("tiny")
    assert set(EXPRESSION_KEYS) <= set(replaced_keys(plain, G.cfg))


@pytest.mark.parametrize("override", [{"render": {"face_grid": 1}}, {"expression": {"basis": -1}},
                                      {"render": {"face_grid": 1000}}])
def test_bad_sizes_are_refused(override):
    with pytest.raises(ValueError, match="face_grid|basis"):
        Generator(generator_config("tiny", **override))


def test_morph_targets_of_a_basis_avatar_use_its_bake_and_follow_the_network():
    """Blender's blendshapes (``export.rig.expression_morphs``) read the avatar's baked basis on the grids; they
    agree with the exact network path."""
    from types import SimpleNamespace

    import numpy as np

    from portrait_core.export.rig import expression_morphs

    G = basis_generator(face_grid=24)
    avatar = G.make_avatar(Latents(torch.randn(1, 80), torch.randn(1, G.cfg.noise_dim)), torch.zeros(1, 10),
                           super_resolve=False)
    assert avatar.expression_bake.network[0].shape[:3] == (1, 6, 4)
    mesh = SimpleNamespace(vertices=face_points(200, seed=3)[0].double().numpy())
    grid = expression_morphs(avatar, mesh, ["jaw_open", "smile"], scale=2.0)
    exact = expression_morphs(avatar, mesh, ["jaw_open", "smile"], scale=2.0, exact=True)
    for name in ("jaw_open", "smile"):
        assert np.abs(exact[name]).max() > 1e-3
        assert np.abs(grid[name] - exact[name]).mean() < 0.2 * np.abs(exact[name]).mean()
