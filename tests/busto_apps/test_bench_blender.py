"""``python -m busto_apps bench-blender`` (alias ``python -m portrait_core bench-blender``): the add-on workflow in a
headless Blender subprocess (tiny random-init generator, 2 frames at 32^2), its report and images, without
Blender's EGL probing lines on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.blender
@pytest.mark.parametrize("command", [["busto_apps", "bench-blender"]])
def test_bench_blender_writes_timings_and_the_side_by_side(tmp_path, command):
    pytest.importorskip("bpy", reason="bench-blender needs bpy (the 'blender' extra)")
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", *command, "--random-init", "tiny",
                           "--frames", "2", "--size", "32", "--mesh-resolution", "32", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EGL" not in proc.stderr and "EGL" not in proc.stdout, proc.stderr[-2000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["random_init"] and report["frames"] == 2 and report["mesh_faces"] > 0
    assert report["egl_probe_lines_hidden"] >= 0
    for step in ("load_model", "sample_avatar", "extract_mesh", "render_animation"):
        assert report["timings_s"][step] > 0, step
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["frame_0001.png", "frame_0002.png"]
    from PIL import Image

    side = Image.open(out / "side_by_side.png")
    assert side.size == (3 * 32, 32)


def test_portrait_core_names_the_apps_as_aliases():
    from portrait_core.__main__ import COMMANDS

    assert COMMANDS["bench-blender"][0] == "busto_apps.bench_blender"
    from busto_apps.__main__ import COMMANDS as APPS

    assert APPS["bench-blender"][0] == "busto_apps.bench_blender"


def test_hidden_lines_drops_egl_probing_from_c_and_child_output_only():
    code = textwrap.dedent("""
        import os, subprocess, sys
        from busto_apps.blender_output import hidden_lines
        with hidden_lines() as n:
            os.write(2, b"EGL Error (0x3009): EGL_BAD_MATCH: Arguments are inconsistent\\nkeep: one\\n")
            print("keep: two", file=sys.stderr, flush=True)
            subprocess.run(["sh", "-c", "echo 'EGL Error (0x3009): child' >&2; echo 'keep: three' >&2"])
        print("after", file=sys.stderr, flush=True)
        print("hidden", n["hidden"])
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["keep: one", "keep: two", "keep: three", "after"]
    assert "hidden 2" in r.stdout
