"""Sizes declared in a checkpoint's metadata are checked before anything is allocated (issue 19, item 6):
SIZE_LIMITS and field types in the config, then the safetensors header's tensor names and shapes against the
network the config describes (built on the meta device); errors are CheckpointErrors naming the file and key."""

from __future__ import annotations

import json
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file as real_load_file

from portrait_core.generator import Generator, generator_config, load_generator, save_generator
from portrait_core.generator.checkpoint import CheckpointError
from portrait_core.generator.config import (
    PRESETS,
    SIZE_LIMITS,
    config_from_dict,
    config_to_dict,
)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_generator(path, Generator(generator_config("tiny")))
    return path


def _with_config(src, dst, edit) -> dict:
    """Copy checkpoint ``src`` to ``dst`` with its metadata config changed by ``edit(dict)``; returns the config."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    edit(cfg)
    meta["config"] = json.dumps(cfg)
    save_file(real_load_file(str(src)), str(dst), metadata=meta)
    return cfg


def _set(path: str, value):
    def edit(cfg):
        *parents, last = path.split(".")
        d = cfg
        for p in parents:
            d = d[p]
        d[last] = value
    return edit


@pytest.fixture()
def no_tensor_load(monkeypatch):
    """Fail the test if the loader reads the tensors (i.e. allocates) before rejecting the file."""
    import safetensors.torch

    def forbidden(*a, **k):
        raise AssertionError("tensors were loaded before the header/config check")

    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)


@pytest.mark.parametrize("key, value, says", [
    ("radiance.width", 200000, "radiance.width must be in [1, 4096], got 200000"),
    ("render.manifold_grid", 3000, "render.manifold_grid must be in [0, 256], got 3000"),
    ("render.prior_grid", 10**6, "render.prior_grid"),
    ("superres.up_channels", [8] * 40, "superres.up_channels.count"),
    ("radiance.mapping.hidden", -5, "radiance.mapping.hidden"),
    ("radiance.width", 2.5, "config.radiance.width: expected a int"),
    ("radiance.width", True, "config.radiance.width: expected a int"),
    ("radiance.width", "32", "config.radiance.width"),
    ("render.alpha_delta", 1e400, "config.render.alpha_delta: expected a finite number"),
    ("manifold.centre", [0.0, 1.0], "config.manifold.centre: expected 3 numbers"),
    ("render", [], "config.render: expected an object"),
])
def test_oversized_or_mistyped_metadata_is_rejected_before_allocation(tiny_file, tmp_path, no_tensor_load, key,
                                                                      value, says):
    bad = tmp_path / "bad.safetensors"
    _with_config(tiny_file, bad, _set(key, value))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        load_generator(bad)
    assert str(bad) in str(e.value) and says in str(e.value), str(e.value)
    assert time.perf_counter() - t0 < 20


def test_header_shapes_must_match_the_config_before_the_tensors_are_read(tiny_file, tmp_path, no_tensor_load):
    bad = tmp_path / "wider.safetensors"
    _with_config(tiny_file, bad, _set("radiance.width", 64))  # within limits, but the tensors are width 32
    with pytest.raises(CheckpointError, match=r"tensor '.*radiance.*' has shape") as e:
        load_generator(bad)
    assert str(bad) in str(e.value)
    deeper = tmp_path / "deeper.safetensors"
    _with_config(tiny_file, deeper, _set("radiance.depth", 4))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_generator(deeper)


def test_the_unchanged_checkpoint_still_loads(tiny_file):
    g = load_generator(tiny_file)
    assert g.cfg.radiance.width == 32


def test_presets_lie_inside_the_limits():
    for name in PRESETS:
        generator_config(name)  # validation would raise
    with pytest.raises(ValueError, match="render.manifold_grid"):
        generator_config("tiny", render={"manifold_grid": 3000})
    assert SIZE_LIMITS["radiance.width"][1] >= generator_config("paper").radiance.width


# ------------------------------------------------------------------------------------------ property-based
_TINY = config_to_dict(generator_config("tiny"))


def _paths(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _paths(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


_PATHS = sorted(_paths(_TINY))
_values = (st.integers(-10, 300) | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.booleans()
           | st.none() | st.text(max_size=4) | st.lists(st.integers(-4, 64) | st.floats(-1, 1), max_size=5)
           | st.sampled_from(["frontal", "360", "siren", "cnn", "direct", "grid", "textures"]))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(_PATHS), _values), min_size=1, max_size=3))
def test_random_config_dicts_validate_or_raise_and_valid_ones_build(edits):
    """Any metadata config either raises ValueError (CheckpointError in the loader) or builds (meta device)."""
    cfg = json.loads(json.dumps(_TINY))
    for path, value in edits:
        _set(path, value)(cfg)
    try:
        gc = config_from_dict(cfg)
    except ValueError as e:
        assert str(e)
        return
    with torch.device("meta"):
        g = Generator(gc)
    assert sum(p.numel() for p in g.state_dict().values()) > 0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(_PATHS), _values), min_size=1, max_size=2))
def test_random_checkpoint_metadata_loads_or_raises_checkpoint_error(tiny_file, tmp_path_factory, edits):
    dst = tmp_path_factory.mktemp("fuzz") / "g.safetensors"
    _with_config(tiny_file, dst, lambda cfg: [_set(p, v)(cfg) for p, v in edits])
    try:
        g = load_generator(dst)
    except CheckpointError as e:
        assert str(dst) in str(e)
        return
    assert isinstance(g, Generator)
