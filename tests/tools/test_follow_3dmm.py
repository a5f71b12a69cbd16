"""tools/follow_3dmm.py: switching a checkpoint to the 3DMM's own expression motion, keeping what it is."""

from __future__ import annotations

import torch

from portrait_core.generator import Generator, load_generator, save_generator
from portrait_core.generator.config import generator_config


def _source(tmp_path):
    torch.manual_seed(0)
    G = Generator(generator_config("tiny"))
    src = tmp_path / "src" / "g.safetensors"
    src.parent.mkdir()
    save_generator(src, G, info={"method": "test", "samplers": "g_samplers.safetensors"})
    (src.parent / "g_samplers.safetensors").write_bytes(b"samplers")
    return G, src


def test_switches_on_and_off_and_keeps_weights_info_and_samplers(load_tool, tmp_path):
    tool = load_tool("follow_3dmm")
    G, src = _source(tmp_path)
    out = tmp_path / "out" / "f.safetensors"
    out.parent.mkdir()
    assert tool.main([str(src), "--out", str(out), "--face-grid", "24", "--iterations", "4"]) == 0
    H = load_generator(out)
    assert H.cfg.expression.follow_3dmm and H.cfg.render.face_grid == 24 and H.cfg.render.expression_iterations == 4
    for k, v in G.state_dict().items():
        assert torch.equal(v, H.state_dict()[k]), k
    assert H.checkpoint_info["method"] == "test"
    assert H.checkpoint_info["follow_3dmm"] == {"on": True, "face_grid": 24, "iterations": 4,
                                                "source": "g.safetensors"}
    assert (out.parent / "g_samplers.safetensors").read_bytes() == b"samplers"
    back = tmp_path / "out" / "b.safetensors"
    assert tool.main([str(out), "--out", str(back), "--off", "--face-grid", "0"]) == 0
    B = load_generator(back)
    assert not B.cfg.expression.follow_3dmm and B.cfg.render.face_grid == 0


def test_bad_settings_and_files_are_refused_and_write_nothing(load_tool, tmp_path, capsys):
    import pytest

    tool = load_tool("follow_3dmm")
    _, src = _source(tmp_path)
    out = tmp_path / "f.safetensors"
    with pytest.raises(SystemExit) as e:
        tool.main([str(src), "--out", str(out), "--face-grid", "1"])
    assert e.value.code == 2 and "face_grid" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert not out.exists()
