"""The add-on in real bpy 5.0.1: registration, the extension package, panels, the rig and keyframes."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.blender


def _busto_types(bpy):
    return sorted(n for n in dir(bpy.types) if n.startswith("BUSTO_") or n.startswith("Busto"))


def test_register_unregister_leaves_nothing_behind(registered, bpy_module):
    bpy = bpy_module
    bpy.ops.wm.read_factory_settings(use_empty=True)
    assert "busto" in dir(bpy.types.Scene) and _busto_types(bpy)
    bpy.context.scene.render.engine = "BUSTO_NEURAL"
    bpy.context.scene.render.engine = "BLENDER_WORKBENCH"
    try:
        registered.unregister()
        assert _busto_types(bpy) == []
        for owner in (bpy.types.Scene, bpy.types.Object, bpy.types.WindowManager):
            assert not hasattr(owner, "busto"), owner
        with pytest.raises((AttributeError, RuntimeError)):
            bpy.ops.busto.load_model()
        with pytest.raises(TypeError):
            bpy.context.scene.render.engine = "BUSTO_NEURAL"
        assert "BUSTO_NEURAL" not in bpy.types.RENDER_PT_format.COMPAT_ENGINES
    finally:
        registered.register()
    # registering twice in a row is refused loudly by Blender, so register/unregister must stay paired
    assert _busto_types(bpy) and hasattr(bpy.types.Scene, "busto")


def _ext_cli(bpy):
    return Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"


def _build_zip(bpy, out_dir: Path) -> Path:
    cli = _ext_cli(bpy)
    v = subprocess.run([sys.executable, str(cli), "validate", str(ROOT / "blender_addon")], capture_output=True,
                       text=True)
    assert v.returncode == 0 and "Success" in v.stdout, v.stdout + v.stderr
    b = subprocess.run([sys.executable, str(cli), "build", "--source-dir", str(ROOT / "blender_addon"),
                        "--output-dir", str(out_dir)], capture_output=True, text=True)
    assert b.returncode == 0, b.stdout + b.stderr
    zips = list(out_dir.glob("busto-*.zip"))
    assert len(zips) == 1, list(out_dir.iterdir())
    return zips[0]


def test_extension_builds_validates_installs(registered, bpy_module, tmp_path, recorder):
    import zipfile

    bpy = bpy_module
    z = _build_zip(bpy, tmp_path)
    names = zipfile.ZipFile(z).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names and "convert.py" in names
    assert not any("__pycache__" in n for n in names)
    registered.unregister()  # the installed copy registers the same class names
    try:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        assert bpy.ops.extensions.package_install_files(filepath=str(z), repo="user_default",
                                                        enable_on_install=True) == {"FINISHED"}
        addon = bpy.context.preferences.addons.get("bl_ext.user_default.busto")
        assert addon is not None
        prefs = addon.preferences
        assert prefs.backend == "AUTO" and prefs.device == "cpu" and prefs.checkpoint == ""
        prefs.python = sys.executable
        assert hasattr(bpy.types, "BUSTO_PT_model") and hasattr(bpy.types.Scene, "busto")
        bpy.context.scene.render.engine = "BUSTO_NEURAL"
        from bl_ext.user_default.busto import prefs as installed_prefs  # noqa: PLC0415

        s = installed_prefs.resolve(bpy.context)
        assert s.python == sys.executable and s.cache_dir and Path(s.cache_dir).is_dir()
        layout = recorder()
        installed_prefs.draw_preferences(layout, prefs)
        assert {"checkpoint", "device", "backend", "python", "site_packages", "cache_dir"} <= set(layout.props())
        assert any(t.startswith("In-process: available") for t in layout.texts())
        repo_index = [r.module for r in bpy.context.preferences.extensions.repos].index("user_default")
        assert bpy.ops.extensions.package_uninstall(repo_index=repo_index, pkg_id="busto") == {"FINISHED"}
        assert not hasattr(bpy.types, "BUSTO_PT_model")
    finally:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        registered.register()


def test_registers_and_explains_itself_without_torch(bpy_module, tmp_path, run_python):
    z = _build_zip(bpy_module, tmp_path)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # a Blender without torch: 'import torch' fails
        sys.modules["portrait_core"] = None
        import bpy
        bpy.ops.wm.read_factory_settings(use_empty=True)
        assert bpy.ops.extensions.package_install_files(filepath={str(z)!r}, repo="user_default",
                                                        enable_on_install=True) == {{"FINISHED"}}
        assert hasattr(bpy.types, "BUSTO_PT_model")
        labels = []
        class L:
            def __getattr__(self, name):
                def f(*a, **k):
                    if name == "label": labels.append(k.get("text", a[0] if a else ""))
                    return L()
                return f
        class Stub: layout = L()
        bpy.types.BUSTO_PT_model.draw(Stub(), bpy.context)
        print("\\n".join(labels))
        try:
            bpy.ops.busto.load_model()
        except RuntimeError as e:
            print("REPORT:", e)
        assert type(sys.modules.get("torch")) is not type(sys), "torch got imported"
    """)
    r = run_python(code, env={"BLENDER_USER_RESOURCES": str(tmp_path / "user")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "torch / portrait_core are missing" in r.stdout
    assert "Worker Python" in r.stdout
    assert "REPORT:" in r.stdout and "Busto needs torch and portrait_core" in r.stdout


def _draw_all(bpy, recorder):
    out = {}
    for name in ("BUSTO_PT_model", "BUSTO_PT_avatar", "BUSTO_PT_geometry", "BUSTO_PT_rig", "BUSTO_PT_animate",
                 "BUSTO_PT_render", "BUSTO_PT_engine_settings"):
        panel = getattr(bpy.types, name)
        stub = type("Stub", (), {"layout": recorder()})()
        panel.draw(stub, bpy.context)
        out[name] = stub.layout
    return out


def test_panels_draw_without_and_with_an_avatar(addon, bpy_module, recorder):
    bpy = bpy_module
    layouts = _draw_all(bpy, recorder)
    assert "busto.load_model" in layouts["BUSTO_PT_model"].operators()
    assert not any("no model shipped" in t for t in layouts["BUSTO_PT_model"].texts())  # a checkpoint is set
    bpy.context.scene.busto.checkpoint = ""
    texts = _draw_all(bpy, recorder)["BUSTO_PT_model"].texts()
    shipped = addon.backend.shipped_checkpoint(addon.backend.Settings())
    assert any(("Using the shipped model" if shipped else "No model shipped") in t for t in texts), texts
    assert "busto.sample_avatar" in layouts["BUSTO_PT_avatar"].operators()
    assert "No avatar yet" in layouts["BUSTO_PT_avatar"].texts()
    assert "busto.setup_render" in layouts["BUSTO_PT_render"].operators()
    rig = addon.scene.create_rig(bpy.context, "Busto avatar 0", _canonical_joints())
    bpy.context.view_layer.objects.active = rig
    layouts = _draw_all(bpy, recorder)
    assert {f"exp_{n}" for n in addon.constants.EXPRESSION_SLIDERS} <= set(layouts["BUSTO_PT_rig"].props())
    assert layouts["BUSTO_PT_rig"].props().count("rotation_quaternion") == 6
    assert {"busto.import_keyframes", "busto.export_keyframes", "busto.animation_preset"} <= set(
        layouts["BUSTO_PT_animate"].operators())
    assert "busto.extract_mesh" in layouts["BUSTO_PT_geometry"].operators()
    assert bpy.types.BUSTO_PT_engine_settings.poll(bpy.context) is False
    bpy.context.scene.render.engine = "BUSTO_NEURAL"
    assert bpy.types.BUSTO_PT_engine_settings.poll(bpy.context) is True


_JOINTS = None


def _canonical_joints(betas=None):
    global _JOINTS
    import torch

    from portrait_core.body.model import BodyModel

    if betas is None and _JOINTS is not None:
        return _JOINTS
    body = BodyModel.synthetic()
    b = torch.zeros(1, 10) if betas is None else torch.as_tensor(betas, dtype=torch.float32).reshape(1, 10)
    j = body.canonical(b).joints[0].double().numpy()
    if betas is None:
        _JOINTS = j
    return j


def test_rig_pose_code_roundtrip_and_forward_kinematics(addon, bpy_module):
    import torch

    from portrait_core.body.model import BodyModel

    bpy = bpy_module
    sc, cv, K = addon.scene, addon.convert, addon.constants
    joints = _canonical_joints()
    rig = sc.create_rig(bpy.context, "rig", joints)
    assert rig.mode == "OBJECT" and len(rig.data.bones) == len(K.RIG_JOINTS)
    # rest pose = canonical pose: bone heads at C * canonical joints
    for j in K.RIG_JOINTS:
        head = np.array(rig.data.bones[K.SMPL_JOINT_NAMES[j]].head_local)
        assert np.allclose(head, cv.smpl_to_blender_points(joints[j]), atol=1e-6)
    rng = np.random.default_rng(1)
    pose = rng.normal(size=(6, 3)) * 0.3
    sc.set_pose_code(rig, pose)
    bpy.context.view_layer.update()
    assert np.abs(sc.read_pose_code(rig) - pose).max() < 1e-5
    # Blender's forward kinematics reproduces the body model's posed joints
    body = BodyModel.synthetic()
    posed = body.posed(torch.zeros(1, 10), torch.as_tensor(pose, dtype=torch.float32)[None]).joints[0].double().numpy()
    for j in (15, 16, 17, 18, 19):
        pb = rig.pose.bones[K.SMPL_JOINT_NAMES[j]]
        assert np.allclose(np.array(pb.head), cv.smpl_to_blender_points(posed[j]), atol=2e-5), K.SMPL_JOINT_NAMES[j]
    # non-pose bones are locked (the generator only sees the six pose joints)
    assert rig.pose.bones["spine3"].lock_rotation_w and not rig.pose.bones["head"].lock_rotation_w


def test_official_keyframes_become_fcurves(addon, bpy_module, keyframes_dir, tmp_path):
    from bpy_extras import anim_utils

    bpy = bpy_module
    sc, cv, K = addon.scene, addon.convert, addon.constants
    rig = sc.create_rig(bpy.context, "rig", _canonical_joints())
    bpy.context.view_layer.objects.active = rig
    bpy.context.scene.busto.anim_start = 1
    bpy.context.scene.busto.anim_interval = 10
    cam = sc.add_portrait_camera(bpy.context, rig)
    bpy.context.scene.camera = cam
    folder = keyframes_dir / "real_video_sample1"
    assert bpy.ops.busto.import_keyframes(filepath=str(folder)) == {"FINISHED"}
    ad = rig.animation_data
    bag = anim_utils.action_get_channelbag_for_slot(ad.action, ad.action_slot)
    curves = {(fc.data_path, fc.array_index): fc for fc in bag.fcurves}
    eulers = np.load(folder / "joint_eulers.npy")
    expr = np.load(folder / "expression.npy")
    n = len(eulers)
    for name in K.POSE_BONES:
        for i in range(4):
            fc = curves[(f'pose.bones["{name}"].rotation_quaternion', i)]
            assert len(fc.keyframe_points) == n
            assert fc.keyframe_points[0].co[0] == 1 and fc.keyframe_points[-1].co[0] == 1 + 10 * (n - 1)
            assert fc.keyframe_points[3].interpolation == "LINEAR"
    for i in range(K.EXPRESSION_DIM):
        fc = curves[("busto.expression", i)]
        assert len(fc.keyframe_points) == n
        assert np.isclose(fc.evaluate(1 + 10 * 7), expr[7, i], atol=1e-5)
    # the keyed quaternions realise the official pose code at a keyframe
    rest = sc.rest_rotations(rig)
    q = np.array([[curves[(f'pose.bones["{b}"].rotation_quaternion', i)].evaluate(1 + 10 * 42) for i in range(4)]
                  for b in K.POSE_BONES])
    assert np.abs(cv.bone_quaternions_to_pose_code(q, rest) - cv.official_keyframes_to_pose_code(eulers[42])).max() < 1e-5
    bpy.context.scene.frame_set(1 + 10 * 42)
    assert np.abs(sc.read_pose_code(rig) - cv.official_keyframes_to_pose_code(eulers[42])).max() < 1e-5
    assert np.allclose(sc.read_expression(rig), expr[42], atol=1e-5)
    # the camera follows camera_pose.npy (pitch, yaw) on the portrait orbit
    cam_pose = np.load(folder / "camera_pose.npy")
    c2w = cv.blender_camera_to_cv(np.array(cam.matrix_world), np.array(rig.matrix_world))
    ref = cv.orbit_camera_cv(cam_pose[42, 1], cam_pose[42, 0], K.PORTRAIT_RADIUS, K.PORTRAIT_LOOK_AT)
    assert np.allclose(c2w, ref, atol=1e-4)
    assert bpy.context.scene.frame_end == 1 + 10 * (n - 1)
    # shapes are checked with a clear report
    bad = tmp_path / "bad_pose.npy"
    np.save(bad, np.zeros((3, 5, 3)))
    with pytest.raises(RuntimeError, match=r"pose keyframes must be \[N, 6, 3\]"):
        bpy.ops.busto.import_keyframes(filepath=str(bad))


def test_keyframe_export_roundtrip(addon, bpy_module, keyframes_dir, tmp_path):
    bpy = bpy_module
    sc = addon.scene
    rig = sc.create_rig(bpy.context, "rig", _canonical_joints())
    bpy.context.view_layer.objects.active = rig
    bpy.context.scene.busto.anim_interval = 5
    assert bpy.ops.busto.import_keyframes(filepath=str(keyframes_dir / "pose.npy")) == {"FINISHED"}
    scn = bpy.context.scene
    scn.frame_start, scn.frame_end = 1, 16
    assert bpy.ops.busto.export_keyframes(directory=str(tmp_path)) == {"FINISHED"}
    out = np.load(tmp_path / "joint_eulers.npy")
    ref = np.load(keyframes_dir / "pose.npy")
    assert out.shape == (16, 6, 3)
    from portrait_core.geometry.keyframes import euler_zyx_to_pose

    assert np.abs(euler_zyx_to_pose(out[[0, 5, 10, 15]]) - euler_zyx_to_pose(ref)).max() < 1e-5
    assert np.load(tmp_path / "expression.npy").shape == (16, 64)


def test_presets_and_cameras(addon, bpy_module):
    bpy = bpy_module
    sc, cv, K = addon.scene, addon.convert, addon.constants
    rig = sc.create_rig(bpy.context, "rig", _canonical_joints())
    bpy.context.view_layer.objects.active = rig
    bpy.context.scene.busto.anim_interval = 6
    for name in ("NOD", "TURN", "SHRUG", "SMILE"):
        assert bpy.ops.busto.animation_preset(preset=name) == {"FINISHED"}
    scn = bpy.context.scene
    scn.frame_set(1 + 6)  # the last preset keyed wins on shared channels: SMILE keys sliders only
    assert scn.frame_end >= 1 + 6 * 4
    assert np.isclose(rig.busto.exp_smile, 1.5, atol=1e-4)
    assert sc.read_expression(rig)[K.EXPRESSION_SLIDERS["smile"]] == pytest.approx(1.5, abs=1e-4)
    # portrait camera = the generator's portrait camera; face camera follows the head
    assert bpy.ops.busto.add_camera(kind="PORTRAIT") == {"FINISHED"}
    c2w, Kn = sc.camera_to_generator(scn.camera, rig, 128, 128)
    assert np.allclose(c2w, cv.orbit_camera_cv(math.pi / 2, math.pi / 2, K.PORTRAIT_RADIUS, K.PORTRAIT_LOOK_AT),
                       atol=1e-5)
    assert np.isclose(Kn[0, 0], 0.5 / math.tan(math.radians(6.0)), atol=1e-4)
    bpy.context.view_layer.objects.active = rig
    assert bpy.ops.busto.add_camera(kind="FACE") == {"FINISHED"}
    face = scn.camera
    for pb in rig.pose.bones:
        pb.rotation_quaternion = (1, 0, 0, 0)
    bpy.context.view_layer.update()
    c0 = cv.blender_camera_to_cv(np.array(face.matrix_world), np.array(rig.matrix_world))
    assert np.allclose(c0, cv.orbit_camera_cv(math.pi / 2, math.pi / 2, K.FACE_RADIUS, K.FACE_CENTRE), atol=1e-5)
    pose = np.zeros((6, 3))
    pose[3] = [0.0, 0.5, 0.0]  # turn the head
    sc.set_pose_code(rig, pose)
    bpy.context.view_layer.update()
    c1 = cv.blender_camera_to_cv(np.array(face.matrix_world), np.array(rig.matrix_world))
    head = rig.data.bones["head"].head_local
    G = np.eye(4)
    G[:3, :3] = cv.axis_angle_to_matrix(pose[3])
    h = cv.blender_to_smpl_points(np.array(head))
    G[:3, 3] = h - G[:3, :3] @ h
    assert np.allclose(c1, G @ c0, atol=1e-5)
    assert np.allclose(sc.face_camera_cv(rig), c1, atol=1e-5)  # what Face Preview renders with
    assert bpy.ops.busto.setup_render(resolution=64) == {"FINISHED"}
    assert scn.render.engine == "BUSTO_NEURAL" and scn.view_settings.view_transform == "Standard"


@pytest.mark.parametrize("fit,size,shift", [("AUTO", (96, 64), (0.05, -0.02)), ("VERTICAL", (64, 96), (0.0, 0.1)),
                                            ("HORIZONTAL", (80, 80), (0.0, 0.0))])
def test_blender_camera_projects_like_the_generator_camera(addon, bpy_module, fit, size, shift):
    """Blender's own projection of world points == portrait_core Camera.project of the same points in the rig's
    canonical frame, for any rig transform, sensor fit, aspect and lens shift."""
    import torch
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Euler, Vector

    from portrait_core.geometry.camera import Camera

    bpy = bpy_module
    sc, cv = addon.scene, addon.convert
    scn = bpy.context.scene
    scn.render.resolution_x, scn.render.resolution_y = size
    scn.render.resolution_percentage = 100
    rig = sc.create_rig(bpy.context, "rig", _canonical_joints())
    rig.location = (0.3, -0.5, 1.2)
    rig.rotation_euler = Euler((0.1, -0.2, 0.7))
    rig.scale = (1.3, 1.3, 1.3)
    cam_data = bpy.data.cameras.new("cam")
    cam_data.lens, cam_data.sensor_fit = 80.0, fit
    cam_data.sensor_width, cam_data.sensor_height = 36.0, 24.0
    cam_data.shift_x, cam_data.shift_y = shift
    cam = bpy.data.objects.new("cam", cam_data)
    scn.collection.objects.link(cam)
    cam.location = rig.matrix_world @ Vector((0.4, -2.5, 0.3))
    cam.rotation_euler = Euler((math.radians(85), 0.05, math.radians(8)))
    bpy.context.view_layer.update()
    rng = np.random.default_rng(2)
    local = rng.normal(size=(40, 3)) * 0.15  # armature-space points around the neck
    world = [rig.matrix_world @ Vector(p) for p in local]
    ref = np.array([tuple(world_to_camera_view(scn, cam, w))[:2] for w in world])
    c2w, Kn = sc.camera_to_generator(cam, rig, *size)
    camera = Camera(torch.tensor(c2w[None]), torch.tensor(Kn[None]), torch.tensor([0.1], dtype=torch.float64),
                    torch.tensor([10.0], dtype=torch.float64))
    pts = torch.tensor(cv.blender_to_smpl_points(local)[None])
    pix, depth = camera.project(pts, size[1], size[0])
    pix = pix[0].numpy()
    u = (pix[:, 0] + 0.5) / size[0]
    v = 1.0 - (pix[:, 1] + 0.5) / size[1]
    assert (depth.numpy() > 0).all()
    assert np.abs(np.stack([u, v], -1) - ref).max() < 1e-5


@pytest.mark.parametrize("fit,size,shift", [("AUTO", (96, 64), (0.05, -0.02)), ("VERTICAL", (64, 96), (0.0, 0.1))])
def test_viewport_projection_gives_the_camera_intrinsics(addon, bpy_module, fit, size, shift):
    bpy = bpy_module
    cv = addon.convert
    cam_data = bpy.data.cameras.new("cam")
    cam_data.lens, cam_data.sensor_fit = 70.0, fit
    cam_data.shift_x, cam_data.shift_y = shift
    cam = bpy.data.objects.new("cam", cam_data)
    bpy.context.scene.collection.objects.link(cam)
    P = np.array(cam.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(), x=size[0], y=size[1]))
    ref = cv.blender_intrinsics(70.0, cam_data.sensor_width, cam_data.sensor_height, fit, *size, *shift)
    assert np.allclose(cv.projection_to_intrinsics(P), ref, atol=1e-5)
    ortho = P.copy()
    ortho[3] = [0, 0, 0, 1]
    with pytest.raises(ValueError, match="orthographic"):
        cv.projection_to_intrinsics(ortho)

