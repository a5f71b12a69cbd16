"""The orbit camera preset and the render mode read from the checkpoint (real bpy 5.0.1, tiny random-init models)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blender_addon import backend, presets

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def tiny360_checkpoint(tmp_path_factory):
    """A random-init ``tiny`` generator in 360 mode, saved with save_generator."""
    import torch

    from portrait_core.generator import Generator, generator_config, save_generator

    path = tmp_path_factory.mktemp("ckpt360") / "tiny360.safetensors"
    torch.manual_seed(0)
    save_generator(path, Generator(generator_config("tiny", render={"mode": "360"})), info={"note": "tests"})
    return path


def _joints():
    import torch

    from portrait_core.body.model import BodyModel

    return BodyModel.synthetic().canonical(torch.zeros(1, 10)).joints[0].double().numpy()


# ------------------------------------------------------------------------------------------------ pure
def test_orbit_keys_step_a_full_turn_and_loop():
    frames, yaws = presets.orbit_keys(1, 8)
    assert frames == [1, 9] and yaws[1] - yaws[0] == pytest.approx(2 * math.pi)
    ys = [presets.orbit_yaw(f, 1, 8) for f in range(1, 10)]
    assert np.allclose(np.diff(ys), 2 * math.pi / 8)  # 8 frames, 45° each; frame 9 = frame 1 + 360°
    assert ys[0] == pytest.approx(presets.FRONT_YAW)
    with pytest.raises(ValueError, match="at least two frames"):
        presets.orbit_keys(5, 5)
    front = presets.FRONT_YAW
    assert not presets.outside_frontal_range(front) and not presets.outside_frontal_range(front + math.pi / 2)
    assert presets.outside_frontal_range(front + math.pi) and presets.outside_frontal_range(front - 2.0)
    assert not presets.outside_frontal_range(front + 2 * math.pi - 0.3)


def test_mode_read_from_checkpoints(tiny360_checkpoint, tiny_checkpoint, tmp_path):
    from portrait_core.serve import default_checkpoint

    assert backend.checkpoint_mode(str(tiny360_checkpoint)) == "360"
    assert backend.checkpoint_mode(str(tiny_checkpoint)) == "frontal"
    shipped = str(default_checkpoint())
    assert backend.checkpoint_mode(shipped) == "frontal"  # the shipped model is frontal
    assert backend.model_mode(backend.Settings(checkpoint=str(tiny360_checkpoint))) == "360"
    assert backend.model_mode(backend.Settings()) == "frontal"  # empty: the shipped model
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(backend.BackendError, match="bad.safetensors: cannot read the generator config"):
        backend.checkpoint_mode(str(bad))
    assert backend.model_mode(backend.Settings(checkpoint=str(bad))) == ""  # unknown, not a crash
    assert backend.model_mode(backend.Settings(checkpoint=str(tmp_path / "missing.safetensors"))) == ""


# ------------------------------------------------------------------------------------------------ Blender
@pytest.mark.parametrize("moved", [False, True])
def test_orbit_camera_turns_once_at_constant_distance(addon, bpy_module, moved):
    bpy = bpy_module
    sc, K = addon.scene, addon.constants
    rig = sc.create_rig(bpy.context, "rig", _joints())
    if moved:  # the orbit follows the avatar: same canonical cameras for a moved, turned rig
        rig.location = (0.3, -1.0, 0.2)
        rig.rotation_euler = (0.0, 0.0, 0.7)
    bpy.context.view_layer.objects.active = rig
    assert bpy.ops.busto.orbit_camera(frame_start=1, frame_end=8) == {"FINISHED"}
    scn = bpy.context.scene
    assert (scn.frame_start, scn.frame_end) == (1, 8) and scn.camera.name == "Busto orbit camera"
    look_at = np.asarray(K.PORTRAIT_LOOK_AT)
    yaws = []
    for f in [1, 2, 3, 4, 5, 6, 7, 8, 9, 4.5]:
        scn.frame_set(int(f), subframe=f - int(f))
        c2w, Kn = sc.camera_to_generator(scn.camera, rig, 64, 64)
        d = c2w[:3, 3] - look_at
        assert np.linalg.norm(d) == pytest.approx(K.PORTRAIT_RADIUS, rel=1e-5)  # constant distance
        assert np.allclose(c2w[:3, 2], -d / np.linalg.norm(d), atol=1e-5)  # OpenCV +Z looks at the centre
        assert abs(c2w[1, 0]) < 1e-5  # level horizon (no roll)
        yaws.append(math.atan2(d[2], d[0]))
    assert Kn[0, 0] == pytest.approx(0.5 / math.tan(math.radians(K.PORTRAIT_FOV_DEG / 2)), rel=1e-4)
    turn = np.unwrap(yaws[:9])
    assert turn[0] == pytest.approx(math.pi / 2, abs=1e-5)  # starts at the front (the portrait camera)
    assert np.allclose(np.diff(turn), 2 * math.pi / 8, atol=1e-5)  # linear, one way, 45° a frame
    assert turn[8] - turn[0] == pytest.approx(2 * math.pi, abs=1e-5)  # the full turn: frame 9 = frame 1
    assert (yaws[-1] - turn[3]) % (2 * math.pi) == pytest.approx(math.pi / 8, abs=1e-5)  # sub-frames too
    # running it again replaces the orbit instead of stacking a second one; the scene's settings apply
    bpy.context.scene.busto.anim_start, bpy.context.scene.busto.orbit_frames = 11, 30
    assert bpy.ops.busto.orbit_camera() == {"FINISHED"}
    assert (scn.frame_start, scn.frame_end) == (11, 40)
    assert len([o for o in bpy.data.objects if o.name.startswith("Busto orbit camera")]) == 2  # camera + pivot
    with pytest.raises(RuntimeError, match="must come after"):
        bpy.ops.busto.orbit_camera(frame_start=5, frame_end=5)


def test_back_portrait_camera_and_mode_of_a_frontal_model(addon, bpy_module, capfd):
    bpy = bpy_module
    sc, K = addon.scene, addon.constants
    ops = __import__("blender_addon.operators", fromlist=["_model_mode"])
    rig = sc.create_rig(bpy.context, "rig", _joints())
    bpy.context.view_layer.objects.active = rig
    assert ops._model_mode(bpy.context, rig) == "frontal"  # the tiny checkpoint of the scene: frontal
    bpy.context.scene.busto.checkpoint = ""
    assert ops._model_mode(bpy.context, rig) == "frontal"  # the shipped model
    # a full-yaw portrait camera (the back): allowed, warned about for a frontal model
    assert bpy.ops.busto.add_camera(kind="PORTRAIT", yaw=math.pi) == {"FINISHED"}
    c2w, _ = sc.camera_to_generator(bpy.context.scene.camera, rig, 64, 64)
    d = c2w[:3, 3] - np.asarray(K.PORTRAIT_LOOK_AT)
    assert d[2] < -0.99 * K.PORTRAIT_RADIUS  # behind the avatar (the front camera is on +Z)
    out = capfd.readouterr()
    assert "back views are outside its range" in out.out + out.err
    assert bpy.ops.busto.orbit_camera(frame_start=1, frame_end=4) == {"FINISHED"}  # works, with a warning
    out = capfd.readouterr()
    assert "the back half of the orbit is outside its range" in out.out + out.err
    assert bpy.ops.busto.add_camera(kind="PORTRAIT", yaw=0.5) == {"FINISHED"}  # front: no warning
    out = capfd.readouterr()
    assert "outside" not in out.out + out.err


def test_360_model_samples_all_round_and_renders_its_orbit(addon, bpy_module, tiny360_checkpoint, tmp_path,
                                                           capfd):
    bpy = bpy_module
    scn = bpy.context.scene
    scn.busto.checkpoint = str(tiny360_checkpoint)
    assert bpy.ops.busto.load_model() == {"FINISHED"}
    assert bpy.context.window_manager.busto.model_mode == "360"  # from the load reply
    scn.busto.new_seed, scn.busto.new_full_360 = 1, False
    assert bpy.ops.busto.sample_avatar(new_avatar=True) == {"FINISHED"}
    rig = bpy.context.view_layer.objects.active
    assert rig.busto.model_mode == "360" and rig.busto.full_360  # the checkpoint decided: previews all round
    assert tuple(rig.busto.preview.size) == (4 * 128, 128)
    capfd.readouterr()
    assert bpy.ops.busto.orbit_camera(frame_start=1, frame_end=4) == {"FINISHED"}
    out = capfd.readouterr()
    assert "360 model" in out.out + out.err and "outside" not in out.out + out.err  # no frontal warning
    assert bpy.ops.busto.setup_render(resolution=32) == {"FINISHED"}
    scn.busto.super_resolve = False
    scn.render.image_settings.file_format = "PNG"
    frames = []
    for f in (1, 3):  # front and back
        scn.frame_set(f)
        scn.render.filepath = str(tmp_path / f"orbit_{f}.png")
        bpy.ops.render.render(write_still=True)
        img = bpy.data.images.load(str(tmp_path / f"orbit_{f}.png"), check_existing=False)
        px = np.empty(img.size[0] * img.size[1] * 4, np.float32)
        img.pixels.foreach_get(px)
        bpy.data.images.remove(img)
        frames.append(px.reshape(32, 32, 4))
    for px in frames:
        assert np.isfinite(px).all() and px[..., :3].std() > 0  # not blank
    assert np.abs(frames[0] - frames[1]).max() > 0  # the back is another view
