"""Evaluation: finite, deterministic metrics and a JSON report from a (tiny) run folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.train.conftest import tiny_cfg
from train.loop import train


def test_metrics_are_finite_and_deterministic(dataset_root, face_recon_ckpt, tmp_path, dataset_reader):
    from train.evaluate import evaluate, main

    cfg = tiny_cfg(dataset_root, tmp_path, face_recon_ckpt, steps=1, ckpt_every=1, image_every=0, eval_images=0)
    assert train(cfg) == 0
    run = next(tmp_path.iterdir())
    kw = dict(images=8, face_recon=str(face_recon_ckpt), log=lambda *_: None)
    a = evaluate(run, **kw)
    b = evaluate(run, **kw)
    for key in ("fid", "kid", "fid_face", "kid_face", "swd", "reprojection_error", "expression_named_mse",
                "landmark_error_px", "pose_landmark_error_px", "pose_landmark_error_px_if_neutral"):
        assert key in a["metrics"] and math.isfinite(a["metrics"][key]), key
    assert a["metrics"] == b["metrics"]
    assert a["metrics"]["fid_face"] != a["metrics"]["fid"]  # a different image set (face renders vs face crops)
    # the default size follows the data (160 fixture images -> 160), with a warning about small-N FID
    said = []
    size = evaluate(run, metrics=("swd",), log=said.append)["images"]
    assert size == 160 and any("biased upward" in m for m in said)
    said.clear()
    assert evaluate(run, images=500, metrics=("swd",), log=said.append)["images"] == 160
    assert any("500 fakes requested" in m for m in said)
    assert 0 < a["metrics"]["reprojection_coverage"] <= 1
    out = tmp_path / "r.json"
    assert main([str(run), "--images", "8", "--metrics", "swd,consistency", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["metrics"]["swd"] == a["metrics"]["swd"]
    # --consistency-images: more inputs, 8 at a time, pooled over every compared pixel; the first 8 are the default
    assert rep["metrics"]["reprojection_images"] == 8
    assert rep["metrics"]["reprojection_error"] == pytest.approx(a["metrics"]["reprojection_error"], rel=1e-6)
    assert main([str(run), "--images", "16", "--metrics", "consistency", "--consistency-images", "16",
                 "--out", str(out)]) == 0
    wide = json.loads(out.read_text())["metrics"]
    assert wide["reprojection_images"] == 16 and math.isfinite(wide["reprojection_error"])
    assert wide["reprojection_error"] != pytest.approx(a["metrics"]["reprojection_error"], rel=1e-6)
    assert main([str(run), "--metrics", "nope"]) == 2


def test_metric_functions():
    from portrait_core.metrics.chamfer import chamfer, sample_surface
    from portrait_core.metrics.fid import frechet_distance, kernel_inception_distance
    from portrait_core.metrics.swd import sliced_wasserstein

    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=g)
    # patches are sampled independently per set, so the same set scores small but not zero
    same, other = sliced_wasserstein(x, x), sliced_wasserstein(x, torch.rand(16, 3, 32, 32, generator=g) ** 3)
    assert same < 0.5 * other and sliced_wasserstein(x, x) == same
    f = np.random.default_rng(0).normal(size=(200, 8))
    assert abs(frechet_distance(f, f)) < 1e-6 and frechet_distance(f, f + 1) > 7.9
    assert kernel_inception_distance(f, f + 1, subsets=2, subset_size=50)[0] > kernel_inception_distance(
        f[:100], f[100:], subsets=2, subset_size=50)[0]
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float)
    pts = sample_surface(v, np.array([[0, 1, 2]]), 500)
    assert chamfer(pts, pts)["chamfer"] == 0 and chamfer(pts, pts + [0, 0, 0.1])["chamfer"] > 0.099


def test_appearance_code_generators_draw_inputs_from_their_samplers(dataset_root, tmp_path):
    import pytest

    from portrait_core.assets import DefaultSamplers
    from portrait_core.generator import Generator, generator_config, save_generator
    from train.evaluate import evaluate, sampler_inputs

    torch.manual_seed(0)
    G = Generator(generator_config("tiny"))
    gen = tmp_path / "generator.safetensors"
    save_generator(gen, G, info={"noise_latent": {"kind": "appearance_code"}})
    kw = dict(data_root=str(dataset_root), images=4, metrics=("swd",), log=lambda *_: None)
    with pytest.raises(FileNotFoundError, match="samplers.safetensors"):
        evaluate(gen, **kw)
    g = torch.Generator().manual_seed(1)
    from portrait_core import conventions as C
    from portrait_core.geometry.camera import Camera

    cameras = Camera.portrait(yaw=C.FRONTAL_YAW + 0.1 * torch.randn(7, generator=g),
                              pitch=torch.full((7,), C.FRONTAL_PITCH)).to_label25().float()
    samplers = DefaultSamplers(identity=torch.randn(3, 80, generator=g), body_shape=torch.randn(3, 10, generator=g),
                               appearance=torch.rand(3, 80, generator=g), camera=cameras,
                               pose=torch.randn(7, 6, 3, generator=g) * 0.1, expression=torch.randn(7, 64, generator=g))
    inp = sampler_inputs(samplers, 16, torch.Generator().manual_seed(0))
    # every drawn row is a table row, identity and body shape jointly, camera and pose jointly
    rows = lambda x, table: [int((table - r).abs().sum(-1).argmin()) for r in x]  # noqa: E731
    assert rows(inp.body_shape, samplers.body_shape) == rows(inp.identity, samplers.identity)
    assert rows(inp.pose.flatten(1), samplers.pose.flatten(1)) == rows(inp.camera, samplers.camera)
    assert all(bool((samplers.appearance == r).all(-1).any()) for r in inp.noise)
    samplers.save(tmp_path / "samplers.safetensors")
    report = evaluate(gen, **kw)
    assert "label samplers" in report["inputs"] and math.isfinite(report["metrics"]["swd"])


def test_real_floor_compares_the_protocols_reals_with_another_folders(dataset_root, tmp_path, dataset_reader):
    import pytest

    from tests.train.fixtures import write_fixture_dataset
    from train.evaluate import main, real_floor

    other = tmp_path / "other"
    write_fixture_dataset(other, count=24, resolution=32, face_resolution=32, seed=1)
    same = real_floor(dataset_root, dataset_root, images=16, resolution=32)["metrics"]
    floor = real_floor(dataset_root, other, images=16, resolution=32)["metrics"]
    assert abs(same["fid"]) < 1e-2 and abs(same["fid_face"]) < 1e-2  # the same draw: nothing between them
    assert floor["fid"] > 1.0 and floor["fid_face"] > 1.0 and floor["kid"] > same["kid"]
    with pytest.raises(ValueError, match="fewer than --images 32"):
        real_floor(dataset_root, other, images=32, resolution=32)
    out = tmp_path / "floor.json"
    assert main(["--floor", str(other), "--data", str(dataset_root), "--images", "16", "--floor-resolution", "32",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["fid"] == floor["fid"]
    with pytest.raises(SystemExit):  # a generator or two --data folders make no sense with --floor
        main(["run", "--floor", str(other), "--data", str(dataset_root)])
