"""The avatar's mesh-extraction occupancy over the nested levels (pure function)."""
import torch

from portrait_core.generator.avatar import level_slab_occupancy

LEVELS = torch.linspace(0.25, 0.04, 20)  # outermost first, as the generator orders them
SPACING = float(LEVELS[0] - LEVELS[1])


def hard_occupancy(s: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Every level that encloses the point (s <= l) counts fully: a staircase in s."""
    inside = s[:, None] <= LEVELS[None, :]
    return 1.0 - torch.where(inside, 1.0 - alpha, torch.ones_like(alpha)).prod(-1)


def test_zero_outside_every_level_and_full_inside():
    alpha = torch.full((3, 20), 0.3)
    occ = level_slab_occupancy(torch.tensor([0.5, 0.25 + SPACING, 0.0]), alpha, LEVELS)
    assert occ[0] == 0 and occ[1] == 0
    assert torch.isclose(occ[2], torch.tensor(1 - 0.7 ** 20), atol=1e-5)


def test_equals_the_hard_occupancy_halfway_between_levels():
    s = (LEVELS[:-1] + LEVELS[1:]) / 2
    alpha = torch.rand(s.shape[0], 20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(level_slab_occupancy(s, alpha, LEVELS), hard_occupancy(s, alpha), atol=1e-5)


def test_continuous_and_monotone_inwards_where_the_hard_one_jumps():
    s = torch.linspace(0.3, 0.0, 3001)  # 1e-4 steps, outside to inside
    alpha = torch.full((s.shape[0], 20), 0.4)
    soft, hard = level_slab_occupancy(s, alpha, LEVELS), hard_occupancy(s, alpha)
    assert hard.diff().max() > 0.1  # the staircase: a jump at each level
    assert soft.diff().min() >= -1e-6  # opacity only accumulates inwards
    assert soft.diff().max() < 0.01  # no jump: at most 0.4 spread over a spacing (~110 steps)
    # the 0.5 crossing moves continuously with the texel opacity instead of snapping to a level
    crossings = []
    for a in (0.30, 0.33, 0.36):
        occ = level_slab_occupancy(s, torch.full_like(alpha, a), LEVELS)
        crossings.append(float(s[(occ >= 0.5).nonzero()[0]]))
    assert crossings[0] < crossings[1] < crossings[2]


def test_opaque_level_does_not_overflow():
    occ = level_slab_occupancy(torch.tensor([0.0]), torch.ones(1, 20), LEVELS)
    assert torch.isfinite(occ).all() and 0.99 < float(occ) <= 1.0
