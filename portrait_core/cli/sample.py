"""``python -m portrait_core sample``: a PNG grid of avatars (rows: seeds) x camera yaw (columns).

In 360 degree mode the yaw sweep covers the full circle, back views included; in frontal mode it spans
+/- ``--yaw-range`` around the frontal view. Each avatar is baked once and its frames rendered in one batch.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from portrait_core import conventions as C
from portrait_core.cli.progress import progress
from portrait_core.generator.loading import identity_for_seed, obtain_generator, parse_int_list, samplers_for
from portrait_core.geometry.camera import Camera


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m portrait_core sample", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="generator .safetensors or training checkpoint folder (default: the shipped "
                     "default model, else a random-init preset)")
    src.add_argument("--preset", help="random-init preset when no checkpoint is used: paper, small, tiny")
    p.add_argument("--mode", choices=["frontal", "360"], help="render mode for a random-init preset")
    p.add_argument("--seeds", default="0-3", help="latent seeds, e.g. 0-7 or 1,4,9 (one row each)")
    p.add_argument("--samplers", help="label samplers of an appearance-code checkpoint (default: the ones that "
                   "belong to it, found by what it is: stored with it, or the shipped ones for the shipped model)")
    p.add_argument("--truncation", type=float, default=0.7)
    p.add_argument("--yaws", type=int, default=5, help="number of camera yaws (columns)")
    p.add_argument("--yaw-range", type=float, default=0.5, help="frontal mode: +/- radians around the front")
    p.add_argument("--pitch", type=float, default=C.FRONTAL_PITCH, help="camera pitch (polar angle, radians)")
    p.add_argument("--no-sr", action="store_true", help="show the low-resolution render")
    p.add_argument("--depth", action="store_true", help="add a depth row under each avatar")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-seed", type=int, default=0, help="weight seed of a random-init preset")
    p.add_argument("--out", default="grid.png")
    return p


def yaw_sweep(n: int, mode: str, yaw_range: float) -> torch.Tensor:
    """Camera yaws: the full circle from the front (360 mode) or front +/- yaw_range (frontal)."""
    if mode == "360":
        return C.FRONTAL_YAW + torch.arange(n) * (2 * math.pi / n)
    if n == 1:
        return torch.tensor([C.FRONTAL_YAW])
    return C.FRONTAL_YAW + torch.linspace(-yaw_range, yaw_range, n)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def depth_to_uint8(depth: torch.Tensor, alpha: torch.Tensor) -> np.ndarray:
    """Depth [B, 1, H, W] -> grey [B, H, W, 3] (near = bright) over the covered pixels, black elsewhere."""
    covered = alpha > 0.05
    d = depth.clone()
    lo = d[covered].min() if covered.any() else d.min()
    hi = d[covered].max() if covered.any() else d.max()
    g = ((hi - d) / (hi - lo + 1e-8)).clamp(0, 1) * covered
    return (g[:, 0, :, :, None].expand(-1, -1, -1, 3) * 255).round().byte().cpu().numpy()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from PIL import Image

    from portrait_core.cli.errors import usage_error

    try:
        seeds = parse_int_list(args.seeds)
    except ValueError as e:
        return usage_error(f"--seeds: {e}")
    if args.yaws < 1:
        return usage_error(f"--yaws must be >= 1, got {args.yaws}")
    g = obtain_generator(args.checkpoint, args.preset, args.device, args.mode, args.model_seed)
    samplers = samplers_for(g, args.samplers)  # None: N(0, I) latents
    yaws = yaw_sweep(args.yaws, g.cfg.render.mode, args.yaw_range)
    camera = Camera.portrait(yaw=yaws, pitch=torch.full_like(yaws, args.pitch)).to(g.device)
    rows = []
    with torch.no_grad(), progress("sample", len(seeds), unit="avatar") as advance:
        for seed in seeds:
            latents, body_shape = identity_for_seed(g, seed, samplers)
            avatar = g.make_avatar(latents, body_shape, truncation=args.truncation, super_resolve=not args.no_sr)
            n = len(yaws)
            out = avatar.render(torch.zeros(n, 6, 3), torch.zeros(n, C.EXPRESSION_DIM), camera,
                                super_resolve=not args.no_sr and avatar.textures_hr is not None)
            rows.append(np.concatenate(list(to_uint8(out.image)), axis=1))
            if args.depth:
                rows.append(np.concatenate(list(depth_to_uint8(out.depth, out.alpha)), axis=1))
            advance(1)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out_path)
    print(f"wrote {out_path} ({len(seeds)} avatars x {len(yaws)} yaws, {g.cfg.render.mode} mode, "
          f"truncation {args.truncation})")
    return 0


if __name__ == "__main__":
    from portrait_core.cli.errors import run_cli

    sys.exit(run_cli(main))
