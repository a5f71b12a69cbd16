"""Measure an exported avatar against the neural renderer, with Blender (the PyPI ``bpy`` 5.0.1 module).

    python -m busto_apps.export_quality --out out/export-quality [--checkpoint G.safetensors] [--seed 7]
        [--resolution 192] [--texture 1024] [--smooth 10] [--size 256] [--sheet docs/images/export-vs-neural.png]

Exports the avatar (``export_avatar``: mesh, rig, 8 expression morphs; textured unless ``--texture 0``), imports the
``.glb`` into Blender, poses it at the four extremes of ``python -m busto_apps demo`` (head turned, nodded,
shoulders shrugged, smiling; :func:`portrait_core.export.quality.demo_extremes`) and renders it with Workbench from
the portrait camera: flat light, texture colour (``--texture 0``: studio light and vertex colours, what the demo
shows). The neural frame is rendered at the same pose, expression and camera. Reported per extreme: PSNR inside both
silhouettes, the mean RGB of both there, silhouette IoU; for the canonical mesh: crease share and normal noise on
the face; the share of faces that flip at ±0.6 rad head turns and nods under the exported skin. Writes
``quality.json`` and a contact sheet (neural frame above, mesh render below). See docs/export.md ("Quality").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["render_glb", "measure", "contact_sheet", "main"]


def _blender_camera(bpy, scene, size: int):
    from blender_addon import convert
    from portrait_core import conventions as C
    from portrait_core.geometry.camera import Camera

    cam = bpy.data.cameras.new("portrait")
    cam.sensor_fit = "AUTO"
    cam.lens = convert.lens_for_fov(C.PORTRAIT_FOV_DEG, cam.sensor_width)
    cam.clip_start, cam.clip_end = 0.05, 20.0
    ob = bpy.data.objects.new("portrait", cam)
    scene.collection.objects.link(ob)
    import mathutils

    M = convert.cv_to_blender_camera(Camera.portrait().cam2world[0].double().numpy())
    ob.matrix_world = mathutils.Matrix(M.tolist())
    scene.camera = ob
    scene.render.resolution_x = scene.render.resolution_y = int(size)
    scene.render.resolution_percentage = 100


def render_glb(glb: str | Path, cases: dict[str, tuple[np.ndarray, np.ndarray]], *, size: int = 256,
               texture: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Import ``glb`` into an empty Blender scene and render it with Workbench from the portrait camera for each
    case (pose code [6,3], expression [64]; shape keys take ``expression[c] / morph_scale`` from the file's
    ``extras.busto.morph_expressions``). ``texture``: flat light, texture colour; else studio light, vertex
    colour. Returns {case: (rgb [size,size,3] sRGB in [0,1], alpha [size,size])}."""
    import bpy
    import mathutils
    from PIL import Image

    from blender_addon import convert
    from portrait_core.conventions import POSE_JOINT_NAMES

    meta = _busto_extras(glb)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if bpy.ops.import_scene.gltf(filepath=str(glb), disable_bone_shape=True) != {"FINISHED"}:
        raise RuntimeError(f"{glb}: Blender's glTF importer failed")
    arm = next(o for o in bpy.data.objects if o.type == "ARMATURE")
    mesh = next(o for o in bpy.data.objects if o.type == "MESH")
    sc = bpy.context.scene
    for o in bpy.data.objects:  # the file's animation must not override the pose set below
        if o.animation_data is not None:
            o.animation_data.action = None
    if mesh.data.shape_keys is not None and mesh.data.shape_keys.animation_data is not None:
        mesh.data.shape_keys.animation_data.action = None
    _blender_camera(bpy, sc, size)
    sc.render.engine = "BLENDER_WORKBENCH"
    sh = sc.display.shading
    sh.light, sh.color_type = ("FLAT", "TEXTURE") if texture else ("STUDIO", "VERTEX")
    sh.show_cavity = False
    sh.show_specular_highlight = False
    sc.view_settings.view_transform = "Standard"
    sc.render.film_transparent = True
    img = sc.render.image_settings
    img.file_format, img.color_mode, img.color_depth = "PNG", "RGBA", "8"
    rest = {n: np.array(arm.data.bones[n].matrix_local.to_3x3()) for n in POSE_JOINT_NAMES}
    scale = float(meta.get("morph_scale", 2.0))
    coeffs = meta.get("morph_expressions", {})
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (pose, expression) in cases.items():
            q = convert.pose_code_to_bone_quaternions(np.asarray(pose, np.float64),
                                                      np.stack([rest[n] for n in POSE_JOINT_NAMES]))
            for k, bone in enumerate(POSE_JOINT_NAMES):
                pb = arm.pose.bones[bone]
                pb.rotation_mode = "QUATERNION"
                pb.rotation_quaternion = mathutils.Quaternion(q[k].tolist())
            if mesh.data.shape_keys is not None:
                for kb in mesh.data.shape_keys.key_blocks[1:]:
                    idx = coeffs.get(kb.name) or coeffs.get(kb.name.removeprefix("expr "))
                    kb.value = float(np.asarray(expression)[idx[0]] / scale) if idx else 0.0
            bpy.context.view_layer.update()
            path = Path(tmp) / f"{name}.png"
            sc.render.filepath = str(path)
            bpy.ops.render.render(write_still=True)
            rgba = np.asarray(Image.open(path).convert("RGBA"), np.float32) / 255.0
            out[name] = (rgba[..., :3], rgba[..., 3])
    return out


def _busto_extras(glb: str | Path) -> dict:
    import pygltflib

    g = pygltflib.GLTF2().load_binary(str(glb))
    return dict((g.extras or {}).get("busto", {}))


def measure(avatar, out_dir: str | Path, *, resolution: int = 192, texture: int | None = 1024, smooth: int | None = None,
            size: int = 256, morphs: int = 8, extremes: list[str] | None = None) -> dict:
    """Export ``avatar`` to ``out_dir/avatar.glb`` and measure it (see the module docstring). Returns the figures."""
    import time

    from portrait_core.export import export_avatar
    from portrait_core.export.quality import (
        demo_extremes,
        flipped_faces,
        neural_frame,
        overlap_psnr,
        surface_metrics,
        turn_nod_poses,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    glb = out_dir / "avatar.glb"
    kw = {} if smooth is None else {"smooth": int(smooth)}
    t0 = time.perf_counter()
    res = export_avatar(avatar, glb, resolution=resolution, morphs=morphs, texture=texture or None, **kw)
    t_export = time.perf_counter() - t0
    cases = demo_extremes()
    if extremes is not None:
        cases = {k: cases[k] for k in extremes}
    t0 = time.perf_counter()
    meshes = render_glb(glb, cases, size=size, texture=bool(texture))
    t_blender = time.perf_counter() - t0
    rows, frames = {}, {}
    for name, (pose, expression) in cases.items():
        nrgb, nalpha, _ = neural_frame(avatar, pose, expression, size)
        mrgb, malpha = meshes[name]
        nm, mm = nalpha >= 0.5, malpha >= 0.5
        both = nm & mm
        rows[name] = {"psnr_db": round(overlap_psnr(nrgb, nm, mrgb, mm), 2),
                      "iou": round(float(both.sum() / max((nm | mm).sum(), 1)), 4),
                      "mean_rgb_neural": [round(float(x), 3) for x in nrgb[both].mean(0)],
                      "mean_rgb_mesh": [round(float(x), 3) for x in mrgb[both].mean(0)]}
        frames[name] = (nrgb * nalpha[..., None] + (1 - nalpha[..., None]), mrgb * malpha[..., None]
                        + (1 - malpha[..., None]))
    wv, wf = res.mesh.welded()
    surface = surface_metrics(wv, wf)
    flips = {k: round(100.0 * flipped_faces(res.mesh.vertices, res.rig.pose_mesh(res.mesh.vertices, p),
                                            res.mesh.faces), 4) for k, p in turn_nod_poses(0.6).items()}
    summary = {"glb": str(glb), "glb_bytes": glb.stat().st_size, "vertices": res.mesh.num_vertices,
               "faces": res.mesh.num_faces, "resolution": resolution, "texture": texture,
               "smooth": res.mesh.info.get("smooth"), "extremes": rows,
               "min_psnr_db": min(r["psnr_db"] for r in rows.values()),
               "crease_share_pct": round(100 * surface["crease_share"], 3),
               "normal_noise_deg": round(surface["normal_noise_deg"], 3), "flipped_faces_pct": flips,
               "texture_info": res.mesh.info.get("texture"), "t_export_s": round(t_export, 1),
               "t_blender_s": round(t_blender, 1)}
    (out_dir / "quality.json").write_text(json.dumps(summary, indent=1))
    np.savez_compressed(out_dir / "frames.npz", **{f"{k}_{i}": v[i] for k, v in frames.items() for i in (0, 1)})
    return summary


def contact_sheet(frames: dict[str, tuple[np.ndarray, np.ndarray]], rows: dict[str, dict], path: str | Path,
                  tile: int = 192, title: str = "") -> Path:
    """Neural frame (top) and the mesh render (bottom) per extreme, labelled with the PSNR; a palette PNG."""
    from PIL import Image, ImageDraw

    names = list(frames)
    pad, head = 4, 18
    W = len(names) * (tile + pad) + pad
    H = 2 * (tile + head) + pad + (head if title else 0)
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    y0 = head if title else 0
    if title:
        d.text((pad, 3), title, fill=(0, 0, 0))
    for i, name in enumerate(names):
        x = pad + i * (tile + pad)
        for r, (img, label) in enumerate(((frames[name][0], f"{name}: neural"),
                                          (frames[name][1], f"mesh {rows[name]['psnr_db']:.1f} dB"))):
            y = y0 + r * (tile + head)
            d.text((x, y + 3), label, fill=(0, 0, 0))
            im = Image.fromarray(np.clip(np.round(np.asarray(img) * 255), 0, 255).astype(np.uint8))
            sheet.paste(im.resize((tile, tile), Image.LANCZOS), (x, y + head))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m busto_apps.export_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/export-quality")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--truncation", type=float, default=0.7)
    p.add_argument("--resolution", type=int, default=192)
    p.add_argument("--texture", type=int, default=1024, help="texture size; 0 = vertex colours (the old export)")
    p.add_argument("--smooth", type=int, default=None, help="Taubin iterations (default: the export's)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--sheet", default=None, help="contact sheet PNG (default OUT/contact-sheet.png)")
    a = p.parse_args(argv)
    import torch

    from portrait_core.generator.loading import identity_for_seed, obtain_generator

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    g = obtain_generator(a.checkpoint, None)
    latents, _ = identity_for_seed(g, a.seed)
    avatar = g.make_avatar(latents, truncation=a.truncation)
    summary = measure(avatar, a.out, resolution=a.resolution, texture=a.texture or None, smooth=a.smooth,
                      size=a.size)
    data = np.load(Path(a.out) / "frames.npz")
    frames = {k: (data[f"{k}_0"], data[f"{k}_1"]) for k in summary["extremes"]}
    sheet = contact_sheet(frames, summary["extremes"], a.sheet or Path(a.out) / "contact-sheet.png",
                          title=f"seed {a.seed}: neural frame (top) vs exported mesh in Blender Workbench (bottom)")
    json.dump({**summary, "sheet": str(sheet)}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
