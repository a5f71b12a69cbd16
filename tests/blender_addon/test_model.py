"""Operators, the Busto Neural engine and the backends on the random-init ``tiny`` generator (real bpy, CPU)."""

from __future__ import annotations

import math
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.blender
ROOT = Path(__file__).resolve().parents[2]
SEED = 3


def _png(bpy, path) -> np.ndarray:
    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(px)
        return np.flipud(px.reshape(h, w, 4))  # top-down
    finally:
        bpy.data.images.remove(img)


def _sample(bpy, seed=SEED):
    sp = bpy.context.scene.busto
    sp.new_seed, sp.new_truncation = seed, 0.7
    assert bpy.ops.busto.sample_avatar(new_avatar=True) == {"FINISHED"}
    return bpy.context.view_layer.objects.active


def _render_setup(bpy, rig, size=64):
    assert bpy.ops.busto.add_camera(kind="PORTRAIT") == {"FINISHED"}
    assert bpy.ops.busto.setup_render(resolution=size) == {"FINISHED"}
    sc = bpy.context.scene
    sc.render.image_settings.file_format = "PNG"
    sc.render.image_settings.color_mode = "RGB"
    sc.busto.super_resolve = True


def test_operators_end_to_end(addon, bpy_module):
    bpy = bpy_module
    wm = bpy.context.window_manager
    assert bpy.ops.busto.load_model() == {"FINISHED"}
    assert "tiny model" in wm.busto.model_status and wm.busto.model_device == "cpu"
    assert bpy.ops.busto.cancel_job() == {"CANCELLED"}  # nothing running: says so
    # invoke in background mode runs synchronously (no event loop for a modal operator)
    sp = bpy.context.scene.busto
    sp.new_seed = SEED
    assert bpy.ops.busto.sample_avatar("INVOKE_DEFAULT", new_avatar=True) == {"FINISHED"}
    rig = bpy.context.view_layer.objects.active
    assert rig.type == "ARMATURE" and rig.busto.is_avatar and rig.busto.seed == SEED
    img = rig.busto.preview
    assert img is not None and img.packed_file is not None and tuple(img.size) == (128, 128)
    # a second avatar coexists, one rig each
    rig2 = _sample(bpy, seed=SEED + 1)
    assert rig2 != rig and {o.name for o in bpy.context.scene.objects if o.type == "ARMATURE"} == {rig.name, rig2.name}
    bpy.context.view_layer.objects.active = rig
    rig.busto.truncation = 0.5
    assert bpy.ops.busto.sample_avatar(new_avatar=False) == {"FINISHED"}
    assert len([o for o in bpy.data.objects if o.type == "ARMATURE"]) == 2
    # geometry: mesh bound to the rig with the exported skin weights
    sp.mesh_resolution, sp.mesh_auto_level, sp.mesh_morphs = 40, True, 0  # auto: half the peak occupancy
    assert bpy.ops.busto.extract_mesh() == {"FINISHED"}
    mesh = rig.busto.mesh
    assert mesh is not None and mesh.parent == rig and len(mesh.data.vertices) > 100
    assert mesh.modifiers["Armature"].object == rig
    assert {"head", "neck", "left_shoulder"} <= set(mesh.vertex_groups.keys())
    assert mesh.data.color_attributes.active_color.name == "Col"
    dg = bpy.context.evaluated_depsgraph_get()
    rest = np.array([v.co for v in mesh.evaluated_get(dg).to_mesh().vertices])
    rig.pose.bones["head"].rotation_quaternion = (math.cos(0.25), math.sin(0.25), 0, 0)
    bpy.context.view_layer.update()
    dg = bpy.context.evaluated_depsgraph_get()
    posed = np.array([v.co for v in mesh.evaluated_get(dg).to_mesh().vertices])
    moved = np.linalg.norm(posed - rest, axis=1)
    assert moved.max() > 0.02 and np.median(moved) < moved.max()  # the head moves, not everything
    # re-extracting replaces the mesh (from the cache folder this time)
    old_name = mesh.name
    cache = Path(addon.prefs.resolve(bpy.context, None, rig).cache_dir) / "meshes"
    assert list(cache.glob("*.npz"))
    t0 = time.perf_counter()
    assert bpy.ops.busto.extract_mesh() == {"FINISHED"}
    assert time.perf_counter() - t0 < 1.0
    assert rig.busto.mesh is not None and len([o for o in rig.children if o.type == "MESH"]) == 1
    assert rig.busto.mesh.name == old_name
    assert bpy.ops.busto.reset_pose() == {"FINISHED"}
    assert tuple(rig.pose.bones["head"].rotation_quaternion) == (1, 0, 0, 0)
    # face preview: the face camera following the head, into an image shown in the Render panel
    rig.pose.bones["head"].rotation_quaternion = (math.cos(0.2), 0, 0, math.sin(0.2))
    assert bpy.ops.busto.face_preview(size=32) == {"FINISHED"}
    assert rig.busto.face_preview is not None and tuple(rig.busto.face_preview.size) == (32, 32)
    rig.pose.bones["head"].rotation_quaternion = (1, 0, 0, 0)
    # a new body shape moves the rest bones on re-sample (and asks for a new mesh)
    shoulder = np.array(rig.data.bones["left_shoulder"].head_local)
    rig.busto.body_shape[0] = 2.0
    assert bpy.ops.busto.sample_avatar(new_avatar=False) == {"FINISHED"}
    assert np.linalg.norm(np.array(rig.data.bones["left_shoulder"].head_local) - shoulder) > 1e-3
    # a failing extraction (here: the avatar's checkpoint is gone) is a clear report and changes nothing
    ckpt = rig.busto.checkpoint
    rig.busto.checkpoint = ckpt + ".moved"
    n_objects = len(bpy.data.objects)
    with pytest.raises(RuntimeError, match=r"moved: no such checkpoint file"):
        bpy.ops.busto.extract_mesh()
    assert len(bpy.data.objects) == n_objects and rig.busto.mesh is not None
    rig.busto.checkpoint = ckpt
    bpy.context.view_layer.objects.active = rig2
    name2 = rig2.name
    assert bpy.ops.busto.remove_avatar() == {"FINISHED"}
    assert name2 not in bpy.data.objects
    assert len([o for o in bpy.data.objects if o.type == "ARMATURE"]) == 1


def test_background_job_modal_steps_and_cancel(addon, bpy_module):
    bpy = bpy_module
    jobs = addon.jobs

    class FakeOp(jobs.BackgroundJobOperator):
        job_label = "Test job"

        def __init__(self):
            self.reports, self.finished = [], None

        def report(self, kind, msg):
            self.reports.append((kind, msg))

        def work(self, job, state):
            for i in range(200):
                if job.should_stop():
                    raise addon.backend.Cancelled("cancelled")
                job.report_progress(i / 200, "step")
                time.sleep(0.005)
            return state["x"] * 2

        def finish(self, context, state, result):
            self.finished = result

    ctx = bpy.context
    for cancel in (False, True):
        op = FakeOp()
        op._state = {"x": 21}
        op._job = jobs.Job(op.job_label, lambda j, op=op: op.work(j, op._state))
        op._set_status(ctx, True)
        op._job.start()
        seen = []
        if cancel:
            op._job.cancel()
        for _ in range(1000):
            r = op.modal_step(ctx)
            seen.append(ctx.window_manager.busto.job_progress)
            if r != {"RUNNING_MODAL"}:
                break
            time.sleep(0.01)
        if cancel:
            assert r == {"CANCELLED"} and op.finished is None and "cancelled" in op.reports[-1][1]
        else:
            assert r == {"FINISHED"} and op.finished == 42 and max(seen) > 0
        assert not ctx.window_manager.busto.job_running


def test_missing_and_corrupt_checkpoint_are_reported(addon, bpy_module, tmp_path):
    bpy = bpy_module
    sc = bpy.context.scene
    sc.busto.checkpoint = str(tmp_path / "nope.safetensors")
    with pytest.raises(RuntimeError, match="nope.safetensors: no such checkpoint file"):
        bpy.ops.busto.load_model()
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    sc.busto.checkpoint = str(bad)
    with pytest.raises(RuntimeError, match="corrupt.safetensors: not a readable .safetensors"):
        bpy.ops.busto.sample_avatar(new_avatar=True)
    assert not [o for o in bpy.data.objects if o.type == "ARMATURE"]  # nothing half-made


@pytest.fixture(scope="module")
def animated(registered, bpy_module, tiny_checkpoint, tmp_path_factory):
    """A saved .blend: one avatar, portrait camera, head keyed still on frames 1-2 and turned on 3-4 (constant
    interpolation), rendered at 64² with the engine; plus what the backend returns for frame 1 directly."""
    bpy = bpy_module
    tmp = tmp_path_factory.mktemp("anim")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    sc = bpy.context.scene
    sc.busto.checkpoint = str(tiny_checkpoint)
    rig = _sample(bpy)
    _render_setup(bpy, rig)
    sc.frame_start, sc.frame_end = 1, 4
    head = rig.pose.bones["head"]
    for f, angle in ((1, 0.0), (2, 0.0), (3, 0.5), (4, 0.5)):
        head.rotation_quaternion = (math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2))
        head.keyframe_insert("rotation_quaternion", frame=f)
    rig.busto.exp_smile = 0.7
    rig.keyframe_insert("busto.exp_smile", frame=1)
    addon_scene = sys.modules["blender_addon.scene"]
    for fc in addon_scene.channelbag(rig).fcurves:
        for kp in fc.keyframe_points:
            kp.interpolation = "CONSTANT"
    blend = tmp / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    sc.render.filepath = str(tmp / "full" / "frame_####")
    t0 = time.perf_counter()
    bpy.ops.render.render(animation=True)
    seconds = time.perf_counter() - t0
    sc.frame_set(1)
    be = sys.modules["blender_addon.backend"]
    prefs = sys.modules["blender_addon.prefs"]
    c2w, Kn = addon_scene.camera_to_generator(sc.camera, rig, 64, 64)
    direct = be.render_frames(prefs.resolve(bpy.context, sc, rig), addon_scene.avatar_spec(rig, True),
                              addon_scene.read_pose_code(rig), addon_scene.read_expression(rig), c2w, Kn)
    frames = [_png(bpy, tmp / "full" / f"frame_{f:04d}.png") for f in range(1, 5)]
    return {"blend": blend, "dir": tmp, "frames": frames, "direct": direct, "seconds": seconds}


def test_engine_frames_follow_the_head(animated):
    f1, f2, f3, f4 = animated["frames"]
    assert f1.shape == (64, 64, 4)
    assert np.array_equal(f1, f2) and np.array_equal(f3, f4)  # same pose -> same pixels (cached model/avatar)
    # the head turned -> the image changed (a random-init model is faint: compare 8-bit steps)
    assert np.abs(f2 - f3).max() >= 3 / 255 and (np.abs(f2 - f3).max(-1) > 0).sum() > 10
    # linear pixels + 'Standard' view transform give back the generator's sRGB image (rows top-down)
    direct = animated["direct"][0]
    assert np.abs(f1[..., :3] - direct[..., :3]).max() < 2.5 / 255
    assert animated["seconds"] < 60


def test_saved_blend_keeps_avatars_and_settings(animated, bpy_module, addon):
    bpy = bpy_module
    bpy.ops.wm.open_mainfile(filepath=str(animated["blend"]))
    sc = bpy.context.scene
    rigs = [o for o in sc.objects if o.type == "ARMATURE"]
    assert len(rigs) == 1
    rig = rigs[0]
    assert rig.busto.is_avatar and rig.busto.seed == SEED and rig.busto.truncation == pytest.approx(0.7)
    assert rig.busto.preview is not None and rig.busto.preview.packed_file is not None
    assert sc.render.engine == "BUSTO_NEURAL" and sc.view_settings.view_transform == "Standard"
    assert sc.busto.super_resolve and sc.render.resolution_x == 64 and sc.camera is not None
    sc.frame_set(3)
    pose = sys.modules["blender_addon.scene"].read_pose_code(rig)
    assert np.linalg.norm(pose[3]) == pytest.approx(0.5, abs=1e-5)  # the keyed head turn survived
    assert np.isclose(rig.busto.exp_smile, 0.7)


def test_frame_range_in_process_and_in_a_fresh_process(animated, bpy_module, addon, run_python):
    """Frames 3-4 of the saved .blend rendered alone (bpy module, then a new process) equal the full render."""
    bpy = bpy_module
    out = animated["dir"] / "part"
    bpy.ops.wm.open_mainfile(filepath=str(animated["blend"]))
    sc = bpy.context.scene
    sc.frame_start, sc.frame_end = 3, 4
    sc.render.filepath = str(out / "frame_####")
    bpy.ops.render.render(animation=True)
    assert sorted(p.name for p in out.iterdir()) == ["frame_0003.png", "frame_0004.png"]
    for f in (3, 4):
        assert np.array_equal(_png(bpy, out / f"frame_{f:04d}.png"), animated["frames"][f - 1])
    fresh = animated["dir"] / "fresh"
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import bpy, blender_addon
        blender_addon.register()
        bpy.ops.wm.open_mainfile(filepath={str(animated['blend'])!r})
        sc = bpy.context.scene
        sc.frame_start, sc.frame_end = 3, 4
        sc.render.filepath = {str(fresh / 'frame_####')!r}
        t = time.perf_counter()
        bpy.ops.render.render(animation=True)
        print("RENDER_SECONDS", time.perf_counter() - t)
        (b,) = blender_addon.backend._BACKENDS.values()
        print("STATS", b._session.stats)
    """)
    r = run_python(code, env={"OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "STATS {'loads': 1, 'bakes': 1, 'frames': 2}" in r.stdout  # the model loads once per process
    for f in (3, 4):
        assert np.array_equal(_png(bpy, fresh / f"frame_{f:04d}.png"), animated["frames"][f - 1]), f


def test_subprocess_backend_roundtrips_a_frame(addon, bpy_module, tiny_checkpoint):
    be = addon.backend
    cv = addon.convert
    K = addon.constants
    s_in = be.Settings(checkpoint=str(tiny_checkpoint), backend="INPROCESS")
    s_sub = be.Settings(checkpoint=str(tiny_checkpoint), backend="SUBPROCESS", python=sys.executable)
    spec = be.AvatarSpec(seed=SEED, truncation=0.7)
    c2w = cv.orbit_camera_cv(math.pi / 2 + 0.2, math.pi / 2, K.PORTRAIT_RADIUS, K.PORTRAIT_LOOK_AT)
    Kn = cv.blender_intrinsics(cv.lens_for_fov(12.0), 36, 24, "AUTO", 64, 64)
    pose = np.zeros((6, 3))
    pose[3, 1] = 0.3
    expr = np.zeros(64)
    a = be.render_frames(s_in, spec, pose, expr, c2w, Kn)
    sub = be.get_backend(s_sub)
    assert isinstance(sub, be.SubprocessBackend)
    try:
        b = be.render_frames(s_sub, spec, pose, expr, c2w, Kn)
        info = sub.load()
        assert info["preset"] == "tiny" and info["device"] == "cpu"
        assert a.shape == b.shape == (1, 64, 64, 4) and a.dtype == b.dtype == np.float32
        assert np.abs(a - b).max() < 1e-5
        # a worker error comes back as a clear message, and the worker keeps serving
        with pytest.raises(be.BackendError, match="body_shape must have 10 values"):
            sub.request("render", {"pose": pose[None].astype(np.float32)}, avatar={"body_shape": [0.0]})
        assert np.abs(be.render_frames(s_sub, spec, pose, expr, c2w, Kn) - b).max() == 0
    finally:
        sub.close()
    assert sub._proc is None
    with pytest.raises(be.BackendError, match="Worker Python not found"):
        be.SubprocessBackend(be.Settings(python="/nonexistent/python"))


def test_a_broken_worker_is_reported_with_its_stderr(addon, tmp_path):
    be = addon.backend
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named portrait_core' >&2\nexit 3\n")
    fake.chmod(0o755)
    worker = be.SubprocessBackend(be.Settings(python=str(fake)))
    with pytest.raises(be.BackendError, match=r"(?s)exit code 3.*No module named portrait_core"):
        worker.load()
    assert worker._proc is None


def test_mesh_deforms_like_the_exported_rig(addon, bpy_module):
    """The Armature-deformed mesh in Blender == portrait_core.export's Rig.pose_mesh for the same pose code."""
    import torch

    from portrait_core.export import build_rig

    bpy = bpy_module
    sc, cv = addon.scene, addon.convert
    rig = _sample(bpy)
    scn = bpy.context.scene
    scn.busto.mesh_resolution, scn.busto.mesh_auto_level = 32, True
    assert bpy.ops.busto.extract_mesh() == {"FINISHED"}
    mesh = rig.busto.mesh
    me = mesh.data
    rest_b = np.empty(len(me.vertices) * 3)
    me.vertices.foreach_get("co", rest_b)
    canonical = cv.blender_to_smpl_points(rest_b.reshape(-1, 3))
    faces = np.array([p.vertices[:] for p in me.polygons])
    from portrait_core.body.model import BodyModel
    ref_rig = build_rig(type("M", (), {"vertices": canonical.astype(np.float32), "faces": faces})(),
                        BodyModel.synthetic(), torch.zeros(1, 10))
    pose = np.zeros((6, 3))
    pose[0] = [0.1, 0.2, 0.0]
    pose[3] = [0.3, -0.4, 0.1]
    pose[1] = [0.0, 0.0, 0.25]
    pose[4] = [0.0, 0.1, -0.2]
    sc.set_pose_code(rig, pose)
    bpy.context.view_layer.update()
    ev = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
    posed_b = np.empty(len(ev.vertices) * 3)
    ev.vertices.foreach_get("co", posed_b)
    posed = cv.blender_to_smpl_points(posed_b.reshape(-1, 3))
    expected = ref_rig.pose_mesh(canonical, pose)
    moved = np.linalg.norm(expected - canonical, axis=1)
    assert moved.max() > 0.05
    # weights are stored per vertex group at 1e-3 resolution: sub-millimetre agreement
    assert np.abs(posed - expected).max() < 2e-3


def test_expression_shape_keys_follow_the_rig(addon, bpy_module):
    bpy = bpy_module
    rig = _sample(bpy)
    scn = bpy.context.scene
    scn.busto.mesh_resolution, scn.busto.mesh_auto_level, scn.busto.mesh_morphs = 32, True, 4
    assert bpy.ops.busto.extract_mesh() == {"FINISHED"}
    me = rig.busto.mesh.data
    names = [kb.name for kb in me.shape_keys.key_blocks]
    assert names == ["Basis", "jaw_open", "smile", "brow_raise", "blink"]  # the glTF export's names
    e = np.zeros(64)
    e[1] = 1.0
    addon.props.set_expression(rig.busto, e)
    rig.busto.exp_smile = 0.6
    rig.busto.exp_blink = -0.4
    bpy.context.view_layer.update()
    kbs = me.shape_keys.key_blocks
    assert kbs["smile"].value == pytest.approx((1.0 + 0.6) / 2.0, abs=1e-5)
    assert kbs["blink"].value == pytest.approx(-0.4 / 2.0, abs=1e-5)
    assert kbs["jaw_open"].value == pytest.approx(0.0, abs=1e-6)
    # keyed expressions drive the shape keys during playback / rendering
    rig.busto.exp_smile = 0.0
    rig.keyframe_insert("busto.exp_smile", frame=1)
    rig.busto.exp_smile = 2.0
    rig.keyframe_insert("busto.exp_smile", frame=5)
    scn.frame_set(5)
    assert kbs["smile"].value == pytest.approx((1.0 + 2.0) / 2.0, abs=1e-5)
    scn.frame_set(1)
    assert kbs["smile"].value == pytest.approx(1.0 / 2.0, abs=1e-5)
    assert np.isfinite(np.array([p.co for p in kbs["smile"].data])).all()


def test_engine_non_square_and_transparent(addon, bpy_module, tmp_path):
    """A 96x64 frame is the centre of the 96x96 frame (same camera); film transparency writes the alpha."""
    bpy = bpy_module
    rig = _sample(bpy)
    _render_setup(bpy, rig, size=96)
    sc = bpy.context.scene
    sc.camera.data.lens = 120.0
    sc.render.image_settings.color_mode = "RGBA"

    def still(name):
        sc.render.filepath = str(tmp_path / name)
        bpy.ops.render.render(write_still=True)
        return _png(bpy, tmp_path / name)

    square = still("square.png")
    sc.render.resolution_y = 64
    wide = still("wide.png")
    assert wide.shape == (64, 96, 4)
    diff = np.abs(wide - square[16:80])  # identical rays up to float rounding of the intrinsics
    assert diff.max() <= 3 / 255 and diff.mean() < 0.5 / 255
    assert (wide[..., 3] == 1.0).all()
    sc.render.film_transparent = True
    clear = still("clear.png")
    assert (clear[..., 3] < 0.99).mean() > 0.5  # the white background is gone: mostly transparent
    assert clear[..., 3].max() > 0  # the avatar is not


def test_engine_composites_several_avatars_and_reports_errors(addon, bpy_module, tmp_path):
    bpy = bpy_module
    sc = bpy.context.scene
    cam_data = bpy.data.cameras.new("cam")
    cam = bpy.data.objects.new("cam", cam_data)
    sc.collection.objects.link(cam)
    sc.camera = cam
    bpy.ops.busto.setup_render(resolution=32)
    sc.render.filepath = str(tmp_path / "empty.png")
    with pytest.raises(RuntimeError, match="no Busto avatar to render"):  # a clear report, not a traceback
        bpy.ops.render.render(write_still=True)
    bpy.data.objects.remove(cam)
    a = _sample(bpy, seed=SEED)
    _render_setup(bpy, a, size=64)
    sc.camera.data.lens = 60.0
    b = _sample(bpy, seed=SEED + 1)
    b.location.x = 0.45  # the subject's right side of the frame from the front camera
    sc.render.filepath = str(tmp_path / "both.png")
    bpy.ops.render.render(write_still=True)
    b.hide_render = True
    sc.render.filepath = str(tmp_path / "one.png")
    bpy.ops.render.render(write_still=True)
    both, one = _png(bpy, tmp_path / "both.png"), _png(bpy, tmp_path / "one.png")
    diff = np.abs(both - one).max(-1)
    cols = np.nonzero(diff.max(0) > 2 / 255)[0]
    assert len(cols) > 0 and cols.mean() > 32  # the second avatar appears only where it stands


def test_viewport_preview_renders_in_a_thread(addon, bpy_module):
    bpy = bpy_module
    eng, cv, K = addon.engine, addon.convert, addon.constants
    _sample(bpy)
    dg = bpy.context.evaluated_depsgraph_get()
    cam_world = cv.cv_to_blender_camera(cv.orbit_camera_cv(math.pi / 2, math.pi / 2, K.PORTRAIT_RADIUS,
                                                           K.PORTRAIT_LOOK_AT))
    Kn = cv.blender_intrinsics(cv.lens_for_fov(12.0), 36, 24, "AUTO", 48, 32)
    items = eng.rig_inputs(dg, cam_world, Kn)
    state = eng.ViewportPreview(clock=lambda: 0.0)  # time stands still: the low-resolution preview only
    assert eng.request_viewport_preview(state, items, 48, 32)
    assert not eng.request_viewport_preview(state, items, 48, 32)  # busy or same picture: no second render
    state.thread.join(timeout=120)
    assert state.error == "" and state.image.shape == (32, 48, 4)
    assert not eng.request_viewport_preview(state, items, 48, 32)  # unchanged view: nothing to do
    rgb, alpha = eng.composite(items, 48, 32)
    assert np.allclose(state.image[..., :3], rgb + (1 - alpha), atol=1e-6)
    items[0]["pose"] = items[0]["pose"] + 0.1
    assert eng.request_viewport_preview(state, items, 48, 32)  # the pose changed: a new preview
    state.thread.join(timeout=120)
    assert eng.viewport_size(1920, 1080) == (160, 90)


def test_installed_extension_renders_in_a_fresh_blender(bpy_module, tiny_checkpoint, tmp_path, run_python):
    """The built zip, installed as bl_ext.user_default.busto in a new process, runs the workflow and F12."""
    import subprocess

    cli = Path(bpy_module.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    b = subprocess.run([sys.executable, str(cli), "build", "--source-dir", str(ROOT / "blender_addon"),
                        "--output-dir", str(tmp_path)], capture_output=True, text=True)
    assert b.returncode == 0, b.stderr
    (z,) = tmp_path.glob("busto-*.zip")
    code = textwrap.dedent(f"""
        import bpy
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.extensions.package_install_files(filepath={str(z)!r}, repo="user_default", enable_on_install=True)
        prefs = bpy.context.preferences.addons["bl_ext.user_default.busto"].preferences
        prefs.checkpoint = {str(tiny_checkpoint)!r}
        prefs.backend = "INPROCESS"
        sc = bpy.context.scene
        sc.busto.new_seed = 2
        assert bpy.ops.busto.sample_avatar() == {{"FINISHED"}}
        assert bpy.ops.busto.add_camera(kind="PORTRAIT") == {{"FINISHED"}}
        assert bpy.ops.busto.setup_render(resolution=32) == {{"FINISHED"}}
        sc.render.filepath = {str(tmp_path / "f12.png")!r}
        bpy.ops.render.render(write_still=True)
        import sys
        print("MODULE", [m for m in sys.modules if m.endswith("busto.engine")])
    """)
    r = run_python(code, env={"BLENDER_USER_RESOURCES": str(tmp_path / "user")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "bl_ext.user_default.busto.engine" in r.stdout
    assert (tmp_path / "f12.png").is_file()
