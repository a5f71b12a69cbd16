"""tools/average_generators.py: the weight average of two generators."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from portrait_core.generator import Generator, load_generator, save_generator
from portrait_core.generator.config import generator_config

TOOL = Path(__file__).resolve().parents[2] / "tools" / "average_generators.py"


def test_average_state_mixes_shared_float_tensors_only(load_tool):
    tool = load_tool("average_generators")
    base = {"w": torch.zeros(3), "steps": torch.tensor([1]), "only_base": torch.ones(2)}
    other = {"w": torch.full((3,), 4.0), "steps": torch.tensor([7]), "extra": torch.ones(2)}
    out, mixed = tool.average_state(base, other, 0.25)
    assert mixed == ["w"] and torch.equal(out["w"], torch.full((3,), 1.0))
    assert torch.equal(out["steps"], torch.tensor([7])) and "only_base" not in out and torch.equal(out["extra"], torch.ones(2))
    assert torch.equal(tool.average_state(base, other, 0.0)[0]["w"], base["w"])
    with pytest.raises(ValueError, match="w: shape"):
        tool.average_state({"w": torch.zeros(2)}, other, 0.5)


def test_tool_writes_the_midpoint_generator(tmp_path):
    torch.manual_seed(0)
    a, b = Generator(generator_config("tiny")), Generator(generator_config("tiny"))
    save_generator(tmp_path / "a.safetensors", a)
    save_generator(tmp_path / "b.safetensors", b)
    out = tmp_path / "mid.safetensors"
    run = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                          "--weight", "0.5", "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    averaged = load_generator(out)
    assert averaged.checkpoint_info["weight_average"]["weight"] == 0.5
    mid = averaged.state_dict()
    sa, sb = a.state_dict(), b.state_dict()
    name = next(k for k, v in sa.items() if v.is_floating_point() and not torch.equal(v, sb[k]))
    assert torch.allclose(mid[name], (sa[name] + sb[name]) / 2, atol=1e-6)
    bad = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                          "--weight", "2", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--weight must be in [0, 1]" in bad.stderr
