"""Photo inversion (portrait_core.photo.invert, ``python -m portrait_core invert``, the worker's ``invert``) on a
SynthPortrait record whose labels are known, into a random-init ``tiny`` generator (64^2 output: seconds)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from portrait_core.photo import invert as inv

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Two SynthPortrait records at 64^2 (faces 32^2): a Busto dataset folder as ``data prepare`` writes one."""
    out = tmp_path_factory.mktemp("synth") / "data"
    r = subprocess.run([sys.executable, "-m", "portrait_core.data", "synth", "--out", str(out), "--count", "2",
                        "--resolution", "64", "--face-resolution", "32", "--yaw", "frontal", "--seed", "31",
                        "--views-per-identity", "1", "--workers", "1"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from portrait_core.generator import Generator, generator_config, save_generator

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    torch.manual_seed(0)
    save_generator(path, Generator(generator_config("tiny")), info={"note": "random init, tests"})
    return path


SETTINGS = inv.InvertSettings(latent_steps=8, tune_steps=6, sr_steps=6, face_steps=4, detail_steps=4, candidates=2,
                              lr_latent=0.05, lr_tune=1e-3, lr_sr=1e-2)


@pytest.fixture(scope="module")
def inverted(synth, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("inv") / "avatar"
    report = inv.run_invert(out, prepared=synth, index=0, settings=SETTINGS, checkpoint=tiny)
    return out, report


def test_target_from_a_prepared_folder(synth):
    t = inv.target_from_dataset(synth, 1)
    assert t.image.shape == (1, 3, 64, 64) and t.matte.shape == (1, 1, 64, 64)
    assert t.image.min() >= -1 and t.image.max() <= 1
    # over white outside the matte, as every Busto render is
    outside = (t.matte < 0.01).expand_as(t.image)
    assert outside.any() and torch.allclose(t.image[outside], torch.ones(()), atol=0.02)
    assert t.labels["pose"].shape == (1, 6, 3) and t.labels["identity"].shape == (1, 80)
    labels = json.loads((synth / "labels.json").read_text())["images"][1]
    assert np.allclose(t.labels["expression"][0].numpy(), labels["expression"], atol=1e-6)
    with pytest.raises(inv.InvertError, match=r"--index 5 out of range \(0\.\.1\)"):
        inv.target_from_dataset(synth, 5)


def test_inversion_improves_the_reconstruction_and_writes_everything(inverted):
    out, report = inverted
    for name in ("avatar.safetensors", "samplers.safetensors", "sheet.png", "report.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text())["reconstruction"] == report["reconstruction"]
    before, after = report["initial_reconstruction"], report["reconstruction"]
    print("PSNR before/after (matte, face region):", before["psnr_matte"], after["psnr_matte"],
          before["psnr_face_region"], after["psnr_face_region"])
    assert after["psnr_matte"] > before["psnr_matte"] + 0.3
    assert after["psnr_face_region"] > before["psnr_face_region"]
    # the tiny model has no face texture: the avatar gets its own, tuned last on the output itself
    assert report["timings"]["face"] > 0 and report["timings"]["detail"] > 0
    from portrait_core.generator import load_generator

    assert load_generator(out / "avatar.safetensors").face_texture is not None
    for view in ("turn_minus", "turn_plus"):
        c = report["turned_views"][view]
        assert 0 <= c["hole_fraction"] <= 1 and c["landmarks_tracked"] > 0 and np.isfinite(c["landmark_shape_drift"])
        assert 0 < c["photo_error"] < 2
    from PIL import Image

    with Image.open(out / "sheet.png") as im:  # 8 tiles of the output resolution, a label strip above
        assert im.size == (8 * after["resolution"], after["resolution"] + 14)


def test_the_avatar_is_pinned_for_every_seed_and_truncation(inverted):
    from portrait_core.generator import load_generator
    from portrait_core.generator.loading import identity_for_seed, samplers_for

    out, report = inverted
    g = load_generator(out / "avatar.safetensors")
    assert samplers_for(g) is not None  # found beside it, by what the checkpoint says
    (l0, b0), (l7, b7) = identity_for_seed(g, 0), identity_for_seed(g, 7)
    assert torch.equal(l0.noise, l7.noise) and torch.equal(l0.identity, l7.identity) and torch.equal(b0, b7)
    assert np.allclose(b0[0].numpy(), report["body_shape"], atol=1e-5)
    with torch.no_grad():
        a, b = g.make_avatar(l0, b0, truncation=0.5), g.make_avatar(l0, b0, truncation=1.0)
    assert torch.allclose(a.textures, b.textures, atol=1e-5)
    assert torch.allclose(a.textures_hr, b.textures_hr, atol=1e-4)


def test_the_avatar_loads_in_sample_and_export(inverted, tmp_path, capsys):
    from portrait_core.__main__ import main

    out, _ = inverted
    ckpt = str(out / "avatar.safetensors")
    assert main(["sample", "--checkpoint", ckpt, "--seeds", "0-1", "--yaws", "2", "--out",
                 str(tmp_path / "grid.png")]) == 0
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as im:
        grid = np.asarray(im.convert("RGB"))
    half = grid.shape[0] // 2
    assert np.array_equal(grid[:half], grid[half:])  # two seeds, one avatar
    assert main(["export", "--checkpoint", ckpt, "--resolution", "32", "--morphs", "0", "--out",
                 str(tmp_path / "a.obj")]) == 0
    assert (tmp_path / "a.obj").stat().st_size > 0


@pytest.mark.parametrize("kind", ["missing", "not_an_image", "folder_without_labels"])
def test_bad_input_is_one_error_line_and_nothing_written(kind, tmp_path, capsys):
    from portrait_core.__main__ import main

    out = tmp_path / "out"
    if kind == "missing":
        args, expect = [str(tmp_path / "nope.jpg")], f"{tmp_path / 'nope.jpg'}: No such file"
    elif kind == "not_an_image":
        bad = tmp_path / "notes.jpg"
        bad.write_text("not a photo\n")
        args, expect = [str(bad)], f"{bad}: not an image file"
    else:
        (tmp_path / "empty").mkdir()
        args, expect = ["--prepared", str(tmp_path / "empty")], "not a prepared dataset folder (no labels.json)"
    assert main(["invert", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert not out.exists()


def test_cli_usage_errors(tmp_path, capsys):
    from portrait_core.__main__ import main

    assert main(["invert", "--out", str(tmp_path / "o")]) == 2
    assert "give a PHOTO or --prepared DIR" in capsys.readouterr().err
    assert main(["invert", "x.jpg", "--out", str(tmp_path / "o"), "--sr-steps", "-1"]) == 2
    assert "--sr-steps must be in [0, 5000]" in capsys.readouterr().err


def test_worker_invert_requests_are_validated():
    from portrait_core.serve import ServeError, validate_request

    ok = validate_request("invert", {"prepared": "/d", "out": "/o", "sr_steps": 0}, {})
    assert ok["latent_steps"] == 40 and ok["sr_steps"] == 0 and ok["photo"] is None and ok["glb"] is False
    for params, match in [({"out": "/o"}, "a photo or a prepared"),
                          ({"photo": "a.jpg", "prepared": "/d", "out": "/o"}, "a photo or a prepared"),
                          ({"photo": "a.jpg"}, "out .* is required"),
                          ({"photo": "a\x00.jpg", "out": "/o"}, "photo must be a path"),
                          ({"photo": "a.jpg", "out": "/o", "latent_steps": 10 ** 9}, r"latent_steps must be in"),
                          ({"photo": "a.jpg", "out": "/o", "tune_steps": 2.5}, "tune_steps must be an integer"),
                          ({"photo": "a.jpg", "out": "/o", "steps": 3}, "unknown parameter")]:
        with pytest.raises(ServeError, match=match):
            validate_request("invert", params, {})


def test_worker_invert_reports_progress_and_can_be_cancelled(synth, tiny, tmp_path):
    from portrait_core.serve import Cancelled, Session

    s = Session()
    s.handle("load", {"checkpoint": str(tiny)}, {})
    seen = []
    params = {"prepared": str(synth), "index": 1, "out": str(tmp_path / "a"), "latent_steps": 1, "tune_steps": 1,
              "sr_steps": 1, "face_steps": 1, "detail_steps": 1, "candidates": 1}
    reply, _ = s.handle("invert", params, {}, progress=lambda x, label: seen.append((x, label)))
    assert Path(reply["checkpoint"]).is_file() and len(reply["body_shape"]) == 10
    assert seen[-1][0] == 1.0 and any("latent" in label for _, label in seen)
    xs = [x for x, _ in seen]
    assert xs == sorted(xs)
    with pytest.raises(Cancelled):
        s.handle("invert", {**params, "out": str(tmp_path / "b")}, {}, should_stop=lambda: True)
    assert not (tmp_path / "b" / "avatar.safetensors").exists()


def test_pivotal_tuning_also_tunes_the_face_texture(synth, tmp_path):
    """With ``face_texture`` on, the shared texture is tuned to the photo too, and the saved avatar renders it."""
    from portrait_core.generator import Generator, generator_config, load_generator, save_generator

    torch.manual_seed(0)
    g = Generator(generator_config("tiny", face_texture={"enabled": True, "resolution": 32, "grid": 16}))
    ckpt = save_generator(tmp_path / "tiny_ft.safetensors", g, info={"note": "random init, tests"})
    before = g.face_texture.texture.detach().clone()
    settings = dataclasses.replace(SETTINGS, face_steps=6, face_resolution=32)
    report = inv.run_invert(tmp_path / "avatar", prepared=synth, index=0, settings=settings, checkpoint=ckpt)
    assert report["timings"]["face"] > 0  # the face-texture stage ran
    tuned = load_generator(tmp_path / "avatar" / "avatar.safetensors")
    assert tuned.face_texture is not None
    assert (tuned.face_texture.texture - before).abs().max() > 1e-4  # the texture moved
    assert tuned.face_texture.rgb.weight.abs().sum() > 0  # the zero-initialised correction now acts
    assert report["reconstruction"]["psnr_matte"] > report["initial_reconstruction"]["psnr_matte"]
