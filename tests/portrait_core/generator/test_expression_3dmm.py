"""The 3DMM's own expression motion on the expression grids (``expression.follow_3dmm``)."""
import pytest
import torch

from portrait_core.face import EXPRESSION_NAMES
from portrait_core.generator import Generator, generator_config
from portrait_core.generator import expression_3dmm as E3
from train.fidelity import expression_fidelity

from .conftest import randomise_zero_inits


def follow_generator(face_grid: int = 32, seed: int = 0, **render) -> Generator:
    torch.manual_seed(seed)
    cfg = generator_config("tiny", expression={"follow_3dmm": True, "shading": True},
                           render={"expression_grid": 16, "face_grid": face_grid, **render})
    G = Generator(cfg).eval()
    randomise_zero_inits(G, seed)
    return G


def test_forward_field_is_the_face_models_displacement():
    G = follow_generator()
    g = torch.Generator().manual_seed(0)
    identity, expression = torch.randn(2, 80, generator=g), torch.randn(2, 64, generator=g)
    neutral = G.face.neutral_vertices(identity)
    points = neutral[:, ::7] + torch.randn(2, neutral[:, ::7].shape[1], 3, generator=g) * 0.01
    weights = [E3.surface_weights(points[b], neutral[b]) for b in range(2)]
    index, weight = torch.stack([w[0] for w in weights]), torch.stack([w[1] for w in weights])
    ours = E3.forward_field(G.face.expression_offsets(identity, expression), index, weight)
    theirs = G.face.displace_points(points, identity, expression)
    assert theirs.abs().max() > 1e-3 and (ours == 0).any()  # moving points and points beyond the reach
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_grid_inversion_equals_the_reference(threads):
    g = torch.Generator().manual_seed(1)
    centre, half = torch.tensor([0.0, 0.1, 0.1]), torch.tensor([0.1, 0.12, 0.07])
    volume = torch.randn(1, 3, 9, 10, 11, generator=g) * 0.01
    nodes = centre + (torch.rand(1, 1001, 3, generator=g) * 2.2 - 1.1) * half  # some outside the grid
    keep = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = E3.invert_grid(volume, centre, half, nodes, 5)
    finally:
        torch.set_num_threads(keep)
    reference = E3.invert_grid_reference(volume, centre, half, nodes, 5)
    assert fast.abs().max() > 1e-3
    assert torch.allclose(fast, reference, atol=1e-6)


def test_followed_expressions_reach_the_3dmm_and_ignore_the_network():
    """The deformation avatars read matches the 3DMM at its most-moving vertices (the model card's expression
    row), whatever the network's weights; the network still gives the shading; neutral is exactly 0."""
    identity = torch.randn(4, 80, generator=torch.Generator().manual_seed(2))
    body_shape = torch.randn(4, 10, generator=torch.Generator().manual_seed(3)) * 0.5
    ratios = []
    for seed in (0, 1):
        G = follow_generator(seed=seed)
        with torch.no_grad():
            r = expression_fidelity(G, identity, body_shape)
        ratios.append((r["jaw_open"]["ratio"], r["smile"]["ratio"]))
    assert ratios[0] == pytest.approx(ratios[1], abs=1e-6)
    assert ratios[0][0] > 0.95 and ratios[0][1] > 0.8
    G = follow_generator()
    points = G.face_box_centre + (torch.rand(2, 300, 3) * 2 - 1) * G.face_box_half * 0.5
    expression = torch.zeros(2, 64)
    expression[:, EXPRESSION_NAMES["jaw_open"]] = 2.0
    with torch.no_grad():
        fields = G.expression_fields_fn(identity[:2], expression, body_shape=body_shape[:2])(points)
        neutral = G.expression_fields_fn(identity[:2], torch.zeros(2, 64), body_shape=body_shape[:2])(points)
    assert fields.shape == (2, 300, 4) and fields[..., 3].abs().max() > 1e-3
    assert neutral.abs().max() == 0


def test_avatar_bakes_the_surface_weights_and_matches_the_generator():
    from portrait_core.generator.structures import Latents

    G = follow_generator()
    latents = Latents(torch.randn(1, 80), torch.randn(1, G.cfg.noise_dim))
    body_shape = torch.randn(1, 10) * 0.5
    avatar = G.make_avatar(latents, body_shape, super_resolve=False)
    assert avatar.expression_bake.surface is not None
    expression = torch.randn(2, 64)
    points = (G.face_box_centre + (torch.rand(1, 400, 3) * 2 - 1) * G.face_box_half).expand(2, -1, -1)
    with torch.no_grad():
        baked = avatar._expression_fn(expression)(points)
        fresh = G.expression_fields_fn(latents.identity.expand(2, -1), expression,
                                       body_shape=body_shape.expand(2, -1))(points)
    assert baked[..., :3].abs().max() > 1e-3
    assert torch.allclose(baked, fresh, atol=1e-5)


def test_follow_3dmm_needs_a_grid():
    with pytest.raises(ValueError, match="follow_3dmm"):
        Generator(generator_config("tiny", expression={"follow_3dmm": True}, render={"expression_grid": 0}))
