"""``python -m portrait_core bench-blender``: the add-on workflow in a headless Blender subprocess (tiny random-init
generator, 2 frames at 32^2), its report and images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def test_bench_blender_writes_timings_and_the_side_by_side(tmp_path):
    pytest.importorskip("bpy", reason="bench-blender needs bpy (the 'blender' extra)")
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "portrait_core", "bench-blender", "--random-init", "tiny",
                           "--frames", "2", "--size", "32", "--mesh-resolution", "32", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["random_init"] and report["frames"] == 2 and report["mesh_faces"] > 0
    for step in ("load_model", "sample_avatar", "extract_mesh", "render_animation"):
        assert report["timings_s"][step] > 0, step
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["frame_0001.png", "frame_0002.png"]
    from PIL import Image

    side = Image.open(out / "side_by_side.png")
    assert side.size == (3 * 32, 32)
