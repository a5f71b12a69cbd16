"""``python -m portrait_core bench`` on the tiny preset."""

from __future__ import annotations

import json

from portrait_core.__main__ import main as cli_main


def test_bench_prints_one_row_per_preset_and_resolution(capsys):
    assert cli_main(["bench", "--presets", "tiny", "--resolutions", "32,64", "--frames", "1", "--device", "cpu",
                     "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["preset"], r["resolution"], r["rays"]) for r in rows] == [("tiny", 32, 16), ("tiny", 64, 32)]
    for r in rows:
        assert r["frame_median_s"] > 0 and r["bake_warm_s"] > 0 and r["peak_memory_mb"] > 0


def test_bench_table_and_errors(capsys):
    assert cli_main(["bench", "--presets", "tiny", "--resolutions", "32", "--frames", "1", "--no-sr"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| preset") and "frame median s" in out and "| tiny" in out
    assert cli_main(["bench", "--presets", "tiny", "--resolutions", "33", "--frames", "1"]) == 2
    assert "not a multiple" in capsys.readouterr().err


def test_bench_times_a_checkpoint_in_its_own_mode(capsys, tmp_path):
    import torch

    from portrait_core.generator import Generator, generator_config, save_generator

    torch.manual_seed(0)
    path = tmp_path / "g.safetensors"
    save_generator(path, Generator(generator_config("tiny", render={"mode": "360"})), info={})
    assert cli_main(["bench", "--presets", str(path), "--resolutions", "32", "--frames", "1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["preset"] == str(path) and row["mode"] == "360" and row["frame_median_s"] > 0
