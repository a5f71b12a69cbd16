"""``python -m busto_apps bench-blender``: the add-on's whole workflow in headless Blender, timed, with a look.

    python -m busto_apps bench-blender [--checkpoint PATH | --random-init PRESET] [--frames 24] [--size 128]
        [--out DIR] [--level 0.5]

Default checkpoint: the shipped model; ``--random-init PRESET`` saves a random-init generator of PRESET (seed 0)
instead. It loads the model, samples an avatar, extracts and binds its mesh, keys a nod, renders ``--frames``
frames at ``--size``^2 with Busto Neural (timed), and writes ``neural.png`` (engine) beside ``mesh.png``
(Workbench render of the mesh from the same camera), ``side_by_side.png`` (neural | mesh | mesh silhouette over
the neural image) and ``bench.json`` (timings, silhouette IoU). Needs the ``blender`` extra (bpy).
``python -m portrait_core bench-blender`` is an alias. Blender's EGL probing lines on stderr are hidden
(:mod:`busto_apps.blender_output`; their count is ``egl_probe_lines_hidden`` in ``bench.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="busto-bench-"))
    ap = argparse.ArgumentParser(prog="python -m busto_apps bench-blender", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="generator .safetensors (default: the shipped model)")
    ap.add_argument("--random-init", default=None, metavar="PRESET", help="time a random-init generator of PRESET")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--level", type=float, default=None, help="mesh density threshold (default: 0.5, or automatic "
                                                              "for a random-init model)")
    ap.add_argument("--mesh-resolution", type=int, default=128)
    ap.add_argument("--out", default="out/blender-bench")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lens", type=float, default=None, help="camera focal length in mm (default: the portrait "
                                                              "camera's 171 mm)")
    args = ap.parse_args(argv)
    from busto_apps.blender_output import hidden_lines

    with hidden_lines() as egl:
        report = _bench(args)
    report["egl_probe_lines_hidden"] = egl["hidden"]
    out = Path(args.out).resolve()
    from portrait_core.atomic import atomic_write_json

    atomic_write_json(out / "bench.json", report, indent=2)
    print(json.dumps(report, indent=2))
    return 0


def _bench(args: argparse.Namespace) -> dict:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import numpy as np
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    timings: dict[str, float] = {}
    random_init = args.random_init is not None
    if random_init:
        from portrait_core.generator import Generator, generator_config, save_generator

        torch.manual_seed(0)
        ckpt = str(out / f"{args.random_init}-random-init.safetensors")
        save_generator(ckpt, Generator(generator_config(args.random_init)), info={"note": "random init (benchmark)"})
    else:
        from portrait_core.assets import default_checkpoint_path

        ckpt = str(args.checkpoint or default_checkpoint_path())
    auto_level = args.level is None and random_init
    level = args.level if args.level is not None else 0.5

    import bpy

    import blender_addon
    blender_addon.register()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    sc = bpy.context.scene
    sc.busto.checkpoint = ckpt
    os.environ["BUSTO_DEVICE"] = args.device

    def timed(name, fn):
        t = time.perf_counter()
        r = fn()
        timings[name] = round(time.perf_counter() - t, 3)
        print(f"{name}: {timings[name]:.2f} s", flush=True)
        return r

    timed("load_model", lambda: bpy.ops.busto.load_model())
    sc.busto.new_seed = args.seed
    timed("sample_avatar", lambda: bpy.ops.busto.sample_avatar(new_avatar=True))
    rig = bpy.context.view_layer.objects.active
    sc.busto.mesh_resolution, sc.busto.mesh_level, sc.busto.mesh_auto_level = args.mesh_resolution, level, auto_level
    timed("extract_mesh", lambda: bpy.ops.busto.extract_mesh())
    mesh = rig.busto.mesh
    bpy.ops.busto.add_camera(kind="PORTRAIT")
    if args.lens:
        sc.camera.data.lens = args.lens
    bpy.ops.busto.setup_render(resolution=args.size)
    sc.busto.anim_interval = max(1, (args.frames - 1) // 4)
    bpy.ops.busto.animation_preset(preset="NOD")
    sc.frame_start, sc.frame_end = 1, args.frames
    sc.render.image_settings.file_format = "PNG"
    sc.render.filepath = str(out / "frames" / "frame_####")
    frame_times = []

    def pre(_s, _d=None):
        frame_times.append(time.perf_counter())

    bpy.app.handlers.render_pre.append(pre)
    timed("render_animation", lambda: bpy.ops.render.render(animation=True))
    bpy.app.handlers.render_pre.remove(pre)
    timings["per_frame_mean"] = round(float(np.mean(np.diff(frame_times))), 3) if len(frame_times) > 1 else None
    # frame 1: neural vs mesh from the same camera, in the posed frame 7 (head nodded)
    look = 1 + sc.busto.anim_interval
    sc.frame_set(look)
    sc.render.filepath = str(out / "neural.png")
    bpy.ops.render.render(write_still=True)
    world = bpy.data.worlds.new("white")
    world.color = (1.0, 1.0, 1.0)
    sc.world = world
    sc.render.engine = "BLENDER_WORKBENCH"
    sh = sc.display.shading
    sh.light, sh.color_type = "STUDIO", "VERTEX"
    sc.render.filepath = str(out / "mesh.png")
    bpy.ops.render.render(write_still=True)

    def load(p):
        img = bpy.data.images.load(str(p))
        w, h = img.size
        a = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(a)
        return np.flipud(a.reshape(h, w, 4))[..., :3]

    neural, meshimg = load(out / "neural.png"), load(out / "mesh.png")
    sil = (np.abs(meshimg - 1.0).max(-1) > 0.02)
    edge = np.zeros_like(sil)
    edge[1:] |= sil[1:] ^ sil[:-1]
    edge[:, 1:] |= sil[:, 1:] ^ sil[:, :-1]
    overlay = neural.copy()
    overlay[edge] = [1.0, 0.0, 0.0]
    strip = np.concatenate([neural, meshimg, overlay], axis=1)
    img = bpy.data.images.new("side", strip.shape[1], strip.shape[0])
    img.pixels.foreach_set(np.concatenate([np.flipud(strip), np.ones((*strip.shape[:2], 1), np.float32)], -1).ravel())
    img.filepath_raw = str(out / "side_by_side.png")
    img.file_format = "PNG"
    img.save()
    neural_fg = np.abs(neural - 1.0).max(-1) > 0.06
    inter, union = (neural_fg & sil).sum(), (neural_fg | sil).sum()
    report = {"checkpoint": ckpt, "random_init": random_init, "frames": args.frames, "size": args.size,
              "mesh_vertices": len(mesh.data.vertices), "mesh_faces": len(mesh.data.polygons),
              "silhouette_iou": round(float(inter / max(union, 1)), 3), "compared_frame": look,
              "timings_s": timings, "torch_threads": torch.get_num_threads()}
    return report


if __name__ == "__main__":
    from portrait_core.cli.errors import run_cli

    sys.exit(run_cli(main))
