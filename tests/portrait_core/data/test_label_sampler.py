"""The one label-sampler class and file format: round trip, the formats it still reads (version-1 safetensors such
as the shipped default samplers, the old .npz tables), named errors, and the fixed draw orders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from portrait_core.data.samplers import (
    SAMPLER_FORMAT,
    LabelSampler,
    SamplerError,
    default_samplers_path,
)


def _tables(n: int = 5, m: int = 7, k: int = 3, a: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"identity": torch.randn(n, 80, generator=g), "body_shape": torch.randn(n, 10, generator=g),
            "appearance": torch.rand(a, 80, generator=g), "camera": torch.randn(m, 25, generator=g),
            "pose": torch.randn(m, 6, 3, generator=g) * 0.1, "face_camera": torch.randn(m, 25, generator=g),
            "expression": torch.randn(k, 64, generator=g)}


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), m=st.integers(1, 6), k=st.integers(1, 6), a=st.integers(1, 6),
       drop=st.sets(st.sampled_from(["appearance", "expression", "face_camera", "identity", "camera"])),
       mirror=st.booleans())
def test_round_trip_keeps_every_table_and_setting(tmp_path_factory, n, m, k, a, drop, mirror):
    t = _tables(n, m, k, a)
    if "identity" in drop:
        drop |= {"body_shape"}
    if "camera" in drop:
        drop |= {"pose", "face_camera"}
    t = {key: v for key, v in t.items() if key not in drop}
    s = LabelSampler(**t, mirror=mirror, expression_mirror=torch.eye(64), gaussian={"yaw_mode": "360"}, source="x")
    path = tmp_path_factory.mktemp("rt") / "s.safetensors"
    s.save(path)
    back = LabelSampler.load(path)
    assert set(back.tables()) == set(t) | {"expression_mirror"}
    for key, v in t.items():
        assert torch.equal(getattr(back, key), v), key
    assert back.mirror == mirror and back.gaussian == {"yaw_mode": "360"} and back.source == "x"
    a1, b1 = s.sample(6, torch.Generator().manual_seed(1)), back.sample(6, torch.Generator().manual_seed(1))
    assert a1.keys() == b1.keys() and all(torch.equal(a1[key], b1[key]) for key in a1)


def test_save_is_atomic_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "s.safetensors"
    LabelSampler(**_tables()).save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def test_reads_version_1_files_like_the_shipped_default(tmp_path):
    t = {k: v for k, v in _tables(a=5).items() if k != "face_camera"}
    t["appearance"] = t["appearance"][:5]
    path = tmp_path / "v1.safetensors"
    save_file({k: v.contiguous() for k, v in t.items()}, str(path),
              metadata={"format": SAMPLER_FORMAT, "format_version": "1"})
    s = LabelSampler.load(path)
    assert all(torch.equal(getattr(s, k), v) for k, v in t.items()) and not s.mirror
    # a version-1 file holds all six tables
    del t["expression"]
    save_file({k: v.contiguous() for k, v in t.items()}, str(path),
              metadata={"format": SAMPLER_FORMAT, "format_version": "1"})
    with pytest.raises(SamplerError, match="missing tensor 'expression'"):
        LabelSampler.load(path)


def test_shipped_default_samplers_load_and_draw_as_before():
    """The shipped file (version 1) loads unchanged; a seed's identity is drawn as the old DefaultSamplers did:
    one identity row, then one appearance row, from a generator seeded with the seed."""
    if not default_samplers_path().is_file():
        pytest.skip("no shipped samplers in this checkout")
    s = LabelSampler.load()
    assert s.identity.shape[1:] == (80,) and s.appearance.shape[0] == s.identity.shape[0]
    lat, betas = s.identities(1, seed=7)
    g = torch.Generator().manual_seed(7)
    i = torch.randint(s.identity.shape[0], (1,), generator=g)
    j = torch.randint(s.appearance.shape[0], (1,), generator=g)
    assert torch.equal(lat.identity, s.identity[i]) and torch.equal(lat.noise, s.appearance[j])
    assert torch.equal(betas, s.body_shape[i])


def test_reads_the_old_npz_tables(tmp_path):
    t = _tables()
    cp = torch.cat([t["camera"], t["pose"].reshape(-1, 18)], 1).numpy()
    ids = torch.cat([t["identity"], t["body_shape"]], 1).numpy().astype(np.float16)
    meta = {"format": "busto-label-sampler", "version": 1, "mirror": True, "gaussian": {}, "source": "old"}
    np.savez_compressed(tmp_path / "old.npz", camera_pose=cp, identity_shape=ids,
                        expression=t["expression"].numpy().astype(np.float16),
                        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    s = LabelSampler.load(tmp_path / "old.npz")
    assert torch.equal(s.camera, t["camera"]) and torch.allclose(s.pose, t["pose"])
    assert torch.allclose(s.identity, t["identity"], atol=2e-2) and s.body_shape.shape == (5, 10)
    assert s.mirror and s.source == "old" and s.appearance is None
    s.save(tmp_path / "new.safetensors")  # converts to the one format
    assert torch.equal(LabelSampler.load(tmp_path / "new.safetensors").camera, s.camera)


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b"not a file"), "not a readable .safetensors"),
    (lambda p: save_file({"identity": torch.zeros(2, 80)}, str(p), metadata={"format": "other"}), "format 'other'"),
    (lambda p: save_file({"identity": torch.zeros(2, 79), "body_shape": torch.zeros(2, 10)}, str(p),
                         metadata={"format": SAMPLER_FORMAT, "format_version": "2"}), r"'identity' has shape \[2, 79\]"),
    (lambda p: save_file({"camera": torch.zeros(2, 25), "pose": torch.zeros(3, 6, 3)}, str(p),
                         metadata={"format": SAMPLER_FORMAT, "format_version": "2"}), "same number of rows"),
    (lambda p: save_file({"pose": torch.zeros(3, 6, 3)}, str(p),
                         metadata={"format": SAMPLER_FORMAT, "format_version": "2"}), "drawn jointly with 'camera'"),
    (lambda p: save_file({"expression": torch.full((2, 64), float("nan"))}, str(p),
                         metadata={"format": SAMPLER_FORMAT, "format_version": "2"}), "NaN or inf"),
    (lambda p: save_file({"weights": torch.zeros(2)}, str(p),
                         metadata={"format": SAMPLER_FORMAT, "format_version": "2"}), "unknown tensor 'weights'"),
    (lambda p: save_file({"expression": torch.zeros(2, 64)}, str(p),
                         metadata={"format": SAMPLER_FORMAT, "format_version": "2", "settings": "[1]"}), "settings"),
    (lambda p: np.savez(p, camera_pose=np.zeros((2, 43))), "meta"),
])
def test_bad_files_give_one_error_naming_the_file(tmp_path, make, match):
    path = tmp_path / ("bad.npz" if match == "meta" else "bad.safetensors")
    make(path)
    with pytest.raises(SamplerError, match=match) as e:
        LabelSampler.load(path)
    assert str(path) in str(e.value)
    with pytest.raises(SamplerError, match="no such sampler file"):
        LabelSampler.load(tmp_path / "missing.safetensors")


def test_fake_inputs_draw_exactly_as_the_training_table_did():
    """The adversarial run's fake-input stream (its generator state is saved with the run) is unchanged by the
    move into LabelSampler: a reference copy of the former ``train.data.sample_fake_inputs``."""
    from train.networks import mirror_label25, mirror_pose

    t = _tables(n=9, m=9, k=9)
    s = LabelSampler(**t)
    for mirror, with_noise in ((False, False), (True, False), (True, True)):
        s.appearance = t["appearance"] if with_noise else None
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        got = s.fake_inputs(16, g1, mirror)
        n, batch = 9, 16
        i_cam, i_id, i_exp = (torch.randint(n, (batch,), generator=g2) for _ in range(3))
        noise = t["appearance"][torch.randint(4, (batch,), generator=g2)] if with_noise else \
            torch.randn(batch, 80, generator=g2)
        flip = torch.rand(batch, generator=g2) < 0.5
        cam, pose = t["camera"][i_cam], t["pose"][i_cam]
        if mirror:
            cam = torch.where(flip[:, None], mirror_label25(cam), cam)
            pose = torch.where(flip[:, None, None], mirror_pose(pose), pose)
        want = {"identity": t["identity"][i_id], "noise": noise, "expression": t["expression"][i_exp],
                "body_shape": t["body_shape"][i_id], "pose": pose, "camera": cam}
        assert all(torch.equal(got[k], want[k]) for k in want), (mirror, with_noise)
        assert torch.equal(g1.get_state(), g2.get_state())


def test_train_label_table_is_the_sampler():
    from train.data import LabelTable, sample_fake_inputs

    assert LabelTable is LabelSampler
    s = LabelSampler(**_tables(n=4, m=4, k=4))
    s.noise = None  # the training code's name for the appearance table
    assert s.appearance is None and len(s) == 4
    inp = sample_fake_inputs(s, 3, torch.Generator().manual_seed(0), mirror=False)
    assert inp.noise.shape == (3, 80) and inp.camera.shape == (3, 25)
