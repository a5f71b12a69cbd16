"""The contact sheet of a 360-degree checkpoint: 8 yaws all round and a row from above."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from portrait_core.assets.contact_sheet import contact_sheet
from portrait_core.generator import Generator, generator_config


def test_a_360_checkpoint_gets_a_full_turn_and_a_view_from_above(tmp_path):
    torch.manual_seed(0)
    g = Generator(generator_config("tiny", render={"mode": "360"})).eval()
    path = contact_sheet(g, None, tmp_path / "sheet.png", avatars=1, columns=3, labels=False)
    sheet = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    size = g.cfg.output_resolution
    # rows: avatar turn, from above, head turn, nod, jaw_open, smile; the turn rows are 8 tiles wide
    assert sheet.shape == (6 * size, 8 * size, 3)
    turn = [sheet[:size, k * size:(k + 1) * size] for k in range(8)]
    front, side, back = turn[0], turn[2], turn[4]
    assert np.abs(front - back).mean() > 1.0 and np.abs(front - side).mean() > 1.0
    assert (sheet[size:2 * size] < 250).any()  # something is seen from above
    assert (sheet[2 * size:, 3 * size:] == 255).all()  # the 3-column sweep rows leave the rest white
