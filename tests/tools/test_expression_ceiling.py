"""tools/expression_ceiling.py: what limits how far the expression deformation follows the 3DMM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from portrait_core.generator import Generator, save_generator
from portrait_core.generator.config import generator_config

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "expression_ceiling.py"


def test_smoothed_target_ratio_is_one_for_a_rigid_motion_and_drops_where_the_target_varies(load_tool):
    tool = load_tool("expression_ceiling")
    gen = torch.Generator().manual_seed(0)
    vertices = torch.rand(400, 3, generator=gen) * 0.1  # a 10 cm cube
    moving = torch.arange(50)
    rigid = torch.tensor([0.01, 0.0, 0.0]).expand(400, 3)
    for radius in (1e-4, 0.01, 0.05):
        assert abs(tool.smoothed_target_ratio(vertices, rigid, moving, radius) - 1.0) < 1e-6
    # a motion that alternates in sign every 1 cm along x: kept at a tiny radius, averaged away at a large one
    stripes = torch.where((vertices[:, :1] / 0.01).floor() % 2 == 0, 1.0, -1.0) * torch.tensor([0.0, 0.01, 0.0])
    ratios = [tool.smoothed_target_ratio(vertices, stripes, moving, r) for r in (1e-4, 0.005, 0.05)]
    assert abs(ratios[0] - 1.0) < 1e-6 and ratios[0] > ratios[1] > ratios[2] and abs(ratios[2]) < 0.3


def test_one_label_fit_moves_only_the_expression_branch_and_follows_the_3dmm_more_closely(load_tool):
    tool = load_tool("expression_ceiling")
    torch.manual_seed(0)
    G = Generator(generator_config("tiny")).eval()
    identity, body_shape = torch.randn(1, 80), torch.zeros(1, 10)
    expression = tool.control_expression(G, "jaw_open", 2.5)
    before = tool.ratios_by_grid(G, identity, body_shape, "jaw_open", 2.5, [0])[0]
    fitted = tool.fit_one_label(G, identity, expression, body_shape, steps=60)
    after = tool.ratios_by_grid(fitted, identity, body_shape, "jaw_open", 2.5, [0])[0]
    assert after > before + 0.2, (before, after)
    old, new = G.state_dict(), fitted.state_dict()
    changed = {k.split(".")[0] for k in old if not torch.equal(old[k], new[k])}
    assert changed == {"expression_deform", "expression_mapping"}
    assert G.cfg.render.expression_grid == fitted.cfg.render.expression_grid  # ratios_by_grid restores the config


def _run(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_command_prints_the_three_rows_and_refuses_bad_input(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_generator(path, Generator(generator_config("tiny")))
    run = _run(path, "--controls", "smile", "--identities", "2", "--steps", "2", "--grids", "8")
    assert run.returncode == 0, run.stderr
    assert "smile: 3dmm smoothed at 2 mm" in run.stdout and "generator" in run.stdout
    assert "one-label fit (2 steps)" in run.stdout and "8^3" in run.stdout and "net" in run.stdout
    bad = _run(path, "--controls", "grin")
    assert bad.returncode == 2 and "unknown ['grin']" in bad.stderr
    none = _run(path, "--identities", "0")
    assert none.returncode == 2 and "--identities must be at least 1" in none.stderr
    missing = _run(tmp_path / "nope.safetensors", "--steps", "0")
    assert missing.returncode == 2 and "nope.safetensors" in missing.stderr


def test_a_generator_that_follows_the_3dmm_has_no_network_column(load_tool):
    """``expression.follow_3dmm`` needs a grid, so the network column is NaN instead of an invalid config."""
    import math

    tool = load_tool("expression_ceiling")
    torch.manual_seed(0)
    G = Generator(generator_config("tiny", expression={"follow_3dmm": True},
                                   render={"expression_grid": 16, "face_grid": 24})).eval()
    row = tool.ratios_by_grid(G, torch.randn(2, 80), torch.zeros(2, 10), "jaw_open", 2.5, [16, 0])
    assert math.isnan(row[0]) and row[16] > 0.5
    assert G.cfg.render.expression_grid == 16  # restored
