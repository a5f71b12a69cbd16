"""The speed-ups of issue 23 equal their plain references: compositing, the fused FiLM-SIREN layer, and the
cheap shape-only generator build behind the checkpoint header check."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait_core.generator import Generator, generator_config
from portrait_core.generator import rendering as R
from portrait_core.generator.checkpoint import CheckpointError, _SkipRandomInit, load_generator, save_generator
from portrait_core.generator.fast_composite import composite_fast, layers_in_depth_order
from portrait_core.generator.networks import film_siren, film_siren_reference


def _layers(seed: int, presorted: bool, rays: int = 64, levels: int = 7, channels: int = 5):
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(2, rays, levels, generator=g) * 2 + 1
    valid = torch.rand(2, rays, levels, generator=g) > 0.3
    if presorted:  # valid layers first, increasing depth: nested shells entered from outside
        depth = depth.sort(-1).values
        valid = valid.sort(-1, descending=True).values
    rgb = torch.rand(2, rays, levels, 3, generator=g)
    alpha = torch.rand(2, rays, levels, generator=g)
    feats = torch.randn(2, rays, levels, channels, generator=g)
    return rgb, alpha, depth, valid, feats


def _assert_same(a: R.Composite, b: R.Composite) -> None:
    for x, y in zip(a, b):
        if x is None:
            assert y is None
        else:
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), presorted=st.booleans(), with_bg_depth=st.booleans())
def test_composite_fast_equals_reference(seed, presorted, with_bg_depth):
    rgb, alpha, depth, valid, feats = _layers(seed, presorted)
    bg_depth = torch.full((2, 1), 9.0) if with_bg_depth else None
    assert layers_in_depth_order(depth, valid) == presorted or not presorted
    with torch.no_grad():
        _assert_same(R.composite(rgb, alpha, depth, valid, 1.0, feats, bg_depth),
                     composite_fast(rgb, alpha, depth, valid, 1.0, feats, bg_depth))


def test_composite_fast_detects_order_and_matches_gradients():
    rgb, alpha, depth, valid, feats = _layers(3, presorted=True)
    assert layers_in_depth_order(depth, valid)
    assert not layers_in_depth_order(depth.flip(-1), valid.flip(-1))
    for presorted in (True, False):
        rgb, alpha, depth, valid, feats = _layers(5, presorted)
        grads = []
        for fn in (R.composite, composite_fast):
            a, c = alpha.clone().requires_grad_(), rgb.clone().requires_grad_()
            out = fn(c, a, depth, valid, 1.0, feats)
            (out.rgb.sum() + out.depth.sum() + out.features.square().sum()).backward()
            grads.append((a.grad, c.grad))
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch,style_batch", [(1, 1), (3, 3), (3, 1)])
def test_film_siren_equals_reference(batch, style_batch):
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 50, 8, generator=g)
    w, b = torch.randn(16, 8, generator=g) * 0.1, torch.randn(16, generator=g) * 0.1
    freq, phase = torch.randn(style_batch, 1, 16, generator=g) * 0.1, torch.randn(style_batch, 1, 16, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(film_siren(x, w, b, freq, phase), film_siren_reference(x, w, b, freq, phase),
                                   rtol=1e-5, atol=2e-5)
    grads = []
    for fn in (film_siren_reference, film_siren):
        ww = w.clone().requires_grad_()
        fn(x, ww, b, freq, phase).sum().backward()
        grads.append(ww.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-3)  # sums of 150 points x freq ~30


def test_shape_only_build_matches_the_real_generator():
    cfg = generator_config("tiny")
    with torch.device("meta"), _SkipRandomInit():
        meta = Generator(cfg)
    assert meta.body is None  # no synthetic body built for a shape check
    real = Generator(cfg)
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}


def test_bad_shape_refused_before_any_tensor_is_read(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    path = tmp_path / "g.safetensors"
    save_generator(path, Generator(generator_config("tiny")), info={})
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    key = next(k for k in tensors if k.endswith("weight"))
    tensors[key] = torch.zeros(*tensors[key].shape[:-1], tensors[key].shape[-1] + 1)
    save_file(tensors, str(path), metadata=metadata)

    import safetensors.torch

    def no_read(*args, **kwargs):
        raise AssertionError("tensors were read before the header check refused the file")

    monkeypatch.setattr(safetensors.torch, "load_file", no_read)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_generator(path)
