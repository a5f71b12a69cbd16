"""The add-on's "Avatar from Photo" operator with real bpy: the worker's ``invert`` on a SynthPortrait record
(known labels) into the random-init ``tiny`` model with one step per stage, then the avatar in the scene with its
rig and mesh, keyed and rendered with Busto Neural."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.blender
ROOT = Path(__file__).resolve().parents[2]
STEPS = {"latent_steps": 1, "tune_steps": 1, "sr_steps": 1, "face_steps": 1, "detail_steps": 1, "candidates": 1}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    r = subprocess.run([sys.executable, "-m", "portrait_core.data", "synth", "--out", str(out), "--count", "1",
                        "--resolution", "64", "--face-resolution", "32", "--yaw", "frontal", "--seed", "31",
                        "--views-per-identity", "1", "--workers", "1"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def _png(bpy, path) -> np.ndarray:
    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(px)
        return np.flipud(px.reshape(h, w, 4))
    finally:
        bpy.data.images.remove(img)


def test_avatar_from_photo_loads_a_rigged_avatar_ready_to_animate(addon, bpy_module, synth, tmp_path):
    bpy = bpy_module
    sc = bpy.context.scene
    sc.busto.mesh_resolution, sc.busto.mesh_morphs = 32, 2
    out = tmp_path / "avatar"
    assert bpy.ops.busto.avatar_from_photo("INVOKE_DEFAULT", prepared=str(synth), index=0, output_dir=str(out),
                                           **STEPS) == {"FINISHED"}
    rig = bpy.context.view_layer.objects.active
    assert rig.type == "ARMATURE" and rig.busto.is_avatar and rig.name.startswith("Busto photo")
    assert Path(rig.busto.checkpoint) == out / "avatar.safetensors" and (out / "sheet.png").is_file()
    labels_betas = __import__("json").loads((synth / "labels.json").read_text())["images"][0]["body_shape"]
    assert np.allclose(list(rig.busto.body_shape), labels_betas, atol=1e-4)
    assert rig.busto.preview is not None
    mesh = rig.busto.mesh
    assert mesh is not None and len(mesh.data.vertices) > 0 and mesh.parent == rig
    assert mesh.data.shape_keys is not None and len(mesh.data.shape_keys.key_blocks) == 3  # basis + 2 morphs
    assert "Avatar from photo" not in bpy.context.window_manager.busto.job_label  # the job is over
    # keyframe the head and render two frames with Busto Neural through the avatar's own checkpoint
    assert bpy.ops.busto.add_camera(kind="PORTRAIT") == {"FINISHED"}
    assert bpy.ops.busto.setup_render(resolution=32) == {"FINISHED"}
    sc.render.image_settings.file_format = "PNG"
    sc.render.image_settings.color_mode = "RGBA"
    head = rig.pose.bones["head"]
    for f, angle in ((1, 0.0), (2, 0.5)):
        head.rotation_quaternion = (math.cos(angle / 2), 0.0, math.sin(angle / 2), 0.0)
        head.keyframe_insert("rotation_quaternion", frame=f)
    sc.frame_start, sc.frame_end = 1, 2
    sc.render.filepath = str(tmp_path / "frames" / "f_####")
    bpy.ops.render.render(animation=True)
    frames = [_png(bpy, tmp_path / "frames" / f"f_{f:04d}.png") for f in (1, 2)]
    for fr in frames:
        assert fr.shape == (32, 32, 4) and (fr[..., 3] > 0.5).mean() > 0.05  # the avatar covers the frame
    assert np.abs(frames[0] - frames[1]).mean() > 1e-3  # the head turned


def test_avatar_from_photo_reports_bad_input(addon, bpy_module, tmp_path):
    bpy = bpy_module
    with pytest.raises(RuntimeError, match="nope.jpg: no such file"):
        bpy.ops.busto.avatar_from_photo(filepath=str(tmp_path / "nope.jpg"), **STEPS)
    text = tmp_path / "notes.png"
    text.write_text("not a photo")
    with pytest.raises(RuntimeError, match="notes.png: not an image file"):
        bpy.ops.busto.avatar_from_photo(filepath=str(text), output_dir=str(tmp_path / "o"), **STEPS)
    assert not (tmp_path / "o").exists()
    assert not [o for o in bpy.data.objects if o.type == "ARMATURE"]


def test_avatar_from_photo_cancel(addon, bpy_module, synth, tmp_path):
    bpy = bpy_module
    jobs, ops = addon.jobs, addon.operators
    state = {"settings": addon.prefs.resolve(bpy.context), "photo": None, "prepared": str(synth), "index": 0,
             "out": str(tmp_path / "c"), "steps": (1, 1, 1, 1, 1), "candidates": 1, "extract": False,
             "super_resolve": True}
    job = jobs.Job("Avatar from photo", lambda j: ops.BUSTO_OT_avatar_from_photo.work(None, j, state))
    job.cancel()
    job.run()
    assert isinstance(job.error, addon.backend.Cancelled)
    assert not (tmp_path / "c" / "avatar.safetensors").exists()
