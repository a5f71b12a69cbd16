"""tools/colour_gain.py: scaling the radiance mapping's reading of the appearance code's clothing colours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from portrait_core.assets.appearance import APPEARANCE_LAYOUT
from portrait_core.generator import Generator, load_generator, save_generator
from portrait_core.generator.config import generator_config

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "colour_gain.py"
SAMPLERS = ROOT / "portrait_core" / "assets" / "default_samplers.safetensors"


def test_scale_code_columns_scales_the_named_blocks_only(load_tool):
    tool = load_tool("colour_gain")
    weight = torch.randn(6, 10 + 8)
    scaled = tool.scale_code_columns(weight, 10, [(1, 3), (5, 6)], 2.0)
    code_cols = {10 + i for i in (1, 2, 5)}
    for c in range(18):
        assert torch.equal(scaled[:, c], weight[:, c] * (2.0 if c in code_cols else 1.0)), c
    assert not torch.equal(scaled, weight) and torch.equal(weight, weight.clone())  # a copy
    with pytest.raises(ValueError, match="outside the 8-d code"):
        tool.scale_code_columns(weight, 10, [(6, 9)], 2.0)


def _run(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_tool_strengthens_the_clothing_colours_of_an_appearance_code_generator(load_tool, tmp_path):
    torch.manual_seed(0)
    G = Generator(generator_config("tiny"))
    src = tmp_path / "g.safetensors"
    save_generator(src, G, info={"noise_latent": {"kind": "appearance_code"}})
    out = tmp_path / "gain.safetensors"
    run = _run(src, "--gain", "1.5", "--samplers", SAMPLERS, "--out", out)
    assert run.returncode == 0, run.stderr
    new = load_generator(out)
    blocks = load_tool("colour_gain").CLOTHING_BLOCKS
    assert new.checkpoint_info["colour_gain"] == {"gain": 1.5, "blocks": list(blocks),
                                                  "source": "g.safetensors"}
    w0, w1 = G.radiance_mapping.net[0].weight, new.radiance_mapping.net[0].weight
    scaled = {G.cfg.identity_dim + i for b in blocks for i in range(*APPEARANCE_LAYOUT[b])}
    assert len(scaled) == 9
    for c in range(w0.shape[1]):
        torch.testing.assert_close(w1[:, c], w0[:, c] * (1.5 if c in scaled else 1.0), rtol=0, atol=0)
    # the truncation average moved with the mapping; everything else is the source's
    assert not torch.equal(new.radiance_style_avg, G.radiance_style_avg)
    changed = {k for k, v in new.state_dict().items() if not torch.equal(v, G.state_dict()[k])}
    assert changed == {"radiance_mapping.net.0.weight", "radiance_style_avg"}


def test_tool_refuses_what_it_cannot_scale(tmp_path):
    torch.manual_seed(0)
    plain = tmp_path / "plain.safetensors"
    save_generator(plain, Generator(generator_config("tiny")))
    run = _run(plain, "--gain", "1.3", "--samplers", SAMPLERS, "--out", tmp_path / "x.safetensors")
    assert run.returncode == 2 and "not an appearance code" in run.stderr
    run = _run(plain, "--gain", "1.3", "--blocks", "shirt", "--out", tmp_path / "x.safetensors")
    assert run.returncode == 2 and "unknown ['shirt']" in run.stderr
    run = _run(plain, "--gain", "0", "--out", tmp_path / "x.safetensors")
    assert run.returncode == 2 and "--gain must be in (0, 4]" in run.stderr
    assert not (tmp_path / "x.safetensors").exists()
