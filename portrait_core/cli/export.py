"""``python -m portrait_core export``: a rigged, coloured, expressive glTF avatar (or a static .obj/.ply).

Example::

    python -m portrait_core export --checkpoint G.safetensors --seed 7 --resolution 256 --morphs 8 \\
        --keyframes tests/data/aniportraitgan-keyframes/real_video_sample1 --key-interval 1 --out avatar.glb

The GLB holds the canonical-pose mesh (metres, Y-up, +Z front, origin at the canonical neck joint), a skin with
the SMPL upper-body joints of the avatar's body shape, ``--morphs`` expression morph targets, and one animation per
``--keyframes`` source (official AniPortraitGAN keyframe folder or Busto keyframe JSON). See docs/export.md.
Without ``--checkpoint`` the shipped default model is used (seeds draw identities from its label samplers); with
``--preset`` a randomly initialised generator of that preset (the pipeline works, the avatar is meaningless; its
opacity never reaches 0.5, so the threshold defaults to ``auto`` there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from portrait_core.export.extract import SMOOTH_ITERATIONS
from portrait_core.export.pipeline import DEFAULT_KEY_INTERVAL, DEFAULT_TEXTURE_SIZE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m portrait_core export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="generator checkpoint (.safetensors or a training checkpoint); default: the shipped model, "
                        "else a random-init --preset")
    p.add_argument("--preset", default=None,
                   help="use a random-init generator of this preset (small, tiny) instead of the shipped model")
    p.add_argument("--seed", type=int, default=0, help="latent seed of the avatar (identity + noise)")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi of the avatar's styles")
    p.add_argument("--body-shape", type=float, nargs="*", default=None, metavar="BETA",
                   help="SMPL betas (up to 10 floats; default zeros)")
    p.add_argument("--resolution", type=int, default=256, help="grid nodes along the box's longest side")
    p.add_argument("--level", default=None,
                   help="occupancy threshold (default 0.5; 'auto' = half the field's maximum; "
                        "random-init default 'auto')")
    p.add_argument("--decimate", type=int, default=None, metavar="FACES", help="quadric decimation target")
    p.add_argument("--morphs", default="8",
                   help="number of expression morph targets (first coefficients) or a comma list of names/indices "
                        "(e.g. jaw_open,smile,brow_raise,blink)")
    p.add_argument("--morph-scale", type=float, default=2.0, help="expression amplitude of a morph at weight 1")
    p.add_argument("--keyframes", type=Path, nargs="*", default=[], metavar="DIR_OR_JSON",
                   help="keyframe sources; one glTF animation each")
    p.add_argument("--key-interval", type=int, default=DEFAULT_KEY_INTERVAL,
                   help=f"frames between evenly spaced keyframes (sources without frame numbers; "
                        f"{DEFAULT_KEY_INTERVAL}, as `video --key-interval`)")
    p.add_argument("--texture", type=int, default=DEFAULT_TEXTURE_SIZE, metavar="TEXELS",
                   help=f".glb: baked colour texture size, a power of two ({DEFAULT_TEXTURE_SIZE}); 0 = vertex colours")
    p.add_argument("--smooth", type=int, default=SMOOTH_ITERATIONS, metavar="N",
                   help=f"Taubin smoothing iterations of the surface ({SMOOTH_ITERATIONS}; 0 = raw marching cubes)")
    p.add_argument("--fps", type=float, default=None, help="animation frame rate (default: the source's, else 30)")
    p.add_argument("--pose", type=float, nargs=18, default=None, metavar="AA",
                   help="static exports (.obj/.ply): pose code, 6 joints x 3 axis-angle")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True, help="output .glb, .obj or .ply")
    p.add_argument("--json", action="store_true", help="print a JSON summary (timings, counts)")
    return p


def _morphs(spec: str):
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if len(items) == 1 and items[0].isdigit():
        return int(items[0])
    return [int(s) if s.isdigit() else s for s in items]


def _level(arg: str | None, random_init: bool):
    if arg is None:
        return "auto" if random_init else 0.5
    if arg == "auto":
        return arg
    try:
        return float(arg)
    except ValueError:
        raise ValueError(f"--level must be a number or 'auto', got {arg!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch

    from portrait_core.cli.errors import usage_error
    from portrait_core.export import EmptyFieldError, export_avatar, extract_mesh, write_mesh
    from portrait_core.generator.loading import identity_for_seed, obtain_generator

    suffix = args.out.suffix.lower()
    if suffix not in (".glb", ".obj", ".ply"):
        return usage_error(f"{args.out}: --out must end in .glb, .obj or .ply")
    try:
        _level(args.level, False)  # a bad --level fails before the model loads
    except ValueError as e:
        return usage_error(str(e))
    if args.body_shape and len(args.body_shape) > 10:
        return usage_error(f"--body-shape takes at most 10 betas, got {len(args.body_shape)}")
    t0 = time.perf_counter()
    G = obtain_generator(None if args.checkpoint is None else str(args.checkpoint), args.preset, device=args.device,
                         model_seed=args.seed, log=lambda msg: print(f"export: {msg}", file=sys.stderr))
    random_init = getattr(G, "checkpoint_path", None) is None
    G = G.to(args.device).eval()
    latents, betas = identity_for_seed(G, args.seed)
    if args.body_shape:
        betas = torch.zeros(1, 10)
        betas[0, : len(args.body_shape)] = torch.tensor(args.body_shape)
    with torch.no_grad():
        avatar = G.make_avatar(latents, betas, truncation=args.truncation)
    t_avatar = time.perf_counter() - t0
    level = _level(args.level, random_init)
    try:
        if suffix != ".glb" and args.pose is not None:
            mesh = extract_mesh(avatar, args.resolution, pose=torch.tensor(args.pose).reshape(6, 3),
                                decimate=args.decimate, level=level, smooth=args.smooth)
            write_mesh(args.out, mesh)
            summary: dict[str, Any] = {"vertices": mesh.num_vertices, "faces": mesh.num_faces, "timings": mesh.info}
        else:
            res = export_avatar(avatar, args.out, resolution=args.resolution, morphs=_morphs(args.morphs),
                                morph_scale=args.morph_scale, keyframes=args.keyframes,
                                key_interval=args.key_interval, fps=args.fps, decimate=args.decimate, level=level,
                                texture=args.texture or None, smooth=args.smooth)
            summary = {"vertices": res.mesh.num_vertices, "faces": res.mesh.num_faces,
                       "joints": 0 if res.rig is None else res.rig.num_joints, "morphs": list(res.morphs),
                       "animations": [a.name for a in res.animations], "timings": res.timings}
    except EmptyFieldError as e:
        print(f"error: {args.out}: no mesh written: {e}", file=sys.stderr)
        return 1
    summary.update({"out": str(args.out), "bytes": args.out.stat().st_size, "avatar_seconds": t_avatar,
                    "level": level, "random_init": random_init})
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        t = summary["timings"]
        total = t.get("total", t.get("t_total", 0.0))
        print(f"wrote {args.out} ({summary['bytes'] / 1e6:.2f} MB): {summary['vertices']} vertices, "
              f"{summary['faces']} faces, {summary.get('joints', 0)} joints, {len(summary.get('morphs', []))} morphs, "
              f"{len(summary.get('animations', []))} animations; avatar {t_avatar:.1f} s, export {total:.1f} s")
    return 0


if __name__ == "__main__":
    from portrait_core.cli.errors import run_cli

    sys.exit(run_cli(main))
