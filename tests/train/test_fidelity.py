"""train.fidelity: the expression-vs-3DMM and clothing-colour measures of the model card."""

from __future__ import annotations

import math

import numpy as np
import torch

from portrait_core.face import EXPRESSION_NAMES
from portrait_core.generator import Generator, generator_config
from train.fidelity import expression_fidelity, slope_and_correlation


def _labels(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 80, generator=g) * 0.5, torch.randn(n, 10, generator=g) * 0.3


def test_a_generator_without_expression_reaches_nothing_and_misses_by_the_whole_motion():
    torch.manual_seed(0)
    G = Generator(generator_config("tiny")).eval()  # the expression head starts at zero
    identity, body_shape = _labels()
    res = expression_fidelity(G, identity, body_shape, vertices=50)
    for name in ("jaw_open", "smile"):
        r = res[name]
        assert r["target_mm"] > 1.0  # the 3DMM moves these vertices by millimetres
        assert r["reached_mm"] == 0.0 and r["ratio"] == 0.0
        assert math.isclose(r["error_mm"], r["target_mm"], rel_tol=1e-6)


def test_the_3dmm_deformation_itself_scores_a_ratio_of_one():
    """A deformation that is the 3DMM's (looked up at the nearest expressive vertex) reaches 100 % with no
    error; half of it reaches 50 %."""
    torch.manual_seed(0)
    G = Generator(generator_config("tiny")).eval()
    identity, body_shape = _labels(seed=1)
    T = G.body.face_transform(body_shape)

    def exact(scale):
        def offsets_fn(identity, expression, baked=None, body_shape=None):
            verts = G.face.vertices(identity, expression) @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
            target = -(G.face.expression_offsets(identity, expression) @ T[:, :3, :3].transpose(1, 2))

            def field(points):
                nearest = torch.cdist(points, verts).argmin(-1)[..., None].expand(-1, -1, 3)
                return scale * target.gather(1, nearest)

            return field
        return offsets_fn

    G.expression_offsets_fn = exact(1.0)
    res = expression_fidelity(G, identity, body_shape, controls=("smile",), vertices=40)["smile"]
    assert math.isclose(res["ratio"], 1.0, rel_tol=1e-5) and res["error_mm"] < 1e-6
    G.expression_offsets_fn = exact(0.5)
    res = expression_fidelity(G, identity, body_shape, controls=("smile",), vertices=40)["smile"]
    assert math.isclose(res["ratio"], 0.5, rel_tol=1e-5)
    assert math.isclose(res["error_mm"], 0.5 * res["target_mm"], rel_tol=1e-5)
    assert EXPRESSION_NAMES["smile"] == 1


def test_slope_and_correlation():
    x = np.linspace(0.1, 0.9, 20)
    slope, corr = slope_and_correlation(x, 0.6 * x + 0.2)
    assert math.isclose(slope, 0.6) and math.isclose(corr, 1.0)
    slope, corr = slope_and_correlation(x, np.full_like(x, 0.5))
    assert slope == 0.0 and math.isnan(corr)
