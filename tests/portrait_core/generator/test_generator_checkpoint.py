"""Generator checkpoints: one .safetensors file, strict, clear errors, never unpickled."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from portrait_core.generator import (
    CheckpointError,
    Generator,
    Latents,
    generator_config,
    load_generator,
    save_generator,
)
from portrait_core.geometry.camera import Camera

from .conftest import randomise_zero_inits


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(4)
    g = Generator(generator_config("tiny", render={"mode": "360"})).eval()
    randomise_zero_inits(g)
    path = tmp_path_factory.mktemp("ckpt") / "g.safetensors"
    save_generator(path, g, info={"step": 12, "note": "test"})
    return g, path


def _render(g):
    return g.make_avatar(Latents.sample(1, seed=2)).render(torch.zeros(1, 6, 3), torch.zeros(1, 64),
                                                            Camera.portrait(yaw=4.0)).image


def test_round_trip_restores_config_tensors_and_images(saved):
    g, path = saved
    loaded = load_generator(path)
    assert loaded.cfg == g.cfg and loaded.cfg.render.mode == "360"
    assert loaded.checkpoint_info == {"step": 12, "note": "test"}
    for key, value in g.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert torch.equal(_render(g), _render(loaded))
    assert not loaded.training
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "busto-generator" and meta["format_version"] == "1"
    assert json.loads(meta["config"])["name"] == "tiny"
    assert [p.name for p in path.parent.iterdir()] == ["g.safetensors"]  # no temporary files left behind


def test_a_random_init_model_is_a_valid_checkpoint(tmp_path):
    g = Generator(generator_config("tiny"))
    save_generator(tmp_path / "r.safetensors", g)
    assert load_generator(tmp_path / "r.safetensors").checkpoint_info == {}


def test_weights_on_appearance_dims_a_model_never_saw_are_zeroed_on_load(tmp_path, saved):
    g, _ = saved
    path = tmp_path / "narrow.safetensors"
    save_generator(path, g, info={"noise_latent": {"kind": "appearance_code", "used_dims": 22}})
    loaded = load_generator(path)
    first = g.cfg.identity_dim
    assert loaded.radiance_mapping.net[0].weight[:, first + 22:].abs().sum() == 0
    assert g.radiance_mapping.net[0].weight[:, first + 22:].abs().sum() > 0  # random: never trained
    narrow = Latents.sample(1, seed=2)
    narrow.noise[:, 22:] = 0
    wide = Latents(narrow.identity, narrow.noise.clone())
    wide.noise[:, 22:36] = torch.randn(1, 14)
    cam = Camera.portrait(yaw=4.0)
    image = lambda G, lat: G.make_avatar(lat).render(torch.zeros(1, 6, 3), torch.zeros(1, 64), cam).image  # noqa: E731
    assert torch.equal(image(loaded, narrow), image(g, narrow))  # exact for the codes it was trained on
    assert torch.equal(image(loaded, wide), image(g, narrow))  # wider codes render as those
    assert not torch.equal(image(g, wide), image(g, narrow))  # (unzeroed, they would not)
    for bad in (-1, 81, "22", True):
        save_generator(path, g, info={"noise_latent": {"kind": "appearance_code", "used_dims": bad}})
        with pytest.raises(CheckpointError, match=r"narrow.safetensors: info.noise_latent.used_dims must be"):
            load_generator(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: no such checkpoint file"):
        load_generator(tmp_path / "nope.safetensors")


def test_corrupt_bytes(tmp_path, saved):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="bad.safetensors: not a readable .safetensors file"):
        load_generator(bad)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(saved[1].read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_generator(truncated)


def _rewrite(src, dst, tensors=None, **meta_changes):
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update(meta_changes)
    save_file(load_file(str(src)) if tensors is None else tensors, str(dst), metadata=meta)


def test_wrong_format_tag_and_unsupported_version(tmp_path, saved):
    _rewrite(saved[1], tmp_path / "other.safetensors", format="somebody-else")
    with pytest.raises(CheckpointError, match="'format' is 'somebody-else', expected 'busto-generator'"):
        load_generator(tmp_path / "other.safetensors")
    _rewrite(saved[1], tmp_path / "v9.safetensors", format_version="9")
    with pytest.raises(CheckpointError, match="unsupported format_version '9'"):
        load_generator(tmp_path / "v9.safetensors")
    _rewrite(saved[1], tmp_path / "cfg.safetensors", config='{"render": {"colour": 1}}')
    with pytest.raises(CheckpointError, match="invalid generator config"):
        load_generator(tmp_path / "cfg.safetensors")


def test_tensors_that_do_not_match_the_config(tmp_path, saved):
    tensors = load_file(str(saved[1]))
    missing = dict(tensors)
    del missing["radiance.trunk.0.linear.weight"]
    _rewrite(saved[1], tmp_path / "missing.safetensors", missing)
    with pytest.raises(CheckpointError, match=r"missing.safetensors: .*missing keys \['radiance.trunk.0.linear.weight'\]"):
        load_generator(tmp_path / "missing.safetensors")
    extra = dict(tensors, **{"mystery.weight": torch.zeros(2)})
    _rewrite(saved[1], tmp_path / "extra.safetensors", extra)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['mystery.weight'\]"):
        load_generator(tmp_path / "extra.safetensors")
    shaped = dict(tensors, **{"manifold.mlp.0.weight": torch.zeros(5, 3)})
    _rewrite(saved[1], tmp_path / "shape.safetensors", shaped)
    with pytest.raises(CheckpointError, match=r"tensor 'manifold.mlp.0.weight' has shape \[5, 3\]"):
        load_generator(tmp_path / "shape.safetensors")
    # a checkpoint of another preset does not load under this one's config
    other = Generator(generator_config("small"))
    _rewrite(saved[1], tmp_path / "small.safetensors", {k: v.contiguous() for k, v in other.state_dict().items()})
    with pytest.raises(CheckpointError, match="small.safetensors"):
        load_generator(tmp_path / "small.safetensors")


def test_training_checkpoint_folders_resolve_to_their_generator(tmp_path, saved):
    run = tmp_path / "run"
    for step in ("step-00000002", "step-00000004"):
        (run / "checkpoints" / step).mkdir(parents=True)
        (run / "checkpoints" / step / "generator.safetensors").write_bytes(saved[1].read_bytes())
    (run / "checkpoints" / "latest").write_text("step-00000002\n")
    assert load_generator(run).cfg == saved[0].cfg  # run folder -> latest pointer
    assert load_generator(run / "checkpoints" / "step-00000004").cfg == saved[0].cfg
    (run / "checkpoints" / "latest").unlink()
    from portrait_core.generator.checkpoint import resolve_generator_file

    assert resolve_generator_file(run).parent.name == "step-00000004"  # newest step without a pointer
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: folder holds no generator checkpoint"):
        load_generator(tmp_path / "empty")


def test_transfer_weights_adds_the_modulated_colour_head_without_changing_images(tmp_path):
    from portrait_core import conventions as C
    from portrait_core.generator import Controls, Generator, Latents, generator_config
    from portrait_core.generator.checkpoint import transfer_weights

    torch.manual_seed(0)
    old = Generator(generator_config("tiny")).eval()
    new = Generator(generator_config(old.cfg, radiance={"modulated_colour": True}, manifold={"levels": 8})).eval()
    fresh = transfer_weights(new, old.state_dict(), "test")
    assert sorted(fresh) == ["radiance.colour_modulation.bias", "radiance.colour_modulation.weight",
                             "radiance.modulated_rgb.bias", "radiance.modulated_rgb.weight"]
    lat = Latents.sample(2, seed=3)
    ctl = Controls(torch.zeros(2, *C.POSE_SHAPE), torch.zeros(2, C.EXPRESSION_DIM), torch.zeros(2, 10))
    cam = Camera.portrait(batch=2)
    same = Generator(generator_config(old.cfg, manifold={"levels": 8})).eval()
    same.load_state_dict(old.state_dict())
    with torch.no_grad():  # the zero-initialised head adds nothing until it trains
        torch.testing.assert_close(new(lat, ctl, cam, resolution=16).image, same(lat, ctl, cam, resolution=16).image)
    # it trains: the image loss reaches the new head
    new.train()
    out = new(lat, ctl, cam, resolution=16)
    out.image.mean().backward()
    assert new.radiance.modulated_rgb.weight.grad.abs().sum() > 0
    # round trip through a checkpoint; the flag is part of the stored config
    save_generator(tmp_path / "m.safetensors", new)
    assert load_generator(tmp_path / "m.safetensors").cfg.radiance.modulated_colour
    with pytest.raises(ValueError, match="do not fit"):
        transfer_weights(Generator(generator_config("small")), old.state_dict(), "small from tiny")


def test_transfer_weights_to_convolutional_textures_keeps_the_deformations_and_replaces_the_radiance():
    from portrait_core.generator import Generator, generator_config
    from portrait_core.generator.checkpoint import RADIANCE_KEYS, transfer_weights

    torch.manual_seed(0)
    old = Generator(generator_config("tiny", expression={"shading": True}))
    new = Generator(generator_config(old.cfg, radiance={"kind": "cnn", "cnn_channels": (16, 16, 8, 8)},
                                     render={"train_radiance": "textures"}))
    with pytest.raises(ValueError, match="weights do not fit the new config: radiance.trunk"):
        transfer_weights(new, old.state_dict(), "test")
    fresh = transfer_weights(new, old.state_dict(), "test", RADIANCE_KEYS)
    assert fresh and all(k.startswith(RADIANCE_KEYS) for k in fresh)
    for name in ("expression_deform.head.weight", "manifold.mlp.0.weight", "superres.conv_first.weight"):
        assert torch.equal(new.state_dict()[name], old.state_dict()[name])


def test_replaced_keys_name_what_a_config_change_rebuilds():
    from portrait_core.generator import generator_config
    from portrait_core.generator.checkpoint import EXPRESSION_KEYS, MANIFOLD_KEYS, RADIANCE_KEYS, replaced_keys

    old = generator_config("tiny")
    assert replaced_keys(old, generator_config(old, manifold={"levels": 8})) == ()  # SIREN: levels keep shapes
    assert replaced_keys(old, generator_config(old, radiance={"modulated_colour": True})) == ()
    cnn = generator_config(old, radiance={"kind": "cnn", "cnn_channels": (16, 16, 8, 8)},
                           render={"train_radiance": "textures"})
    assert replaced_keys(old, cnn) == RADIANCE_KEYS
    assert replaced_keys(cnn, generator_config(cnn, manifold={"levels": 8})) == RADIANCE_KEYS  # one texture per level
    assert replaced_keys(old, generator_config(old, expression={"width": 32})) == EXPRESSION_KEYS
    assert replaced_keys(old, generator_config(old, render={"mode": "360"})) == MANIFOLD_KEYS


def test_the_shipped_model_fine_tuned_to_360_sees_a_back_view():
    """Regression: the shipped frontal manifold crosses no level from behind; a render.mode change rebuilds it."""
    import math

    from portrait_core.assets import default_checkpoint_path
    from portrait_core.generator import Controls, Generator, Latents, generator_config, load_generator
    from portrait_core.generator.checkpoint import replaced_keys, transfer_weights
    from portrait_core.geometry.camera import Camera

    frontal = load_generator(default_checkpoint_path())
    cfg = generator_config(frontal.cfg, render={"mode": "360"})
    g = Generator(cfg).eval()
    transfer_weights(g, frontal.state_dict(), "test", replaced_keys(frontal.cfg, cfg))
    controls = Controls(torch.zeros(1, 6, 3), torch.zeros(1, 64), torch.zeros(1, 10))
    with torch.no_grad():
        back = g(Latents.sample(1, seed=0), controls, Camera.portrait(yaw=math.pi / 2 + math.pi), resolution=32)
    assert back.aux["valid"].float().mean() > 0.3 and back.alpha.mean() > 0.1
