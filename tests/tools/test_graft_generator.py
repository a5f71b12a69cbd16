"""tools/graft_generator.py: one generator's super-resolution put on another."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from portrait_core.generator import Generator, load_generator, save_generator
from portrait_core.generator.config import generator_config

TOOL = Path(__file__).resolve().parents[2] / "tools" / "graft_generator.py"


def test_graft_state_takes_the_named_tensors_only(load_tool):
    tool = load_tool("graft_generator")
    base = {"superres.w": torch.zeros(2), "superres_style_avg": torch.zeros(3), "radiance.w": torch.zeros(2)}
    donor = {"superres.w": torch.ones(2), "superres_style_avg": torch.ones(3), "radiance.w": torch.ones(2)}
    out, copied = tool.graft_state(base, donor, ("superres.", "superres_style_avg"))
    assert copied == ["superres.w", "superres_style_avg"]
    assert torch.equal(out["superres.w"], torch.ones(2)) and torch.equal(out["radiance.w"], torch.zeros(2))
    with pytest.raises(ValueError, match="'face.' names no tensor"):
        tool.graft_state(base, donor, ("face.",))
    with pytest.raises(ValueError, match="superres.w: shape"):
        tool.graft_state(base, {"superres.w": torch.ones(3)}, ("superres.",))


def test_tool_puts_the_donors_super_resolution_on_the_base(tmp_path):
    torch.manual_seed(0)
    base, donor = Generator(generator_config("tiny")), Generator(generator_config("tiny"))
    save_generator(tmp_path / "base.safetensors", base, info={"step": 7})
    save_generator(tmp_path / "donor.safetensors", donor)
    out = tmp_path / "graft.safetensors"
    run = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "base.safetensors"),
                          str(tmp_path / "donor.safetensors"), "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    grafted = load_generator(out)
    assert grafted.checkpoint_info["step"] == 7 and grafted.checkpoint_info["graft"]["donor"] == "donor.safetensors"
    sb, sd, sg = base.state_dict(), donor.state_dict(), grafted.state_dict()
    taken = {n for n in sg if n.startswith(("superres.", "superres_mapping.", "superres_style_avg"))}
    assert taken and any(not torch.equal(sb[n], sd[n]) for n in taken)
    for name, value in sg.items():
        assert torch.equal(value, sd[name] if name in taken else sb[name]), name
    bad = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "base.safetensors"),
                          str(tmp_path / "donor.safetensors"), "--prefixes", "nothing.", "--out",
                          str(tmp_path / "x.safetensors")], capture_output=True, text=True)
    assert bad.returncode == 2 and "'nothing.' names no tensor" in bad.stderr and not (tmp_path / "x.safetensors").exists()
