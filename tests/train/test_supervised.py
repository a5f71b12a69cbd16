"""The supervised warm start (train/supervised.py): appearance codes, its cameras and cached pose grids agree with
the generator, the loss decreases when fitting a tiny dataset, and a CLI run writes a loadable checkpoint."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from portrait_core import conventions as C
from portrait_core.assets import DefaultSamplers
from portrait_core.assets.appearance import (
    APPEARANCE_DIM,
    APPEARANCE_LAYOUT,
    HAIR_STYLES,
    appearance_code,
    clothing_colour_stats,
    describe_appearance,
)
from portrait_core.generator import Controls, Generator, Latents, generator_config, load_generator
from portrait_core.geometry.camera import Camera
from train import cameras as TC
from train import labelled as LB
from train import loop
from train import objectives as O
from train import regularisers as RG
from train.config import parse_overrides, preset

ROOT = Path(__file__).resolve().parents[2]


def _extra(i: int) -> dict:
    """The appearance of identity i // 2 (two views per identity)."""
    k = i // 2
    rng = np.random.default_rng(k)
    return {"skin": rng.uniform(0.3, 0.9, 3).round(3).tolist(), "hair_style": HAIR_STYLES[k % 4],
            "hair_colour": rng.uniform(0, 0.7, 3).round(3).tolist(), "clothing": ("solid", "stripes", "checks")[k % 3],
            "neckline": ("crew", "v", "scoop")[k % 3], "identity_index": k}


def sup_cfg(**over):
    """The ``warm128`` preset at the tiny fixtures' sizes (16^2 rays, 8^2 face, full frames), with dotted-key
    overrides given as ``supervised__face_mouth_weight=5`` (``__`` for ``.``)."""
    items = {"model.generator": "tiny", "data.resolution": 16, "data.face_resolution": 8,
             "supervised.patch_prob": 0, **{k.replace("__", "."): v for k, v in over.items()}}
    return parse_overrides(preset("warm128"), [f"{k}={v}" for k, v in items.items()])


def unused_code_dims_zeroed(G: Generator) -> Generator:
    """``G`` with zero weights on the noise dims past the appearance code's, as a supervised run makes them at its
    start (every code it feeds is zero there), so that a test can compare a run's weights with its init."""
    from portrait_core.assets.appearance import USED_DIMS
    from portrait_core.generator.loading import silence_noise_dims

    silence_noise_dims(G, USED_DIMS, G.cfg.noise_dim)
    return G


def descend(terms_of, opt: torch.optim.Optimizer, steps: int, watch) -> list[float]:
    """``steps`` optimiser steps on ``terms_of()["total"]``; returns ``watch(terms)`` of each step."""
    fit = []
    for _ in range(steps):
        terms = terms_of()
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        fit.append(float(watch(terms).detach()))
    return fit


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """8 point-splat images (32^2, face crops 16^2) with appearance descriptions, 2 views per identity."""
    from tests.train.fixtures import write_fixture_dataset

    root = tmp_path_factory.mktemp("sup") / "data"
    write_fixture_dataset(root, count=8, resolution=32, face_resolution=16, seed=3)
    doc = json.loads((root / "labels.json").read_text())
    for i, rec in enumerate(doc["images"]):
        rec["extra"] = _extra(i)
    (root / "labels.json").write_text(json.dumps(doc))
    return root


def test_appearance_code_roundtrip_and_errors():
    extra = {"skin": [0.8, 0.6, 0.5], "hair_colour": [0.1, 0.05, 0.02], "hair_style": "bob", "clothing": "checks",
             "neckline": "v"}
    code = appearance_code(extra, clothing_colour=[0.2, 0.3, 0.9], clothing_spread=[0.1, 0.1, 0.2])
    assert code.shape == (APPEARANCE_DIM,) and code.dtype == np.float32
    assert np.all(code[22:] == 0)
    back = describe_appearance(code)
    assert back["hair_style"] == "bob" and back["clothing"] == "checks" and back["neckline"] == "v"
    np.testing.assert_allclose(back["skin"], extra["skin"], atol=1e-3)
    np.testing.assert_allclose(back["clothing_colour"], [0.2, 0.3, 0.9], atol=1e-3)
    # different descriptions give different codes
    assert not np.allclose(code, appearance_code({**extra, "hair_style": "long"}))
    with pytest.raises(ValueError, match="unknown hair_style 'mohawk'"):
        appearance_code({**extra, "hair_style": "mohawk"})
    with pytest.raises(ValueError, match="no 'skin'"):
        appearance_code({k: v for k, v in extra.items() if k != "skin"})


def test_appearance_code_carries_the_draws_labels_used_to_hide():
    old = {"skin": [0.8, 0.6, 0.5], "hair_colour": [0.1, 0.05, 0.02], "hair_style": "bob", "clothing": "stripes",
           "neckline": "v"}
    hidden = {"fringe": 0.2, "hair_volume": 1.3, "clothing_primary": [0.9, 0.1, 0.2],
              "clothing_secondary": [0.1, 0.8, 0.3], "pattern_frequency": 20.0, "pattern_axis": "x",
              "sleeves": False, "eye_colour": [0.25, 0.42, 0.6]}
    code = appearance_code({**old, **hidden})
    # older labels give the code they gave before; the new blocks are what differs
    np.testing.assert_array_equal(code[:22], appearance_code(old)[:22])
    assert np.all(code[36:] == 0) and np.count_nonzero(code[22:36]) == 14
    back = describe_appearance(code)
    for key, value in hidden.items():
        if isinstance(value, str | bool):
            assert back[key] == value, key
        else:
            np.testing.assert_allclose(back[key], value, atol=2e-3, err_msg=key)
    assert "fringe" not in describe_appearance(appearance_code(old))
    # each draw moves its own block and nothing else
    for key, other in (("fringe", 0.0), ("hair_volume", 0.8), ("pattern_axis", "y"), ("sleeves", True)):
        moved = np.flatnonzero(appearance_code({**old, **hidden, key: other}) != code)
        assert moved.size and all(APPEARANCE_LAYOUT[key][0] <= d < APPEARANCE_LAYOUT[key][1] for d in moved), key
    for key, bad, why in (("hair_volume", "big", "hair_volume must be a number"), ("fringe", 3.0, r"in \[0.0, 0.5\]"),
                          ("pattern_axis", "z", "unknown pattern_axis 'z'"), ("sleeves", 1, "true or false"),
                          ("eye_colour", [0.1, float("nan"), 0.2], "eye_colour must be 3 finite")):
        with pytest.raises(ValueError, match=why):
            appearance_code({**old, **hidden, key: bad})


def test_clothing_colour_stats_reads_the_bottom_strip():
    img = np.ones((40, 40, 3))
    mask = np.zeros((40, 40))
    img[30:, 10:30] = [0.2, 0.4, 0.6]
    mask[30:, 10:30] = 1
    mean, std = clothing_colour_stats(img, mask)
    np.testing.assert_allclose(mean, [0.2, 0.4, 0.6], atol=1e-6)
    np.testing.assert_allclose(std, 0, atol=1e-6)
    mean, std = clothing_colour_stats(img, np.zeros((40, 40)))
    np.testing.assert_allclose(mean, 0.5)


def test_window_camera_rays_match_the_full_frame():
    cam = Camera.portrait(yaw=C.FRONTAL_YAW + 0.2, pitch=C.FRONTAL_PITCH - 0.1)
    full_res, res, i0, j0 = 64, 16, 20, 8
    win = TC.window_camera(cam, torch.tensor([j0 / full_res]), torch.tensor([i0 / full_res]), res / full_res)
    _, d_win = win.rays(res, res)
    _, d_full = cam.rays(full_res, full_res)
    d_full = d_full.reshape(1, full_res, full_res, 3)[:, i0:i0 + res, j0:j0 + res].reshape(1, -1, 3)
    torch.testing.assert_close(d_win, d_full, atol=1e-5, rtol=0)


def test_random_window_crops_and_camera_agree():
    """Each entry's crop is the image region its window camera sees (pixels encode their own row and column)."""
    b, full_res, res = 3, 64, 16
    rows, cols = torch.meshgrid(torch.arange(float(full_res)), torch.arange(float(full_res)), indexing="ij")
    image = torch.stack([rows, cols, rows * 0]).expand(b, -1, -1, -1).contiguous()
    cam = Camera.portrait(yaw=C.FRONTAL_YAW + torch.tensor([0.0, 0.2, -0.3]), pitch=torch.full((b,), C.FRONTAL_PITCH))
    gen = torch.Generator().manual_seed(3)
    win, (crop,) = TC.random_window(cam, [image], res, full_res // res, gen)
    assert crop.shape == (b, 3, res, res)
    _, d_full = cam.rays(full_res, full_res)
    _, d_win = win.rays(res, res)
    starts = set()
    for k in range(b):
        i0, j0 = int(crop[k, 0, 0, 0]), int(crop[k, 1, 0, 0])
        starts.add((i0, j0))
        torch.testing.assert_close(crop[k], image[k, :, i0:i0 + res, j0:j0 + res])
        want = d_full[k].reshape(full_res, full_res, 3)[i0:i0 + res, j0:j0 + res].reshape(-1, 3)
        torch.testing.assert_close(d_win[k], want, atol=1e-5, rtol=0)
    assert len(starts) > 1  # the windows are drawn per entry
    whole_cam, (whole,) = TC.random_window(cam, [image], res, 1, gen)  # scale 1: the whole frame, downsampled
    assert whole_cam is cam
    torch.testing.assert_close(whole, TC.downsample(image, res))


def test_imitation_vertices_favour_each_images_moving_ones():
    offsets = torch.zeros(3, 1000, 3)
    offsets[0, [5, 17], 1] = torch.tensor([0.01, 0.03])  # image 0 moves two vertices (1:3)
    offsets[1, 400, 1] = 0.2  # image 1 moves another one, much further
    gen = torch.Generator().manual_seed(0)
    moving = RG.imitation_vertices(offsets, 64, 1.0, gen)
    assert moving.shape == (3, 64)
    assert set(moving[0].tolist()) <= {5, 17} and (moving[0] == 17).sum() > (moving[0] == 5).sum()
    assert set(moving[1].tolist()) == {400}  # not drowned by, nor drowning, the other image
    assert len(set(moving[2].tolist())) > 40  # image 2 is neutral: uniform
    half = RG.imitation_vertices(offsets, 64, 0.5, gen)
    assert set(half[0, :32].tolist()) <= {5, 17} and len(set(half[0, 32:].tolist())) > 20  # the rest uniform
    assert torch.equal(half[0, 32:], half[1, 32:])  # and shared


def test_sweep_expressions_move_one_control_over_its_label_range():
    labels = torch.randn(200, C.EXPRESSION_DIM) * 0.3
    low, high = torch.tensor([0.0, -3.0, -1.0]), torch.tensor([3.0, 3.0, 1.0])
    gen = torch.Generator().manual_seed(0)
    assert RG.sweep_expressions(labels, low, high, 0.0, gen) is labels
    out = RG.sweep_expressions(labels, low, high, 0.5, gen)
    swept = (out != labels).any(1)
    assert 60 < int(swept.sum()) < 140
    moved = out[swept]
    assert ((moved != 0).sum(1) <= 1).all() and (moved[:, 3:] == 0).all()  # one leading control alone
    comp = moved[:, :3].abs().argmax(1)
    value = moved[torch.arange(len(moved)), comp]
    assert ((value >= low[comp]) & (value <= high[comp])).all()
    assert value[comp == 1].abs().max() > 2.0  # reaches the ends of the range, which the labels rarely do
    assert torch.equal(out[~swept], labels[~swept])


def test_cached_pose_volume_equals_generator():
    torch.manual_seed(0)
    G = Generator(generator_config("tiny"))
    with torch.no_grad():
        for p in G.pose_smoother.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # a non-trivial smoother
    betas = torch.randn(2, 10) * 0.5
    pose = torch.randn(2, 6, 3) * 0.15
    entries = G.pose_entries(G.body.posed(betas, pose))
    got = G.pose_volume_from_entries(entries)
    want = G.pose_volume(G.body.posed(betas, pose))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # the shared training scene renders what Generator.forward renders
    lat = Latents(torch.randn(2, 80), torch.randn(2, 80))
    ctl = Controls(pose, torch.randn(2, 64) * 0.5, betas)
    cam = Camera.portrait(batch=2)
    with torch.no_grad():
        a = G.render_scene(G.training_scene(lat, ctl), cam, 12)
        b = G(lat, ctl, cam, resolution=12)
    torch.testing.assert_close(a.image, b.image, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.alpha, b.alpha, atol=1e-4, rtol=0)


def test_face_camera_label_orbits_the_posed_face(tiny_data):
    data = LB.LabelledData(tiny_data)
    G = Generator(generator_config("tiny"))
    cam = TC.face_camera(data.face_camera[:3])
    ref = TC.fake_face_camera(G, Controls(data.pose[:3], data.expression[:3], data.body_shape[:3]), data.camera[:3])
    torch.testing.assert_close(cam.cam2world, ref.cam2world, atol=1e-4, rtol=0)
    torch.testing.assert_close(cam.near, ref.near, atol=1e-4, rtol=0)


def test_data_codes_split_and_samplers(tiny_data):
    data = LB.LabelledData(tiny_data, holdout=1)
    assert len(data) == 8 and data.num_identities == 4
    assert data.heldout_index.tolist() == [6, 7] and data.train_index.numel() == 6
    # the two views of an identity share one appearance code (clothing colour averaged over views)
    torch.testing.assert_close(data.appearance[0], data.appearance[1])
    assert not torch.allclose(data.appearance[0], data.appearance[2])
    s = data.samplers()
    assert s.identity.shape == (3, 80) and s.camera.shape == (6, 25)
    lat, betas = s.identities(5, seed=1)
    lat.validate()
    assert betas.shape == (5, 10)
    low, high = data.control_range()  # over the training images only
    train_labels = data.expression[data.train_index, :8]
    torch.testing.assert_close(low, train_labels.amin(0))
    torch.testing.assert_close(high, train_labels.amax(0))


def test_supervised_loss_decreases_on_a_fixed_batch(tiny_data):
    torch.manual_seed(0)
    data = LB.LabelledData(tiny_data)
    cfg = sup_cfg()
    G = Generator(generator_config("tiny"))
    params = [p for name, ps in G.param_groups().items() if not name.startswith("superres") for p in ps]
    opt = torch.optim.Adam(params, lr=2e-3, betas=(0.9, 0.99))
    batch = data.batch(torch.arange(4))
    gen = torch.Generator().manual_seed(0)
    fit = []
    for _ in range(14):
        terms = O.SupervisedObjective.terms(G, cfg, batch, gen)
        assert all(math.isfinite(float(v.detach())) for v in terms.values())
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        fit.append(float((terms["image"] + terms["alpha"] + terms["face"]).detach()))
    assert np.mean(fit[-3:]) < 0.85 * np.mean(fit[:3]), fit


def test_expression_shading_learns_from_the_images_and_is_kept_sparse(tiny_data):
    torch.manual_seed(0)
    data = LB.LabelledData(tiny_data)
    cfg = sup_cfg()
    G = Generator(generator_config("tiny", expression={"shading": True}))
    batch = data.batch(torch.arange(4))
    terms = O.SupervisedObjective.terms(G, cfg, batch, torch.Generator().manual_seed(0))
    assert float(terms["shading"].detach()) == 0.0  # zero-initialised: no shading yet
    (terms["image"] + terms["face"]).backward()
    assert G.expression_deform.shading_head.weight.grad.abs().sum() > 0  # the images train it
    head = G.expression_deform.shading_head
    with torch.no_grad():
        head.weight.normal_(std=0.5)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    sparsity = []
    for step in range(10):
        reg = RG.deformation_regularisers(G, batch["identity"], batch["expression"], batch["body_shape"], 64,
                                          cfg.loss.smooth_jitter, torch.Generator().manual_seed(step))
        sparsity.append(float(reg["shading"].detach()))
        opt.zero_grad()
        reg["shading"].backward()
        opt.step()
    assert sparsity[0] > 0.01 and sparsity[-1] < 0.5 * sparsity[0], sparsity
    plain = RG.deformation_regularisers(Generator(generator_config("tiny")), batch["identity"], batch["expression"],
                                        batch["body_shape"], 16, cfg.loss.smooth_jitter, torch.Generator())
    assert "shading" not in plain


def test_mouth_weights_cover_the_projected_lips_in_frames_and_windows(tiny_data):
    uv = torch.tensor([[[0.25, 0.5], [0.75, 0.7]]])  # a mouth box 0.5 wide, 0.2 high
    w = O.mouth_weight_map(uv, 8, 4.0, margin=0.25)  # widened to x 0.125..0.875, y 0.45..0.75
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[4:6, 1:7] = True  # pixel centres (k + 0.5) / 8 inside the widened box
    assert torch.equal(w[0, 0] == 4.0, inside) and torch.equal(w[0, 0] == 1.0, ~inside)
    data = LB.LabelledData(tiny_data)
    G = Generator(generator_config("tiny"))
    batch = data.batch(torch.arange(4))
    cam = TC.face_camera(batch["face_camera"])
    lips = O.face_landmarks_uv(G, batch, cam)
    assert lips.shape == (4, 68, 2)
    eyes_v, mouth_v = lips[:, 36:48, 1].mean(1), lips[:, O.MOUTH_LANDMARKS, 1].mean(1)
    assert ((lips > 0) & (lips < 1)).all() and (mouth_v > eyes_v + 0.1).all()  # in the crop, mouth below the eyes
    win, _ = TC.random_window(cam, [batch["face"]], 4, 2, torch.Generator().manual_seed(0))
    u0, v0 = -win.intrinsics[:, 0, 2] * 0.5 + cam.intrinsics[:, 0, 2], -win.intrinsics[:, 1, 2] * 0.5 + cam.intrinsics[:, 1, 2]
    in_window = O.face_landmarks_uv(G, batch, win)
    torch.testing.assert_close(in_window, (lips - torch.stack([u0, v0], -1)[:, None]) / 0.5, atol=1e-4, rtol=0)
    plain = O.SupervisedObjective.terms(G, sup_cfg(), batch, torch.Generator().manual_seed(0))["face"]
    weighted = O.SupervisedObjective.terms(G, sup_cfg(supervised__face_mouth_weight=5), batch,
                                           torch.Generator().manual_seed(0))["face"]
    assert float(weighted.detach()) != float(plain.detach())


def test_the_mouth_interior_target_is_what_an_open_jaw_opens():
    square = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    pts = torch.tensor([[[0.5, 0.5], [1.5, 0.5], [0.5, -0.1], [0.99, 0.01]]])
    assert RG.inside_polygon(pts, square).tolist() == [[True, False, False, True]]
    G = Generator(generator_config("tiny", expression={"shading": True}))
    expression = torch.zeros(3, 64)
    expression[1, 0], expression[2, 0] = 1.5, 3.0  # jaw_open
    identity, betas = torch.zeros(3, 80), torch.zeros(3, 10)
    pts, target = RG.mouth_interior_shading(G, identity, expression, betas, 4000, torch.Generator().manual_seed(0))
    dark = (target > 0).float().mean(1)
    assert dark[0] == 0 and 0 < dark[1] < dark[2], dark  # neutral: nothing; a wider jaw opens more
    lips = G.face.landmarks(identity, expression)[2, 48:68]
    T = G.body.face_transform(betas)[2]
    in_face = pts[2][target[2] > 0] - T[:3, 3]  # canonical -> face frame (a translation for the canonical pose)
    assert (in_face[:, 0].abs() < (lips[:, 0].abs().max())).all()  # between the mouth corners
    assert (in_face[:, 1] < lips[:, 1].max()).all() and (in_face[:, 1] > lips[:, 1].min()).all()
    reg = RG.deformation_regularisers(G, identity, expression, betas, 64, 0.01, torch.Generator(),
                                      shading_imitation=True)
    assert float(reg["shading_imitation"].detach()) > 0  # zero shading misses the open mouths


def run_warm(tiny_data, out, *overrides, preset_name="warm128") -> int:
    """``python -m train warm128`` on the tiny fixture (12^2 rays, 8^2 face, one held-out identity) into ``out``."""
    from train.__main__ import main

    return main([preset_name, f"data.root={tiny_data}", "data.extra_roots=", "model.generator=tiny",
                 "data.resolution=12", "data.face_resolution=8", "data.holdout=1", "supervised.eval_resolution=12",
                 "run.image_every=0", "threads=1", "run.progress=false", "run.tensorboard=false",
                 f"run.out={out.parent}", f"run.name={out.name}", *overrides, "--resume", "auto"])


def latest_generator(run):
    from train import checkpoint as ck

    return load_generator(ck.resolve(run) / ck.GENERATOR_FILE)


def test_supervised_run_writes_a_loadable_checkpoint_and_resumes(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert run_warm(tiny_data, out, "run.steps=2", "optim.batch=2", "supervised.face_patch_prob=1",
                    "supervised.face_grad=0.3") == 0
    G = latest_generator(out)
    info = G.checkpoint_info
    assert info["method"] == loop.METHODS["supervised"] and info["step"] == 2
    assert info["noise_latent"]["kind"] == "appearance_code"
    assert info["heldout"]["images"] == 2 and 0 <= info["heldout"]["iou"] <= 1
    assert math.isfinite(info["heldout"]["psnr"])
    assert json.loads((out / "eval.json").read_text())["step"] == 2
    samplers = DefaultSamplers.load(out / "samplers.safetensors")
    assert samplers.identity.shape[0] == 3
    # resume continues from step 2
    assert run_warm(tiny_data, out, "run.steps=3", "optim.batch=2") == 0
    assert latest_generator(out).checkpoint_info["step"] == 3
    lines = [json.loads(x) for x in (out / "stats.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if "G/image" in x]
    assert steps[-1] == 3
    assert all(math.isfinite(x["G/face_grad"]) for x in lines if "G/face_grad" in x)  # the face terms ran
    # the run flushed denormals while it trained; the calling process gets them back (hypothesis's float
    # strategies refuse to run without them)
    assert (torch.tensor([1e-39]) * 1.0).item() != 0.0


def test_the_old_command_line_prints_and_runs_its_equivalent(tiny_data, tmp_path, capsys):
    from train import supervised as alias

    out = tmp_path / "old"
    cmd = alias.translate(["--data", str(tiny_data), "--out", str(out), "--preset", "tiny", "--steps", "1",
                           "--w-face-grad", "0.3", "--lr", "1e-3", "--stage", "superres"])
    assert cmd[:2] == ["train", "warm128-sr"] and "supervised.face_grad=0.3" in cmd and "optim.lr_g=1e-3" in cmd
    assert f"run.name={out.name}" in cmd and "model.generator=tiny" in cmd
    ev = alias.translate(["--data", "a", "b", "--out", str(out), "--eval-only", "--baselines", "--export", "x"])
    assert ev[0] == "train.evaluate" and ev[ev.index("--data") + 1:ev.index("--data") + 3] == ["a", "b"]
    assert alias.main(["--data", str(tiny_data), "--out", str(out), "--preset", "tiny", "--steps", "1",
                       "--batch", "2", "--resolution", "12", "--face-resolution", "8", "--holdout", "1",
                       "--eval-resolution", "12", "--sample-every", "0", "--threads", "1"]) == 0
    assert "python -m train warm128" in capsys.readouterr().out
    assert latest_generator(out).checkpoint_info["step"] == 1


def test_several_roots_concatenate_and_hold_out_from_the_last(tiny_data, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    data = LB.LabelledData([other, tiny_data], holdout=1)
    # identities never span roots: the copy's identity 0 is not the original's identity 0
    assert len(data) == 16 and data.num_identities == 8
    assert data.identity_of[:2].tolist() == [0, 0] and data.identity_of[8:10].tolist() == [4, 4]
    assert data.heldout_index.tolist() == [14, 15]
    torch.testing.assert_close(data.image[8:], LB.LabelledData(tiny_data).image)
    with pytest.raises(ValueError, match="no dataset root"):
        LB.LabelledData([])


def test_imitation_warmup_fits_the_3dmm_and_touches_only_the_expression_branch(tiny_data):
    torch.manual_seed(0)
    data = LB.LabelledData(tiny_data)
    G = Generator(generator_config("tiny"))
    cfg = sup_cfg(loss__imitation_warmup=80, optim__lr_g=2e-3, loss__num_reg_points=64)
    frozen = {k: v.clone() for k, v in G.state_dict().items() if not k.startswith(("expression_",))}

    def imitation() -> float:
        with torch.no_grad():
            return float(RG.deformation_regularisers(G, data.identity, data.expression, data.body_shape, 512,
                                                     cfg.loss.smooth_jitter, torch.Generator().manual_seed(5)
                                                     )["imitation"])

    before = imitation()
    last = O.imitation_warmup(G, cfg, data.label_table(), torch.Generator().manual_seed(0), log=lambda *_: None)
    assert math.isfinite(last["imitation"])
    assert imitation() < 0.5 * before, (before, imitation())
    after = G.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())


def test_init_with_overrides_keeps_the_weights_and_changes_the_settings(tiny_data, tmp_path):
    from portrait_core.generator import save_generator

    torch.manual_seed(0)
    src = unused_code_dims_zeroed(Generator(generator_config("tiny")))
    earlier = {"checkpoint": "first.safetensors", "method": "m", "step": 5, "wall_seconds": 1.0}
    save_generator(tmp_path / "init.safetensors", src,
                   info={"method": "x", "step": 7, "wall_seconds": 3.0, "lineage": [earlier]})
    out = tmp_path / "run"
    assert run_warm(tiny_data, out, "run.steps=0", f"model.init_from={tmp_path / 'init.safetensors'}",
                    'model.generator_overrides={"manifold": {"levels": 9}}') == 0
    G = latest_generator(out)
    assert G.cfg.manifold.levels == 9 and src.cfg.manifold.levels != 9
    # the run records what it started from, and what that started from (oldest first)
    assert G.checkpoint_info["lineage"] == [earlier, {"checkpoint": str(tmp_path / "init.safetensors"),
                                                      "method": "x", "step": 7, "wall_seconds": 3.0}]
    for k, v in src.state_dict().items():
        if "style_avg" not in k:
            torch.testing.assert_close(G.state_dict()[k], v, msg=k)


def test_a_narrower_code_generator_is_widened_to_render_as_before(tiny_data, tmp_path, capsys):
    from portrait_core.assets.appearance import USED_DIMS
    from portrait_core.generator import save_generator
    from portrait_core.generator.loading import silence_noise_dims

    torch.manual_seed(0)
    src = Generator(generator_config("tiny", face_texture={"enabled": True}))
    with pytest.raises(ValueError, match="outside the noise latent"):
        silence_noise_dims(src, 0, src.cfg.noise_dim + 1)
    narrow = {"kind": "appearance_code", "used_dims": 22}
    save_generator(tmp_path / "init.safetensors", src, info={"noise_latent": narrow})
    out = tmp_path / "run"
    assert run_warm(tiny_data, out, "run.steps=0", f"model.init_from={tmp_path / 'init.safetensors'}") == 0
    assert "appearance code widened from 22 to 36 dims" in capsys.readouterr().out
    G = latest_generator(out)
    assert G.checkpoint_info["noise_latent"]["used_dims"] == USED_DIMS
    # any value on the new dims gives the old styles; the old dims still matter
    z = torch.randn(3, G.cfg.identity_dim + G.cfg.noise_dim)
    z[:, G.cfg.identity_dim + 22:] = 0
    wide = z.clone()
    wide[:, G.cfg.identity_dim + 22:G.cfg.identity_dim + 36] = torch.randn(3, 14)
    with torch.no_grad():
        for name in ("radiance_mapping", "superres_mapping"):
            torch.testing.assert_close(getattr(G, name)(wide), getattr(src, name)(z), msg=name)
        torch.testing.assert_close(G.face_texture.latent_bias(wide), src.face_texture.latent_bias(z))
        assert not torch.allclose(G.radiance_mapping(z), G.radiance_mapping(z + 0.5))
    # an init already at the full width is left alone
    save_generator(tmp_path / "wide.safetensors", G, info={"noise_latent": G.checkpoint_info["noise_latent"]})
    assert run_warm(tiny_data, tmp_path / "run2", "run.steps=0", f"model.init_from={tmp_path / 'wide.safetensors'}") == 0
    assert "widened" not in capsys.readouterr().out


def test_modulated_colour_head_gets_its_own_learning_rate(tiny_data, tmp_path):
    from portrait_core.generator import save_generator

    torch.manual_seed(0)
    save_generator(tmp_path / "init.safetensors", Generator(generator_config("tiny")), info={})
    out = tmp_path / "run"
    assert run_warm(tiny_data, out, "run.steps=1", "optim.batch=2", f"model.init_from={tmp_path / 'init.safetensors'}",
                    "optim.lr_g=1e-3", 'model.generator_overrides={"radiance": {"modulated_colour": true}}',
                    "optim.lr_colour_head_scale=5") == 0
    from train import checkpoint as ck

    state = ck.load_state(ck.resolve(out))
    groups = {g["name"]: g for g in state["opt_G"]["param_groups"]}
    assert groups["colour_head"]["base_lr"] == pytest.approx(5e-3) and groups["radiance"]["base_lr"] == 1e-3
    assert len(groups["colour_head"]["params"]) == 4
    G = latest_generator(out)
    assert G.cfg.radiance.modulated_colour and G.radiance.modulated_rgb.weight.abs().sum() > 0


def test_train_groups_leave_every_other_weight_bit_identical(tiny_data, tmp_path, capsys):
    from portrait_core.generator import save_generator

    torch.manual_seed(0)
    G = Generator(generator_config("tiny", face_texture={"enabled": True}))
    with torch.no_grad():  # a live colour network, so that the texels get a gradient
        for p in G.face_texture.parameters():
            p.normal_(0, 0.1)
    unused_code_dims_zeroed(G)
    save_generator(tmp_path / "init.safetensors", G, info={})
    out = tmp_path / "run"
    assert run_warm(tiny_data, out, "run.steps=2", "optim.batch=2", f"model.init_from={tmp_path / 'init.safetensors'}",
                    "optim.lr_g=1e-2", "optim.train_groups=face_texture,face_texture_net") == 0
    trained = latest_generator(out).state_dict()
    changed = {k for k, v in G.state_dict().items() if "style_avg" not in k and not torch.equal(trained[k], v)}
    assert "face_texture.texture" in changed and all(k.startswith("face_texture.") for k in changed), changed
    with pytest.raises(ValueError, match="'radiance_typo'.*its groups: mapping"):
        loop.trainable_generator_params(G, 1, only="face_texture, radiance_typo")
    assert set(loop.trainable_generator_params(G, 1, only=" deform ")) == {"deform"}
    halves = loop.trainable_generator_params(G, 1, only="radiance_mapping")
    assert set(halves) == {"radiance_mapping"} and len(halves["radiance_mapping"]) == len(
        list(G.radiance_mapping.parameters()))
    with pytest.raises(ValueError, match="'mapping'.*its groups:"):  # split once a half is named
        loop.trainable_generator_params(G, 1, only="mapping,expression_mapping")


def test_superres_stage_trains_only_the_super_resolution_at_full_density(tiny_data, tmp_path):
    from portrait_core.generator import save_generator

    torch.manual_seed(0)
    data = LB.LabelledData(tiny_data)
    G = Generator(generator_config("tiny"))
    with torch.no_grad():  # an opaque shell, so that the textures hold something to super-resolve
        G.radiance.sigma_heads[0].bias.fill_(5.0)
    cfg = sup_cfg(stage=2, data__resolution=8, supervised__grad=0.3, supervised__face=1.0, supervised__face_grad=0.3)
    batch = data.batch(torch.arange(4))
    terms = O.SupervisedObjective.superres_terms(G, cfg, batch, torch.Generator().manual_seed(0))
    assert set(terms) == {"image", "alpha", "grad", "face", "face_grad", "total"}
    terms["total"].backward()
    sr = {id(p) for name in ("superres", "superres_mapping") for p in G.param_groups()[name]}
    reached = {id(p) for p in G.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached and reached <= sr  # the rest is evaluated as a frozen avatar
    G.zero_grad(set_to_none=True)
    # the targets are the data at its full density: 32^2 portraits -> 16^2 windows of 8^2 rays, whole 16^2 faces
    params = [p for name in ("superres", "superres_mapping") for p in G.param_groups()[name]]
    opt = torch.optim.Adam(params, lr=1e-2)
    fit = descend(lambda: O.SupervisedObjective.superres_terms(G, cfg, batch, torch.Generator().manual_seed(0)), opt,
                  12, lambda t: t["total"])
    assert np.mean(fit[-3:]) < 0.97 * np.mean(fit[:3]), fit  # (a frozen or unreachable SR stays flat)
    # the CLI stage: from a checkpoint, only the super-resolution changes
    save_generator(tmp_path / "init.safetensors", unused_code_dims_zeroed(G))
    out = tmp_path / "run"
    assert run_warm(tiny_data, out, "run.steps=2", "optim.batch=2", "data.resolution=8",
                    f"model.init_from={tmp_path / 'init.safetensors'}", preset_name="warm128-sr") == 0
    trained = latest_generator(out).state_dict()
    changed = {k for k, v in G.state_dict().items() if "style_avg" not in k and not torch.equal(trained[k], v)}
    assert changed and all(k.startswith("superres") for k in changed), changed


def test_superres_stage_needs_a_super_resolution(tiny_data, tmp_path, capsys):
    from portrait_core.generator import save_generator

    save_generator(tmp_path / "plain.safetensors", Generator(generator_config("tiny", superres={"enabled": False})))
    code = run_warm(tiny_data, tmp_path / "run", "run.steps=1", f"model.init_from={tmp_path / 'plain.safetensors'}",
                    preset_name="warm128-sr")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: stage 2 needs a generator with super-resolution (superres.enabled)"]


def test_heldout_evaluation_with_baselines_and_export(tiny_data, tmp_path):
    from train import checkpoint as ck
    from train.evaluate import main as evaluate_main

    out = tmp_path / "run"
    assert run_warm(tiny_data, out, "run.steps=1", "optim.batch=2") == 0
    report = tmp_path / "held.json"
    export = tmp_path / "assets"
    assert evaluate_main([str(ck.resolve(out) / ck.GENERATOR_FILE), "--heldout", "1", "--data", str(tiny_data),
                          "--heldout-resolution", "12", "--baselines", "--export", str(export),
                          "--out", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert rep["ray"]["images"] == 2 and math.isfinite(rep["ray"]["face_psnr"])
    assert set(rep["expression"]) == {"jaw_open", "smile"} and rep["clothing_colour"]["images"] == 6
    surface = rep["face_surface"]  # the 3DMM covers the held-out faces: a finite gap over some pixels
    assert surface["pixels"] > 0 and math.isfinite(surface["mean_mm"]) and surface["mean_abs_mm"] >= 0
    assert math.isfinite(rep["super_resolved"]["psnr_bicubic"]) and math.isfinite(rep["super_resolved"]["face_psnr_bicubic"])
    assert set(rep["baselines"]) == {"white", "mean_training_image", "untrained_generator"}
    G = load_generator(export / "default.safetensors")
    assert G.checkpoint_info["heldout"]["ray"]["psnr"] == rep["ray"]["psnr"]
    assert DefaultSamplers.load(export / "default_samplers.safetensors").identity.shape[0] == 3
    assert evaluate_main([str(out), "--heldout", "1"]) == 2  # --heldout needs the data
    # another stem (the 360-degree model's files), found beside it through its info
    from portrait_core.generator.loading import find_samplers

    assert evaluate_main([str(ck.resolve(out) / ck.GENERATOR_FILE), "--heldout", "1", "--data", str(tiny_data),
                          "--heldout-resolution", "12", "--export", str(export), "--export-name", "default360",
                          "--out", str(report)]) == 0
    assert find_samplers(export / "default360.safetensors") == export / "default360_samplers.safetensors"


def test_labelled_data_reads_packed_datasets_and_refuses_paths_outside_them(tiny_data, tmp_path):
    import json
    import shutil

    from portrait_core.data.labels import LabelError
    from portrait_core.data.pack import pack_dataset

    packed, _ = pack_dataset(tiny_data, tmp_path / "tiny.zip")
    folder, archive = LB.LabelledData(tiny_data), LB.LabelledData(packed)
    assert len(archive) == len(folder) and archive.num_identities == folder.num_identities
    torch.testing.assert_close(archive.pose, folder.pose)
    assert (archive.image.float() - folder.image.float()).abs().mean() < 8  # re-encoded, same pictures

    hostile = tmp_path / "hostile"
    shutil.copytree(tiny_data, hostile)
    doc = json.loads((hostile / "labels.json").read_text())
    doc["images"][0]["image"] = "../" * 8 + "etc/passwd"
    (hostile / "labels.json").write_text(json.dumps(doc))
    with pytest.raises(LabelError, match="labels.json"):
        LB.LabelledData(hostile)


def tiny_generator_and_batch(tiny_data):
    """A seeded ``tiny`` generator and the fixture's first 4 records with their latents and controls."""
    torch.manual_seed(0)
    G = Generator(generator_config("tiny"))
    batch = LB.LabelledData(tiny_data).batch(torch.arange(4))
    latents = Latents(batch["identity"], batch["appearance"])
    controls = Controls(batch["pose"], batch["expression"], batch["body_shape"])
    return G, batch, latents, controls


def test_multiview_term_is_the_consistency_metric_and_training_lowers_it(tiny_data):
    from portrait_core.metrics.consistency import reprojection_error

    G, batch, latents, controls = tiny_generator_and_batch(tiny_data)
    cam = TC.portrait_camera(batch["camera"])
    with torch.no_grad():
        scene = G.training_scene(latents, controls)
        out = G.render_scene(scene, cam, 16)
        term = O.multiview_term(G, scene, cam, out, 16, 0.2, torch.Generator().manual_seed(1))
        side = 1.0 if torch.rand((), generator=torch.Generator().manual_seed(1)).item() < 0.5 else -1.0
        pitch, yaw, _ = cam.orbit_params(C.PORTRAIT_LOOK_AT)
        cam_b = Camera.portrait(yaw + side * 0.2, pitch)
        b = G.render_scene(scene, cam_b, 16)
    expected, cover = reprojection_error(out.image_lr, out.depth_lr, out.alpha_lr, cam, b.image_lr, b.depth_lr, cam_b)
    assert cover > 0 and float(term) == pytest.approx(expected, rel=1e-5)
    # the weight adds the term to the total; whole-portrait windows (patch steps) skip it
    cfg = sup_cfg(supervised__multiview=1.0, supervised__image=0, supervised__alpha=0, supervised__grad=0,
                  supervised__face=0)
    opt = torch.optim.Adam(G.param_groups()["radiance"], lr=3e-3)
    fit = descend(lambda: O.SupervisedObjective.terms(G, cfg, batch, torch.Generator().manual_seed(2)), opt, 12,
                  lambda t: t["multiview"])
    assert fit[0] > 0 and fit[-1] < 0.8 * fit[0], fit
    patch = sup_cfg(supervised__multiview=1.0, supervised__patch_prob=1.0)
    assert float(O.SupervisedObjective.terms(G, patch, batch, torch.Generator().manual_seed(2))["multiview"]) == 0


def test_face_depth_term_is_the_surface_gap_and_training_lowers_it(tiny_data):
    from portrait_core.metrics import face_surface as FS

    G, batch, latents, controls = tiny_generator_and_batch(tiny_data)
    fcam = TC.face_camera(batch["face_camera"])
    with torch.no_grad():
        out = G.render_scene(G.training_scene(latents, controls), fcam, 8)
        term = O.face_depth_term(G, batch, fcam, out, 8)
        target, covered = FS.face_depth_target(G.face, G.body, fcam, batch["identity"], batch["expression"],
                                               batch["body_shape"], batch["pose"], 8)
    gap, mask = FS.surface_gap(out.depth_lr, out.alpha_lr, target, covered)
    assert bool(mask.any()) and float(term) == pytest.approx(float(gap[mask].abs().mean()), rel=1e-5)
    # supervised.face_depth_alpha: which rendered pixels count (a low bar keeps the faint ones in)
    faint = covered & (out.alpha_lr > 0.01)
    with torch.no_grad():
        low = O.face_depth_term(G, batch, fcam, out, 8, alpha_min=0.01)
    assert float(low) == pytest.approx(float(gap[faint].abs().mean()), rel=1e-5)
    # the weight adds it to the total, and the geometry (manifold + radiance) moves towards the 3DMM surface
    cfg = sup_cfg(supervised__face_depth=1.0, supervised__image=0, supervised__alpha=0, supervised__grad=0,
                  supervised__face=0)
    opt = torch.optim.Adam([*G.param_groups()["manifold"], *G.param_groups()["radiance"]], lr=3e-3)
    fit = descend(lambda: O.SupervisedObjective.terms(G, cfg, batch, torch.Generator().manual_seed(2)), opt, 12,
                  lambda t: t["face_depth"])
    assert fit[0] > 0 and fit[-1] < 0.8 * fit[0], fit
    assert "face_depth" not in O.SupervisedObjective.terms(G, sup_cfg(), batch, torch.Generator().manual_seed(2))


def test_bench_step_times_training_steps_and_saves_nothing(tiny_data, tmp_path, capsys):
    from train.bench_step import main

    args = ["warm128", f"data.root={tiny_data}", "data.extra_roots=", "model.generator=tiny", "data.resolution=12",
            "data.face_resolution=8", "data.holdout=1", "supervised.eval_resolution=12", "run.image_every=0",
            "threads=1", f"run.out={tmp_path}", "--steps", "2", "--json"]
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["preset"] == "warm128" and row["steps"] == 2 and row["device"] == "cpu" and row["batch"] >= 1
    assert 0 < row["step_min_s"] <= row["step_median_s"] and row["images_per_s"] > 0
    assert not list(tmp_path.rglob("step-*")) and not list(tmp_path.rglob("generator.safetensors"))  # no checkpoint
    assert (torch.tensor([1e-39]) * 1.0).item() != 0.0  # denormals back on after the supervised set-up
    with pytest.raises(ValueError, match="at least 1"):
        main(args[:-3] + ["--steps", "0"])


def test_flushing_denormals_leaves_numpy_quiet():
    # numpy computes its float limits lazily; computed while denormals are flushed they warn "smallest subnormal
    # is zero" into every training log. A fresh interpreter, so no earlier test has computed them.
    code = ("import numpy as np, torch, warnings\n"
            "from train.loop import flush_denormals\nfrom train.config import TrainConfig\n"
            "warnings.simplefilter('error')\n"
            "assert flush_denormals(TrainConfig(objective='supervised'))\n"
            "try:\n    np.finfo(np.float32).smallest_subnormal; np.finfo(np.float64).tiny\n"
            "finally:\n    torch.set_flush_denormal(False)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
