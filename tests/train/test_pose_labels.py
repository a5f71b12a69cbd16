"""Coarse pose labels (``data.pose_label_noise``) and the pose self-learning evaluation (``--metrics pose``)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from portrait_core.data.mirror import mirror_pose
from tests.train.conftest import tiny_cfg
from train.config import ConfigError
from train.data import CoarsePoseDataset, coarse_pose, open_dataset
from train.evaluate import pose_angular_error
from train.loop import prepare, train


def _true_pose(root) -> torch.Tensor:
    ds = open_dataset(root, 32, 32, False)
    return torch.from_numpy(np.asarray(ds.labels("pose"), dtype=np.float32)).reshape(-1, 6, 3)


def _per_joint_degrees(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) of R_a^T R_b per record and joint [N, 6]."""
    from portrait_core.geometry.rotations import axis_angle_to_matrix

    rel = axis_angle_to_matrix(a.double()).transpose(-1, -2) @ axis_angle_to_matrix(b.double())
    return torch.rad2deg(torch.acos(((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)))


def test_coarse_pose_rotates_neck_and_head_by_the_given_angle_per_record():
    g = torch.Generator().manual_seed(3)
    pose = torch.randn(20, 6, 3, generator=g) * 0.3
    coarse = coarse_pose(pose, 12.0, seed=5)
    ang = _per_joint_degrees(coarse, pose)
    assert torch.allclose(ang[:, [0, 3]], torch.full((20, 2), 12.0, dtype=torch.float64), atol=1e-3)
    assert torch.equal(coarse[:, [1, 2, 4, 5]], pose[:, [1, 2, 4, 5]])  # collars and shoulders keep their labels
    # deterministic, and a record's noise depends on its index and the seed only
    assert torch.equal(coarse_pose(pose, 12.0, seed=5), coarse)
    other = pose.clone()
    other[7] = 0.0
    changed = coarse_pose(other, 12.0, seed=5)
    keep = [i for i in range(20) if i != 7]
    assert torch.equal(changed[keep], coarse[keep])
    assert not torch.allclose(coarse_pose(pose, 12.0, seed=6), coarse)  # another seed, other axes
    axes = (coarse[:, 3] - pose[:, 3])
    assert axes.std(0).min() > 0  # the axes vary between records (not one shared offset)
    assert torch.equal(coarse_pose(pose, 0.0), pose)


def test_coarse_pose_dataset_items_and_tables(dataset_root, dataset_reader):
    ds = open_dataset(dataset_root, 32, 32, True)
    n = len(ds.records)
    coarse = CoarsePoseDataset(ds, 10.0, seed=1)
    true = _true_pose(dataset_root)
    assert np.array_equal(coarse.true_pose, true.numpy())
    table = torch.from_numpy(coarse.labels("pose"))
    assert torch.allclose(_per_joint_degrees(table, true)[:, [0, 3]].float(), torch.full((n, 2), 10.0), atol=1e-2)
    assert np.array_equal(coarse.labels("camera"), ds.labels("camera"))
    a, m = coarse[4], coarse[4 + n]  # record 4 and its mirrored copy
    assert torch.equal(a["true_pose"], true[4]) and torch.allclose(a["pose"], table[4])
    assert torch.equal(a["image"], ds[4]["image"])
    assert torch.allclose(m["pose"], torch.from_numpy(mirror_pose(table[4].numpy())), atol=1e-6)
    assert torch.allclose(m["true_pose"], torch.from_numpy(mirror_pose(true[4].numpy())), atol=1e-6)
    assert len(coarse) == len(ds) and coarse.records is ds.records


def test_training_sees_the_coarse_labels(dataset_root, face_recon_ckpt, tmp_path, dataset_reader):
    cfg = tiny_cfg(dataset_root, tmp_path, face_recon_ckpt, steps=1)
    cfg = replace(cfg, data=replace(cfg.data, pose_label_noise=15.0, pose_label_noise_seed=2))
    st, ctx = prepare(cfg)
    true = _true_pose(dataset_root)
    # the fake-input tables (and so the pose prior's targets) hold the coarse labels ...
    ang = _per_joint_degrees(ctx.table.pose, true)
    assert torch.allclose(ang[:, [0, 3]].float(), torch.full((len(true), 2), 15.0), atol=1e-2)
    assert torch.equal(ctx.table.pose, coarse_pose(true, 15.0, seed=2))
    # ... and so do the real batches (D's pose regression), with the true labels beside them
    batch = ctx.stream.next()
    err = _per_joint_degrees(batch["pose"], batch["true_pose"])
    assert torch.allclose(err[:, [0, 3]].float(), torch.full((len(err), 2), 15.0), atol=1e-2)
    ctx.logger.close()
    with pytest.raises(ConfigError, match="pose_label_noise"):
        replace(cfg, data=replace(cfg.data, pose_label_noise=-1.0)).validate()


def _run(dataset_root, face_recon_ckpt, out, enabled: bool):
    cfg = tiny_cfg(dataset_root, out, face_recon_ckpt, steps=2, ckpt_every=2, image_every=0, eval_images=0)
    cfg = replace(cfg, data=replace(cfg.data, pose_label_noise=9.0),
                  pose=replace(cfg.pose, enabled=enabled, full_yaw=enabled, prior_hold_kimg=0.0,
                               prior_decay_kimg=0.001))
    assert train(cfg) == 0
    return next(out.iterdir())


def test_pose_metric_with_and_without_self_learning(dataset_root, face_recon_ckpt, tmp_path, dataset_reader):
    from train import checkpoint as ck
    from train.config import from_dict
    from train.evaluate import evaluate, main
    from train.gen import load_generator
    from train.networks import PoseBranch

    true = _true_pose(dataset_root)
    canonical = true.clone()
    canonical[:, [0, 3]] = 0
    kw = dict(metrics=("pose",), log=lambda *_: None)
    reports = {}
    for enabled in (False, True):
        run = _run(dataset_root, face_recon_ckpt, tmp_path / f"pose-{enabled}", enabled)
        m = evaluate(run, **kw)["metrics"]
        assert m == evaluate(run, **kw)["metrics"]  # deterministic
        assert m["pose_records"] == len(true) and m["pose_label_noise_deg"] == 9.0
        assert m["pose_error_labels"]["neck"] == pytest.approx(9.0, abs=1e-2)
        assert m["pose_error_labels"]["head"] == pytest.approx(9.0, abs=1e-2)
        assert m["pose_error_labels"]["shoulders"] == pytest.approx(0.0, abs=1e-3)
        assert m["pose_error_canonical"] == pytest.approx(pose_angular_error(canonical, true))
        assert all(0 <= v <= 180 for v in m["pose_error_d_real"].values())
        assert m["pose_magnitude"]["true"] == pytest.approx(pose_angular_error(true, torch.zeros_like(true)))
        assert m["pose_magnitude"]["labels"]["head"] > m["pose_magnitude"]["true"]["head"]  # noise inflates
        reports[enabled] = m
        if enabled:  # the EMA pose branch of the checkpoint, with the record's identity and camera
            gen = ck.resolve(run) / ck.GENERATOR_FILE
            G = load_generator(gen)
            cfg = from_dict(json.loads((run / "config.json").read_text()))
            pb = PoseBranch(G.cfg.identity_dim + G.cfg.noise_dim, cfg.pose.hidden, cfg.pose.max_angle)
            pb.load_state_dict(ck.load_state(ck.resolve(run))["pose_branch_ema"])
            ds = open_dataset(dataset_root, 32, 32, False)
            ident = torch.from_numpy(np.asarray(ds.labels("identity"), dtype=np.float32))
            cam = torch.from_numpy(np.asarray(ds.labels("camera"), dtype=np.float32))
            noise = torch.randn(len(true), G.cfg.noise_dim, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                learned = coarse_pose(true, 9.0)
                learned[:, [0, 3]] = pb(torch.cat([ident, noise], 1), cam)[:, [0, 3]]
            assert m["pose_source"] == "pose branch (EMA)"
            assert m["pose_error"] == pytest.approx(pose_angular_error(learned, true), abs=1e-4)
            assert m["pose_error"]["neck"] != pytest.approx(9.0, abs=0.5)
        else:  # without self-learning the run renders the coarse labels
            assert m["pose_source"] == "labels"
            assert m["pose_error"] == m["pose_error_labels"]
    assert reports[True]["pose_error_d_real"] != reports[False]["pose_error_d_real"]
    assert main([str(next((tmp_path / "pose-True").iterdir())), "--metrics", "pose", "--out",
                 str(tmp_path / "pose.json")]) == 0
    assert "pose_error_d_real" in (tmp_path / "pose.json").read_text()
