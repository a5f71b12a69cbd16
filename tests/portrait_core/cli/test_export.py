"""``python -m portrait_core export``: GLB with skin/morphs/animation, static formats, clear failures."""

from __future__ import annotations

import json

from portrait_core.cli.export import main


def test_export_glb_random_init(tmp_path, keyframes_dir, capsys):
    import pygltflib

    out = tmp_path / "avatar.glb"
    rc = main(["--preset", "tiny", "--seed", "2", "--resolution", "40", "--morphs", "jaw_open,smile,blink",
               "--keyframes", str(keyframes_dir / "real_video_sample1"), "--key-interval", "1", "--json", "--texture", "0",
               "--out", str(out)])
    assert rc == 0
    cap = capsys.readouterr()
    assert "RANDOM-INIT" in cap.err
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["morphs"] == ["jaw_open", "smile", "blink"] and summary["joints"] == 12
    g = pygltflib.GLTF2().load(str(out))
    assert g.meshes[0].extras["targetNames"] == ["jaw_open", "smile", "blink"]
    assert len(g.skins[0].joints) == 12 and len(g.animations) == 1


def test_export_static_posed(tmp_path):
    out = tmp_path / "avatar.ply"
    pose = ["0"] * 9 + ["0.4", "0", "0"] + ["0"] * 6
    assert main(["--preset", "tiny", "--resolution", "32", "--pose", *pose, "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_export_failures_write_nothing(tmp_path, capsys):
    out = tmp_path / "x.glb"
    assert main(["--preset", "tiny", "--resolution", "24", "--level", "0.99", "--out", str(out)]) == 1
    assert "no mesh written" in capsys.readouterr().err and not out.exists()
    assert main(["--preset", "tiny", "--out", str(tmp_path / "x.stl")]) == 2


def test_export_defaults_to_the_shipped_model(tmp_path, capsys):
    from portrait_core.generator.loading import default_checkpoint

    if not default_checkpoint().is_file():
        import pytest

        pytest.skip(f"no shipped default checkpoint at {default_checkpoint()}")
    out = tmp_path / "avatar.obj"
    assert main(["--seed", "1", "--resolution", "48", "--out", str(out)]) == 0
    assert "shipped default checkpoint" in capsys.readouterr().err and out.stat().st_size > 1000
