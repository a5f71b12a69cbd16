"""``python -m portrait_core sample`` on the tiny preset."""

from __future__ import annotations

import numpy as np
from PIL import Image

from portrait_core.__main__ import main as cli_main
from portrait_core.cli.sample import yaw_sweep
from portrait_core.generator import Generator, generator_config, save_generator
from portrait_core.generator.loading import parse_int_list


def test_sample_grid_from_a_random_preset(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert cli_main(["sample", "--preset", "tiny", "--mode", "360", "--seeds", "0-1", "--yaws", "3", "--depth",
                     "--out", str(out)]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (4 * 64, 3 * 64, 3)  # (2 avatars + 2 depth rows) x 3 yaws of 64^2 (32^2 rays, SR x2)
    assert "RANDOM-INIT 'tiny'" in capsys.readouterr().err
    assert img[:64].std() > 1  # not a blank image: the body prior shows


def test_sample_from_a_checkpoint(tmp_path):
    ckpt = tmp_path / "g.safetensors"
    save_generator(ckpt, Generator(generator_config("tiny")))
    out = tmp_path / "grid.png"
    assert cli_main(["sample", "--checkpoint", str(ckpt), "--seeds", "3", "--yaws", "2", "--no-sr",
                     "--out", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (32, 64, 3)


def test_sample_rejects_bad_seeds(tmp_path, capsys):
    assert cli_main(["sample", "--preset", "tiny", "--seeds", "5-2", "--out", str(tmp_path / "x.png")]) == 2
    assert "end before start" in capsys.readouterr().err


def test_yaw_sweep_and_seed_parsing():
    full = yaw_sweep(4, "360", 0.5)
    assert np.allclose(np.diff(full.numpy()), np.pi / 2) and np.isclose(full[0].item(), np.pi / 2)
    assert np.isclose(full[2].item(), 3 * np.pi / 2)  # the back view
    front = yaw_sweep(3, "frontal", 0.4)
    assert np.allclose(front.numpy(), [np.pi / 2 - 0.4, np.pi / 2, np.pi / 2 + 0.4])
    assert parse_int_list("0-2,7, 9-10") == [0, 1, 2, 7, 9, 10]
