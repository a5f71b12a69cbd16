"""Fixtures for the generator tests: tiny-preset generators (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_generator():
    from portrait_core.generator import Generator, generator_config

    torch.manual_seed(0)
    return Generator(generator_config("tiny")).eval()


@pytest.fixture(scope="session")
def tiny_generator_360():
    from portrait_core.generator import Generator, generator_config

    torch.manual_seed(1)
    return Generator(generator_config("tiny", render={"mode": "360"})).eval()


def randomise_zero_inits(generator, seed: int = 0) -> None:
    """Give the zero-initialised layers (manifold residual, expression head and shading head) random weights so
    tests exercise non-trivial fields."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        last = generator.manifold.mlp[-1]
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.02)
        head = generator.expression_deform.head
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.01)
        head.bias.copy_(torch.randn(head.bias.shape, generator=g) * 0.01)
        shading = generator.expression_deform.shading_head
        if shading is not None:
            shading.weight.copy_(torch.randn(shading.weight.shape, generator=g) * 0.5)
