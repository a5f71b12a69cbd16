"""Configs, overrides, losses and schedules (pure functions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from train import losses as L
from train import schedules as S
from train.config import PRESETS, ConfigError, from_dict, parse_overrides, preset, to_dict
from train.networks import Discriminator, PoseBranch, is_left_camera, mirror_label25, mirror_pose


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_validate_and_round_trip(name):
    cfg = preset(name)
    if cfg.stage == 1:
        cfg.validate()
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_overrides_are_typed_and_unknown_keys_fail():
    cfg = parse_overrides(preset("tiny"), ["optim.batch=8", "loss.face=0.25", "pose.enabled=true", "run.name=x"])
    assert cfg.optim.batch == 8 and cfg.loss.face == 0.25 and cfg.pose.enabled is True and cfg.run.name == "x"
    with pytest.raises(ConfigError, match="did you mean optim.batch"):
        parse_overrides(cfg, ["optim.bach=3"])
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_overrides(cfg, ["optim.batch=two"])
    with pytest.raises(ConfigError, match="is a group"):
        parse_overrides(cfg, ["optim=3"])
    with pytest.raises(ConfigError, match="unknown preset 'tiyn'"):
        preset("tiyn")
    with pytest.raises(ConfigError, match="multiple of the world size"):
        parse_overrides(preset("tiny"), ["optim.batch=3"]).validate(world_size=2)
    with pytest.raises(ConfigError, match="stage 2 needs model.init_from"):
        parse_overrides(preset("tiny"), ["stage=2"]).validate()


def test_dry_run_prints_per_gpu_and_global_batch():
    r = subprocess.run([sys.executable, "-m", "train", "synth128", "optim.batch=16", "--dry-run"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["optim"]["batch_global"] == 16 and d["optim"]["batch_per_gpu"] == 16 and d["world_size"] == 1
    r = subprocess.run([sys.executable, "-m", "train", "nope"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown preset" in r.stderr


def test_adversarial_losses_and_r1():
    real, fake = torch.tensor([3.0, 2.0]), torch.tensor([-3.0, -2.0])
    assert L.d_logistic(real, fake) < L.d_logistic(fake, real)
    assert torch.isclose(L.g_nonsaturating(torch.zeros(4)), torch.tensor(math.log(2.0)))
    # R1 of a linear critic w.x is |w|^2 for every sample
    w = torch.tensor([1.0, -2.0, 0.5])
    x = torch.randn(5, 3, requires_grad=True)
    assert torch.isclose(L.r1_penalty(x @ w, x), w.square().sum())


def test_regularisers():
    d = torch.randn(2, 10, 3)
    assert L.smoothness(d, d, 0.01) == 0 and L.smoothness(d, d + 0.01, 0.01) > 0
    assert torch.isclose(L.minimal_deformation(torch.ones(1, 4, 3)), torch.tensor(3.0))
    assert L.imitation(d, d) == 0
    hr = torch.rand(2, 4, 8, 8)
    assert L.cross_resolution_consistency(hr, L.downsample_to(hr, (4, 4))) < 1e-12
    assert L.lower_strip(torch.zeros(1, 3, 32, 32), 0.25).shape[-2:] == (8, 32)
    assert L.all_finite({"a": torch.tensor(1.0), "b": torch.tensor(float("nan"))}) == "b"
    v = torch.zeros(1, 12, 4, 4, 4)
    assert L.grid_smoothness(v) == 0 and L.grid_smoothness(torch.randn(1, 12, 4, 4, 4)) > 0


def test_camera_target_is_continuous_over_the_full_yaw_circle():
    yaw = torch.tensor([math.pi - 1e-4, -math.pi + 1e-4])
    t = L.camera_target(torch.full((2,), math.pi / 2), yaw)
    assert (t[0] - t[1]).abs().max() < 1e-3


def test_schedules():
    w = [S.pose_prior_weight(s, 1000, 0.5, 200, 200) for s in (0, 200, 300, 400, 500)]
    assert w == [0.5, 0.5, 0.25, 0.0, 0.0]
    assert S.ema_beta(0, 32, 10, 0.05) == 0.0  # ramp-up: no averaging at step 0
    b = S.ema_beta(10**6, 32, 10, 0.05)
    assert math.isclose(b ** (10_000 / 32), 0.5, rel_tol=1e-9)
    assert S.r1_due(0, 4) and not S.r1_due(1, 4) and S.r1_due(8, 4)
    assert S.every(10, 5) and not S.every(0, 5) and not S.every(3, 0)


def test_mirroring_is_an_involution_and_symmetric_nets_are_equivariant():
    pose = torch.randn(3, 6, 3)
    assert torch.equal(mirror_pose(mirror_pose(pose)), pose)
    from portrait_core.geometry.camera import Camera

    cam = Camera.portrait(torch.tensor([0.3, 1.5, 2.9]), torch.full((3,), 1.5))
    assert torch.allclose(mirror_label25(cam.to_label25()), cam.mirror().to_label25())
    lab = cam.to_label25()
    torch.manual_seed(0)
    pb = PoseBranch(160, symmetric=True)
    torch.nn.init.normal_(pb.net[-1].weight, std=0.1)
    z = torch.randn(3, 160)
    # the branch sees the mirrored camera for 'left' cameras, so mirroring the camera mirrors the prediction
    p, pm = pb(z, lab), pb(z, mirror_label25(lab))
    assert torch.allclose(mirror_pose(p), pm, atol=1e-6)
    D = Discriminator(16, 16, 256, 16, symmetric=True)
    img = torch.randn(3, 3, 16, 16)
    a, b = D(img, lab), D(img.flip(-1), mirror_label25(lab))
    assert torch.allclose(a.logit, b.logit, atol=1e-5)
    assert torch.allclose(mirror_pose(a.pose), b.pose, atol=1e-5)
    assert is_left_camera(lab).tolist() == [True, True, False]
