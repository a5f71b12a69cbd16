"""``python -m busto_apps demo``: the end-to-end headless Blender demo at tiny settings (4 frames, 64², a
random-init ``tiny`` generator), every output checked, the .blend and the .glb reopened in a fresh Blender."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FRAMES, SIZE, SEED = 4, 64, 3
POSE_BONES = ("neck", "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder")


# ------------------------------------------------------------------------------------------- pure helpers (no bpy)
def test_schedule_plays_the_four_presets_without_overlap():
    from busto_apps.demo import comparison_frames, grid_frames, schedule, segment_of

    segs = schedule(48)
    assert [s.preset for s in segs] == ["TURN", "NOD", "SHRUG", "SMILE"]
    assert segs[0].frames[0] == 1 and segs[-1].frames[-1] <= 48
    for a, b in zip(segs, segs[1:]):
        assert a.frames[-1] == b.frames[0]  # rest-pose key shared, never overlapping
    lengths = [s.frames[-1] - s.frames[0] for s in segs]
    assert min(lengths) >= 9 and max(lengths) <= 13  # about a quarter each
    cmp = comparison_frames(48, segs)
    assert cmp == sorted(s.peak for s in segs) and all(1 < f < 48 for f in cmp)
    assert {segment_of(f, segs) for f in cmp} == {"head turn", "nod", "shoulder shrug", "smile"}
    grid = grid_frames(48, segs)
    assert len(grid) == 12 and {1, 48, *cmp} <= set(grid) and grid == sorted(grid)
    few = schedule(FRAMES)
    assert grid_frames(FRAMES, few) == [1, 2, 3, 4]
    assert all(s.interval == 1 for s in few) and few[0].frames[:3] == [1, 2, 4]
    assert comparison_frames(FRAMES, few) == [1, 2]


def test_silhouette_iou_and_overlay():
    from busto_apps.demo import overlay, silhouette_iou

    a = np.zeros((8, 8), bool)
    a[2:6, 2:6] = True
    b = np.zeros((8, 8), bool)
    b[2:6, 4:8] = True
    assert silhouette_iou(a, a) == 1.0 and silhouette_iou(a, b) == pytest.approx(8 / 24)
    img = overlay(np.full((8, 8, 3), 255, np.uint8), a)
    edge = (img != 255).any(-1)
    assert edge[2, 2:6].all() and not edge[3:5, 3:5].any() and not edge[0].any()


def test_bad_options_are_refused_before_blender_starts(capfd):
    from busto_apps import demo

    assert demo.main(["--frames", "0", "--out", "/nonexistent/x"]) == 2
    assert demo.main(["--checkpoint", "/nonexistent/model.safetensors"]) == 2
    assert demo.main(["--resolution", "8"]) == 2
    err = capfd.readouterr().out
    assert "--frames must be >= 1" in err and "no such file" in err and "--resolution" in err


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """Random-init ``tiny`` generators saved with ``save_generator``: one frontal, one in 360 mode."""
    import torch

    from portrait_core.generator import Generator, generator_config, save_generator

    tmp = tmp_path_factory.mktemp("tiny-ckpts")
    paths = {}
    for mode in ("frontal", "360"):
        torch.manual_seed(0)
        paths[mode] = save_generator(tmp / f"tiny-{mode}.safetensors",
                                     Generator(generator_config("tiny", render={"mode": mode})),
                                     info={"note": "random init, tests"})
    return paths


def test_mode_360_errors_are_refused_before_blender_starts(tiny_checkpoints, tmp_path, monkeypatch, capfd):
    """``--mode 360`` without a 360° checkpoint (none shipped, none given) and with a frontal one: exit 2, one
    error line that names the file and ``--checkpoint``."""
    from busto_apps import demo

    missing = tmp_path / "assets" / demo.DEFAULT_360_NAME
    monkeypatch.setattr(demo, "default_360_checkpoint", lambda: missing)
    assert demo.main(["--mode", "360", "--out", str(tmp_path / "a")]) == 2
    err = capfd.readouterr().out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert str(missing) in lines[0] and "--checkpoint" in lines[0] and "does not exist" in lines[0]
    frontal = tiny_checkpoints["frontal"]
    assert demo.main(["--mode", "360", "--checkpoint", str(frontal), "--out", str(tmp_path / "b")]) == 2
    err = capfd.readouterr().out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert str(frontal) in lines[0] and "frontal" in lines[0] and "--checkpoint" in lines[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before Blender started


def test_mode_follows_the_checkpoint_unless_given(tiny_checkpoints, tmp_path, monkeypatch):
    from busto_apps import demo

    def resolved(*argv):
        a = demo.build_parser().parse_args(list(argv))
        demo.resolve_mode(a)
        return a.mode, a.checkpoint

    frontal, full = tiny_checkpoints["frontal"], tiny_checkpoints["360"]
    assert demo.checkpoint_render_mode(frontal) == "frontal" and demo.checkpoint_render_mode(full) == "360"
    assert resolved("--checkpoint", str(full)) == ("360", full)
    assert resolved("--checkpoint", str(frontal)) == ("frontal", frontal)
    assert resolved("--mode", "frontal", "--checkpoint", str(full)) == ("frontal", full)  # nothing changes
    assert resolved("--mode", "360", "--checkpoint", str(full)) == ("360", full)
    monkeypatch.setattr(demo, "default_360_checkpoint", lambda: full)  # a shipped 360° model is used
    assert resolved("--mode", "360") == ("360", full)
    assert demo.orbit_sheet_views(8) == list(range(8)) and demo.orbit_sheet_views(24) == list(range(0, 24, 3))


def test_portrait_core_demo_is_an_alias_of_the_app():
    """``python -m portrait_core demo`` still runs the demo, which now lives in busto_apps (named by string)."""
    r = subprocess.run([sys.executable, "-m", "portrait_core", "demo", "--frames", "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--frames must be >= 1" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "busto_apps", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "demo" in r.stdout


def test_blend_paths_are_relative_to_the_blend():
    from busto_apps.demo import blend_relative

    assert blend_relative("/data/out/frames/####", "/data/out") == "//frames/####"
    assert blend_relative("/data/models/g.safetensors", "/data/out") == "//../models/g.safetensors"
    assert blend_relative("//already/relative", "/data/out") == "//already/relative"
    assert blend_relative("", "/data/out") == ""


# ------------------------------------------------------------------------------------------- the demo in Blender
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    pytest.importorskip("bpy", reason="the bpy module (Blender 5.0.1) is not installed")
    import torch

    from portrait_core.generator import Generator, generator_config, save_generator

    tmp = tmp_path_factory.mktemp("demo")
    ckpt = tmp / "tiny.safetensors"
    torch.manual_seed(0)
    save_generator(ckpt, Generator(generator_config("tiny")), info={"note": "random init, tests"})
    out = tmp / "out"
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp / "blender-user"), OMP_NUM_THREADS="2",
               COLUMNS="120")
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "busto_apps", "demo", "--out", str(out), "--frames", str(FRAMES), "--resolution",
         str(SIZE), "--mesh-resolution", "40", "--checkpoint", str(ckpt), "--seed", str(SEED), "--fps", "12"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    seconds = time.perf_counter() - t0
    log = (out / "demo.log").read_text(errors="replace")[-3000:] if (out / "demo.log").is_file() else ""
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}\n--- demo.log ---\n{log}"
    return {"out": out, "stdout": r.stdout, "seconds": seconds, "ckpt": ckpt, "tmp": tmp,
            "summary": json.loads((out / "summary.json").read_text())}


@pytest.mark.blender
def test_demo_writes_every_output(demo_run):
    out = demo_run["out"]
    for name in ("demo.blend", "avatar.glb", "demo.mp4", "contact-sheet.png", "summary.json", "demo.log"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"{f:04d}.png" for f in range(1, FRAMES + 1)]
    s = demo_run["summary"]
    assert [st["name"] for st in s["steps"]][:3] == [
        "Start Blender, register the add-on", "Load the model (busto.load_model)",
        "Sample the avatar and its rig (busto.sample_avatar)"]
    assert len(s["steps"]) == 10 and all(st["seconds"] >= 0 for st in s["steps"])
    assert s["frames"] == FRAMES and s["resolution"] == SIZE and s["trained"] is False
    assert s["mesh_vertices"] > 200 and s["shape_keys"] == 8
    # the printed summary: a table of steps with timings and the files written
    assert "Busto demo: steps" in demo_run["stdout"] and "demo.mp4" in demo_run["stdout"]
    assert demo_run["seconds"] < 240


@pytest.mark.blender
def test_frames_are_pngs_of_the_right_size_that_move(demo_run):
    from PIL import Image

    out = demo_run["out"]
    frames = []
    for f in range(1, FRAMES + 1):
        with Image.open(out / "frames" / f"{f:04d}.png") as im:
            assert im.format == "PNG" and im.size == (SIZE, SIZE) and im.mode == "RGB"
            frames.append(np.asarray(im).astype(np.int16))
    for a in frames:
        assert not np.all(a == (255, 0, 255)), "a failed (magenta) frame"
        assert a.std() > 2 and (a < 250).any(-1).mean() > 0.05  # an avatar on the white background
    # frame 1 rest, 2 head turned left, 3 on the way right, 4 turned right: consecutive frames differ
    for a, b in zip(frames, frames[1:]):
        diff = np.abs(a - b).max(-1)
        assert (diff >= 3).sum() > 10, "the head turn does not show"


@pytest.mark.blender
def test_mesh_lines_up_with_the_neural_frames(demo_run):
    """Workbench renders of the extracted mesh and the neural RGBA frames from the same camera overlap."""
    from PIL import Image

    out, s = demo_run["out"], demo_run["summary"]
    assert [c["frame"] for c in s["comparisons"]] == [1, 2]
    rest, turned = s["comparisons"]
    assert rest["iou"] > 0.7 and turned["iou"] > 0.55, s["comparisons"]
    for c in s["comparisons"]:
        assert c["centroid_px"] < 0.08 * SIZE, s["comparisons"]
        with Image.open(out / "compare" / f"mesh_{c['frame']:04d}.png") as m:
            assert m.mode == "RGBA" and m.size == (SIZE, SIZE)
    with Image.open(out / "contact-sheet.png") as im:
        assert im.format == "PNG" and im.size[0] >= 6 * 128 and im.size[1] > 2 * 128


@pytest.mark.blender
def test_video_has_every_frame(demo_run):
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(demo_run["out"] / "demo.mp4"))
    try:
        assert reader.count_frames() == FRAMES
        assert reader.get_meta_data()["fps"] == pytest.approx(12)
        first = reader.get_data(0)
        assert first.shape == (SIZE, SIZE, 3)
        png = imageio.imread(demo_run["out"] / "frames" / "0001.png")[..., :3].astype(np.int16)
        assert np.abs(first.astype(np.int16) - png).mean() < 12  # the same picture (lossy H.264)
    finally:
        reader.close()


@pytest.mark.blender
def test_glb_has_skin_morphs_and_animation(demo_run):
    import pygltflib

    g = pygltflib.GLTF2().load(str(demo_run["out"] / "avatar.glb"))
    assert len(g.skins) == 1
    joint_names = {g.nodes[j].name for j in g.skins[0].joints}
    assert set(POSE_BONES) <= joint_names
    prims = [p for m in g.meshes for p in m.primitives]
    assert any(p.targets and len(p.targets) == 8 for p in prims), "no expression morph targets"
    assert g.animations and any(ch.target.path == "rotation" for a in g.animations for ch in a.channels)


@pytest.mark.blender
def test_blend_and_glb_reopen_in_a_fresh_blender(demo_run):
    out = demo_run["out"]
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        import bpy, blender_addon
        from bpy_extras import anim_utils
        blender_addon.register()
        from blender_addon import scene as bs
        res = {{}}
        bpy.ops.wm.open_mainfile(filepath={str(out / 'demo.blend')!r})
        sc = bpy.context.scene
        rigs = [o for o in sc.objects if o.type == "ARMATURE"]
        meshes = [o for o in sc.objects if o.type == "MESH"]
        rig, mesh = rigs[0], meshes[0]
        res["rigs"], res["meshes"] = len(rigs), len(meshes)
        res["bones"] = sorted(rig.data.bones.keys())
        res["is_avatar"], res["seed"] = rig.busto.is_avatar, rig.busto.seed
        res["mesh_parent"] = mesh.parent.name == rig.name
        res["modifier"] = [m.object.name == rig.name for m in mesh.modifiers if m.type == "ARMATURE"]
        res["groups"] = sorted(mesh.vertex_groups.keys())
        res["shape_keys"] = len(mesh.data.shape_keys.key_blocks) if mesh.data.shape_keys else 0
        res["engine"], res["view"] = sc.render.engine, sc.view_settings.view_transform
        res["range"] = [sc.frame_start, sc.frame_end]
        res["camera"] = sc.camera is not None
        res["frames_path"] = sc.render.filepath
        bag = anim_utils.action_get_channelbag_for_slot(rig.animation_data.action, rig.animation_data.action_slot)
        res["fcurves"] = sorted({{fc.data_path for fc in bag.fcurves}})
        sc.frame_set(2)
        res["pose2"] = bs.read_pose_code(rig).tolist()
        dg = bpy.context.evaluated_depsgraph_get()
        ev = mesh.evaluated_get(dg)
        res["moved"] = float(max((v.co - w.co).length for v, w in zip(ev.data.vertices, mesh.data.vertices)))
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.import_scene.gltf(filepath={str(out / 'avatar.glb')!r})
        objs = bpy.context.scene.objects
        arms = [o for o in objs if o.type == "ARMATURE"]
        ms = [o for o in objs if o.type == "MESH"]
        res["glb_bones"] = sorted(arms[0].data.bones.keys()) if arms else []
        res["glb_shape_keys"] = len(ms[0].data.shape_keys.key_blocks) if ms and ms[0].data.shape_keys else 0
        res["glb_skinned"] = bool(ms) and any(m.type == "ARMATURE" for m in ms[0].modifiers)
        res["glb_actions"] = len(bpy.data.actions)
        print("RESULT" + json.dumps(res))
    """)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(demo_run["tmp"] / "blender-user-2"))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT"))[len("RESULT"):])
    assert res["rigs"] == 1 and res["meshes"] == 1 and res["is_avatar"] and res["seed"] == SEED
    assert set(POSE_BONES) <= set(res["bones"]) and "pelvis" in res["bones"]
    assert res["mesh_parent"] and res["modifier"] == [True]
    assert set(POSE_BONES) <= set(res["groups"]) and res["shape_keys"] == 9  # Basis + 8 expression keys
    assert res["engine"] == "BUSTO_NEURAL" and res["view"] == "Standard" and res["camera"]
    assert res["range"] == [1, FRAMES] and res["frames_path"].endswith("####")
    assert {f'pose.bones["{b}"].rotation_quaternion' for b in POSE_BONES} <= set(res["fcurves"])
    assert "busto.exp_smile" in res["fcurves"]
    head = np.array(res["pose2"])[3]
    from busto_apps.demo import SEGMENTS

    turn_amplitude = dict((name, amp) for name, _, amp in SEGMENTS)["TURN"]
    assert abs(head[1]) == pytest.approx(0.35 * turn_amplitude, abs=1e-3)  # frame 2: the turn's first key
    assert res["moved"] > 0.01  # ... and the skinned mesh follows
    assert set(POSE_BONES) <= set(res["glb_bones"]) and res["glb_skinned"]
    assert res["glb_shape_keys"] == 9 and res["glb_actions"] >= 1


@pytest.mark.blender
def test_moved_blend_resolves_and_renders_inside_its_new_folder(demo_run, tmp_path):
    """demo.blend stores ``//`` paths: copied elsewhere (with the checkpoint beside its folder, as the demo left
    them), the checkpoint and ``render.filepath`` resolve inside the copy, and ``blender -b demo.blend -a`` there
    renders with the copied checkpoint into the copy, leaving the original frames untouched."""
    import shutil

    out, ckpt = demo_run["out"], demo_run["ckpt"]
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved / "out", ignore=shutil.ignore_patterns("*.png", "*.mp4"))
    shutil.copy2(ckpt, moved / ckpt.name)
    original = {p.name: p.stat().st_mtime_ns for p in (out / "frames").iterdir()}
    code = textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import bpy, blender_addon
        blender_addon.register()
        from blender_addon import prefs
        bpy.ops.wm.open_mainfile(filepath={str(moved / 'out' / 'demo.blend')!r})
        sc = bpy.context.scene
        rig = next(o for o in sc.objects if o.type == "ARMATURE")
        res = {{"scene_ckpt": sc.busto.checkpoint, "rig_ckpt": rig.busto.checkpoint,
               "resolved_ckpt": prefs.resolve(bpy.context, sc, rig).checkpoint,
               "filepath": sc.render.filepath, "frames_abs": bpy.path.abspath(sc.render.filepath)}}
        sc.frame_end = sc.frame_start  # one frame of `blender -b demo.blend -a`
        bpy.ops.render.render(animation=True)
        print("RESULT" + json.dumps(res))
    """)
    env = {k: v for k, v in os.environ.items() if k != "BUSTO_CHECKPOINT"}
    env.update(BLENDER_USER_RESOURCES=str(tmp_path / "blender-user"), OMP_NUM_THREADS="2")
    away = ckpt.with_name(ckpt.name + ".away")  # the original checkpoint is gone while the copy renders
    ckpt.rename(away)
    try:
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env=env)
    finally:
        away.rename(ckpt)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT"))[len("RESULT"):])
    assert res["scene_ckpt"] == res["rig_ckpt"] == f"//../{ckpt.name}"
    assert Path(res["resolved_ckpt"]).resolve() == (moved / ckpt.name).resolve()
    assert res["filepath"] == "//frames/####"
    assert Path(res["frames_abs"]).parent.resolve() == (moved / "out" / "frames").resolve()
    from PIL import Image

    with Image.open(moved / "out" / "frames" / "0001.png") as im:  # rendered into the copy, with the copy's model
        frame = np.asarray(im.convert("RGB"))
    assert frame.shape == (SIZE, SIZE, 3) and not np.all(frame == (255, 0, 255))
    assert {p.name: p.stat().st_mtime_ns for p in (out / "frames").iterdir()} == original


# ------------------------------------------------------------------------------------------- the 360 demo in Blender
ORBIT = 8


@pytest.fixture(scope="module")
def demo_360_run(tmp_path_factory, tiny_checkpoints):
    """``--mode 360`` on a random-init ``tiny`` 360° checkpoint at the smallest settings the demo allows."""
    pytest.importorskip("bpy", reason="the bpy module (Blender 5.0.1) is not installed")
    tmp = tmp_path_factory.mktemp("demo360")
    out = tmp / "out"
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp / "blender-user"), OMP_NUM_THREADS="2",
               COLUMNS="120")
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "busto_apps", "demo", "--mode", "360", "--out", str(out), "--frames", "1",
         "--resolution", "16", "--mesh-resolution", "16", "--morphs", "0", "--orbit-frames", str(ORBIT),
         "--checkpoint", str(tiny_checkpoints["360"]), "--seed", str(SEED), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    seconds = time.perf_counter() - t0
    log = (out / "demo.log").read_text(errors="replace")[-3000:] if (out / "demo.log").is_file() else ""
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}\n--- demo.log ---\n{log}"
    return {"out": out, "seconds": seconds, "summary": json.loads((out / "summary.json").read_text())}


@pytest.mark.blender
def test_demo_360_renders_a_full_orbit(demo_360_run):
    from PIL import Image

    out, s = demo_360_run["out"], demo_360_run["summary"]
    assert s["mode"] == "360" and len(s["steps"]) == 11
    assert any(st["name"].startswith("Orbit") and "busto.orbit_camera" in st["name"] for st in s["steps"])
    # the head-turn/nod/shrug/smile part is still there
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["0001.png"]
    assert [g["preset"] for g in s["segments"]] == ["TURN", "NOD", "SHRUG", "SMILE"]
    assert sorted(p.name for p in (out / "orbit").iterdir()) == [f"{i:04d}.png" for i in range(1, ORBIT + 1)]
    assert (out / "orbit.mp4").stat().st_size > 0
    assert s["orbit"]["yaws_deg"] == [45.0 * i for i in range(ORBIT)]
    views = []
    for i in range(1, ORBIT + 1):
        with Image.open(out / "orbit" / f"{i:04d}.png") as im:
            assert im.size == (16, 16) and im.mode == "RGB"
            views.append(np.asarray(im).astype(np.int16))
    for v in views:
        assert not np.all(v == (255, 0, 255)), "a failed (magenta) orbit frame"
    for a, b in zip(views, views[1:] + views[:1]):  # every step of the turn changes the picture
        assert (np.abs(a - b).max(-1) >= 3).sum() > 4
    front, back = views[0], views[ORBIT // 2]
    assert (np.abs(front - back).max(-1) >= 3).sum() > 4, "the back view is the front view"
    assert demo_360_run["seconds"] < 240


@pytest.mark.blender
def test_demo_360_contact_sheet_has_the_orbit_row(demo_360_run, tmp_path):
    """One more row than the frontal layout, as wide as the 8 views, showing the orbit frames all round."""
    from PIL import Image

    from busto_apps.demo import ORBIT_SHEET_VIEWS, contact_sheet

    out, s = demo_360_run["out"], demo_360_run["summary"]
    tile, pad = 128, 6  # the sheet's tile for renders under 128 px, and its padding
    img = np.zeros((16, 16, 3), np.uint8)
    frames = [{"frame": 1, "neural": img, "mesh": img, "label": "rest"}]
    cmps = [{"frame": c["frame"], "overlay": img, "iou": c["iou"]} for c in s["comparisons"]]
    sizes = {}
    for name, orbit in (("frontal", None), ("360", [{"neural": img, "label": "x"}] * ORBIT_SHEET_VIEWS)):
        with Image.open(contact_sheet(frames, cmps, "t", "s", tmp_path / f"{name}.png", tile=tile,
                                      orbit=orbit)) as im:
            sizes[name] = im.size
    with Image.open(out / "contact-sheet.png") as im:
        sheet = np.asarray(im.convert("RGB"))
    assert (sheet.shape[1], sheet.shape[0]) == sizes["360"]
    assert sizes["360"][1] > sizes["frontal"][1] and sizes["360"][0] >= ORBIT_SHEET_VIEWS * tile
    # the last row holds the orbit frames the summary names, front view first, back view in the middle
    row_y = sheet.shape[0] - pad - (tile + 18 + pad)
    assert s["orbit"]["sheet_views"] == list(range(1, ORBIT + 1))
    for c, i in enumerate(s["orbit"]["sheet_views"]):
        with Image.open(out / "orbit" / f"{i:04d}.png") as im:
            want = np.asarray(im.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST))
        x = pad + c * (tile + pad)
        assert np.array_equal(sheet[row_y:row_y + tile, x:x + tile], want), f"orbit view {i} not on the sheet"
