"""Contact sheet of a generator checkpoint (default: the shipped default model).

``python -m portrait_core.assets.contact_sheet [--checkpoint PATH] [--out docs/images/default-model.png]``

Rows: ``--avatars`` avatars (seeds ``--seed``, ``--seed`` + 1, ...: the avatars ``python -m portrait_core sample``
gives for those seeds) under a camera yaw sweep; one avatar under a head-turn sweep (pose joint 15
about +Y), a head-nod sweep (about +X) and two expression sweeps (``jaw_open``, ``smile``) seen through the face
camera (the close-up the method's face discriminator sees; a mouth is a few pixels of a 128^2 portrait). A
360-degree checkpoint (``render.mode = '360'``) gets 8 camera yaws all round per avatar and a row seen from above
instead of the frontal yaw sweep. Rendered
through ``Generator.make_avatar`` / ``Avatar.render`` (the path the add-on uses), super-resolved when available.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from portrait_core import conventions as C

__all__ = ["contact_sheet", "control_responses", "main"]


def _tiles(out) -> np.ndarray:
    img = ((out.image.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    return (img * 255).round().astype(np.uint8)


def control_responses(rows: list[tuple[str, np.ndarray]]) -> dict[str, float]:
    """How much each control sweep changes the picture: mean |pixel change| (0-255 scale) between a sweep's
    neutral tile (the first for jaw_open, else the middle) and its most distant extreme, per sweep row."""
    out = {}
    for label, tiles in rows:
        if label.startswith("avatar"):
            continue
        t = tiles.astype(np.float32)
        ref = 0 if "jaw_open" in label else len(t) // 2
        out[label] = round(max(float(np.abs(t[k] - t[ref]).mean()) for k in range(len(t)) if k != ref), 2)
    return out


@torch.no_grad()
def contact_sheet(G, samplers, out_path: str | Path, avatars: int = 4, columns: int = 5, seed: int = 0,
                  truncation: float = 1.0, yaw_range: float = 0.6, labels: bool = True,
                  responses: dict | None = None) -> Path:
    """Write the sheet (PNG) and return its path; ``responses`` (a dict) receives :func:`control_responses`.
    ``samplers``: the generator's label samplers (a ``LabelSampler`` or its file), None for the ones that belong
    to its checkpoint; avatar ``i`` is ``identity_for_seed(G, seed + i, samplers)``."""
    from PIL import Image, ImageDraw

    from portrait_core.face.model import EXPRESSION_NAMES
    from portrait_core.generator import Controls
    from portrait_core.generator.loading import identity_for_seed
    from portrait_core.geometry.camera import Camera

    drawn = [identity_for_seed(G, seed + i, samplers) for i in range(avatars)]
    betas = torch.cat([b.cpu() for _, b in drawn])
    sweep = torch.linspace(-1, 1, columns)
    rows: list[tuple[str, np.ndarray]] = []
    zero_pose = torch.zeros(columns, *C.POSE_SHAPE)
    zero_exp = torch.zeros(columns, C.EXPRESSION_DIM)
    full_turn = G.cfg.render.mode == "360"
    if full_turn:  # 360-degree models: 8 yaws all round (front, sides, back), and the same from above
        turn_yaws = C.FRONTAL_YAW + torch.arange(8) * (2 * math.pi / 8)
        cams = Camera.portrait(yaw=turn_yaws, pitch=torch.full((8,), C.FRONTAL_PITCH))
        above = Camera.portrait(yaw=turn_yaws, pitch=torch.full((8,), C.FRONTAL_PITCH - 0.9))
        yaw_label = "camera yaw front, then every 45 deg all round"
    else:
        cams = Camera.portrait(yaw=C.FRONTAL_YAW + yaw_range * sweep, pitch=torch.full((columns,), C.FRONTAL_PITCH))
        yaw_label = f"camera yaw {-yaw_range:+.1f}..{yaw_range:+.1f} rad"
    first = None
    for i in range(avatars):
        av = G.make_avatar(drawn[i][0], drawn[i][1], truncation=truncation)
        if first is None:
            first = av
        n = cams.batch_size
        rows.append((f"avatar {i}: {yaw_label}", _tiles(av.render(zero_pose[:1].expand(n, -1, -1), zero_exp[:1].expand(n, -1), cams))))
    if full_turn:
        rows.append(("avatar 0 from above (pitch -0.9 rad): the top of the head",
                     _tiles(first.render(zero_pose[:1].expand(8, -1, -1), zero_exp[:1].expand(8, -1), above))))
    front = Camera.portrait(batch=1)
    head = C.POSE_JOINTS.index(C.HEAD)
    turn = zero_pose.clone()
    turn[:, head, 1] = 0.6 * sweep
    rows.append(("head turn -0.6..+0.6 rad", _tiles(first.render(turn, zero_exp, front))))
    nod = zero_pose.clone()
    nod[:, head, 0] = 0.4 * sweep
    rows.append(("head nod -0.4..+0.4 rad", _tiles(first.render(nod, zero_exp, front))))
    face = G.face_camera(Controls(zero_pose[:1], zero_exp[:1], betas[:1]))
    for name in ("jaw_open", "smile"):
        exp = zero_exp.clone()
        exp[:, EXPRESSION_NAMES[name]] = torch.linspace(0, 2.5, columns) if name == "jaw_open" else 2.5 * sweep
        lo, hi = (0, 2.5) if name == "jaw_open" else (-2.5, 2.5)
        rows.append((f"face camera: expression {name} {lo}..{hi}", _tiles(first.render(zero_pose, exp, face))))
    if responses is not None:
        responses.update(control_responses(rows))
    size = rows[0][1].shape[1]
    pad = 14 if labels else 0
    width = max(len(tiles) for _, tiles in rows)
    sheet = Image.new("RGB", (width * size, len(rows) * (size + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, tiles) in enumerate(rows):
        y = r * (size + pad)
        if labels:
            draw.text((3, y + 1), label, fill=(0, 0, 0))
        for c in range(len(tiles)):
            sheet.paste(Image.fromarray(tiles[c]), (c * size, y + pad))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path, optimize=True)
    return out_path


def main(argv: list[str] | None = None) -> int:
    from portrait_core.generator import load_generator
    from portrait_core.generator.loading import default_checkpoint_path

    ap = argparse.ArgumentParser(prog="python -m portrait_core.assets.contact_sheet", description=__doc__)
    ap.add_argument("--checkpoint", default=str(default_checkpoint_path()))
    ap.add_argument("--samplers", default=None, help="label samplers of an appearance-code checkpoint (default: "
                    "the ones that belong to it)")
    ap.add_argument("--out", default="docs/images/default-model.png")
    ap.add_argument("--avatars", type=int, default=4)
    ap.add_argument("--columns", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--truncation", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    G = load_generator(a.checkpoint)
    responses: dict[str, float] = {}
    path = contact_sheet(G, a.samplers, a.out, a.avatars, a.columns, a.seed, a.truncation,
                         responses=responses)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    print("control response, mean |pixel change| 0-255 from the neutral tile:")
    for label, value in responses.items():
        print(f"  {label:<45} {value:6.2f}")
    return 0


if __name__ == "__main__":
    from portrait_core.cli.errors import run_cli

    sys.exit(run_cli(main))
