"""``python -m portrait_core preview-body --out DIR``: PNG previews of the body and face models and the cameras.

For the canonical pose, three head/shoulder poses and three expressions, one PNG with five panels:

1. the portrait camera's view (the generator's frame), with the 68 face landmarks (green = visible, orange = hidden);
2. the face camera's view (it follows the head), with the landmarks;
3. the face model alone through the face camera (so expressions show even where the body's head covers the face);
4. a close side view (camera on +X, the subject's left) and 5. a three-quarter overview, both showing the body and
   the portrait (blue) and face (red) camera frusta from their centres to the far plane, with the near plane drawn.

Rendering is a small numpy z-buffered point-splat rasteriser (triangles sampled densely enough to cover every
pixel) with two-sided Lambert shading; no Blender involved. All geometry is metres in the canonical frame.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from portrait_core import conventions as C
from portrait_core.geometry.camera import Camera
from portrait_core.geometry.rotations import transform_points

#: (file stem, title, pose edits {slot: axis-angle}, expression edits {name: coefficient})
PREVIEWS: tuple[tuple[str, str, dict[int, tuple[float, float, float]], dict[str, float]], ...] = (
    ("canonical", "canonical pose, neutral", {}, {}),
    ("pose_head_turn", "head turn (neck 0.2 + head 0.45 rad about +Y)", {0: (0.0, 0.2, 0.0), 3: (0.0, 0.45, 0.0)}, {}),
    ("pose_nod", "nod (head 0.4 rad about +X, down)", {3: (0.4, 0.0, 0.0)}, {}),
    ("pose_shrug", "shrug (collars -/+0.25 rad about Z)", {1: (0.0, 0.0, 0.25), 2: (0.0, 0.0, -0.25)}, {}),
    ("expr_jaw_open", "expression: jaw_open +2.5", {}, {"jaw_open": 2.5}),
    ("expr_smile", "expression: smile +2.5", {}, {"smile": 2.5}),
    ("expr_blink", "expression: blink +2.5", {}, {"blink": 2.5}),
)

BODY_RGB = np.array([0.62, 0.70, 0.82])
FACE_RGB = np.array([0.93, 0.74, 0.62])
BACKGROUND_RGB = np.array([1.0, 1.0, 1.0])
LIGHT_DIR = np.array([0.35, 0.55, 1.0]) / np.linalg.norm([0.35, 0.55, 1.0])  # world, towards the light


@dataclass
class Mesh:
    vertices: np.ndarray  # [V, 3] metres, world
    faces: np.ndarray  # [F, 3] int
    rgb: np.ndarray  # [3] in [0, 1]


# --------------------------------------------------------------------------------------------- rasteriser
def render(cam: Camera, meshes: list[Mesh], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render meshes through a single camera (batch 1) -> (rgb [H, W, 3] float in [0, 1], depth [H, W], inf = empty).

    Every triangle is sampled on a barycentric grid fine enough (< 0.7 px spacing) to cover its pixels; samples are
    rounded to the nearest pixel centre and z-buffered. Shading: two-sided Lambert with a fixed world light.
    """
    H = W = size
    all_pix, all_z, all_shade = [], [], []
    for mesh in meshes:
        v = torch.as_tensor(mesh.vertices, dtype=torch.float64)[None]
        px_t, z_t = cam.to(dtype=torch.float64).project(v, H, W)
        px, z = px_t[0].numpy(), z_t[0].numpy()
        tri = mesh.faces
        tv = mesh.vertices[tri]  # [F, 3, 3]
        n = np.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0])
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        shade = 0.35 + 0.65 * np.abs(n @ LIGHT_DIR)
        tp, tz = px[tri], z[tri]  # [F, 3, 2], [F, 3]
        lo, hi = tp.min(1), tp.max(1)
        keep = (tz > 1e-6).all(1) & (hi[:, 0] >= -1) & (hi[:, 1] >= -1) & (lo[:, 0] <= W) & (lo[:, 1] <= H)
        tp, tz, shade = tp[keep], tz[keep], shade[keep]
        edge = np.max(np.linalg.norm(tp - np.roll(tp, 1, axis=1), axis=2), axis=1)
        k = np.clip(np.ceil(edge * 1.5).astype(np.int64) + 1, 2, 96)
        for kk in np.unique(k):
            sel = k == kk
            i, j = np.meshgrid(np.arange(kk), np.arange(kk), indexing="ij")
            m = (i + j) <= kk - 1
            a, b = i[m] / (kk - 1), j[m] / (kk - 1)
            w = np.stack([1 - a - b, a, b], 1)  # [S, 3]
            p = np.einsum("sk,fkd->fsd", w, tp[sel]).reshape(-1, 2)
            zz = np.einsum("sk,fk->fs", w, tz[sel]).reshape(-1)
            sh = np.repeat(shade[sel], len(w))
            col = np.rint(p[:, 0]).astype(np.int64)
            row = np.rint(p[:, 1]).astype(np.int64)
            ok = (col >= 0) & (col < W) & (row >= 0) & (row < H)
            all_pix.append(row[ok] * W + col[ok])
            all_z.append(zz[ok])
            all_shade.append(sh[ok][:, None] * mesh.rgb)
    rgb = np.tile(BACKGROUND_RGB, (H * W, 1))
    depth = np.full(H * W, np.inf)
    if all_pix:
        pix, zs, cols = np.concatenate(all_pix), np.concatenate(all_z), np.concatenate(all_shade)
        order = np.lexsort((zs, pix))
        pix, zs, cols = pix[order], zs[order], cols[order]
        first = np.ones(len(pix), bool)
        first[1:] = pix[1:] != pix[:-1]
        rgb[pix[first]] = cols[first]
        depth[pix[first]] = zs[first]
    return rgb.reshape(H, W, 3), depth.reshape(H, W)


def _to_image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


def _draw_landmarks(draw: ImageDraw.ImageDraw, cam: Camera, landmarks: np.ndarray, depth: np.ndarray,
                    size: int, tol: float = 0.006) -> int:
    """Draw landmarks (world [68, 3]); green if in front of the z-buffer (within ``tol`` metres). Returns #visible."""
    px_t, z_t = cam.to(dtype=torch.float64).project(torch.as_tensor(landmarks, dtype=torch.float64)[None], size,
                                                    size)
    px, z = px_t[0].numpy(), z_t[0].numpy()
    r = max(1.5, size / 160)
    visible = 0
    for (x, y), d in zip(px, z):
        ix, iy = int(round(x)), int(round(y))
        inside = 0 <= ix < size and 0 <= iy < size
        vis = inside and d <= depth[iy, ix] + tol
        visible += int(vis)
        colour = (0, 170, 0) if vis else (255, 140, 0)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour if vis else None, outline=colour)
    return visible


def _draw_frustum(draw: ImageDraw.ImageDraw, view: Camera, cam: Camera, size: int, colour) -> None:
    """Draw ``cam``'s frustum (centre to far-plane corners, near and far rectangles) as seen by ``view``."""
    near = cam.frustum_corners(cam.near)[0]
    far = cam.frustum_corners(cam.far)[0]
    pts = torch.cat([cam.origin, near, far], 0).to(torch.float64)[None]
    px, z = view.to(dtype=torch.float64).project(pts, size, size)
    p = [tuple(map(float, q)) for q in px[0]]
    if (z <= 0).any():
        return
    o, nr, fr = p[0], p[1:5], p[5:9]
    for c in fr:
        draw.line([o, c], fill=colour, width=1)
    draw.line(nr + nr[:1], fill=colour, width=1)
    draw.line(fr + fr[:1], fill=colour, width=2)
    draw.ellipse([o[0] - 3, o[1] - 3, o[0] + 3, o[1] + 3], fill=colour)


def _side_camera() -> Camera:
    """Close side camera on +X (the subject's left) framing head and shoulders with the near/far planes."""
    return Camera.orbit(0.0, math.pi / 2, 2.2, torch.tensor([0.0, 0.1, 0.02]), 26.0)


def _overview_camera() -> Camera:
    """Three-quarter camera from the front-left and above, framing the subject and both camera centres."""
    return Camera.orbit(math.pi / 2 - 1.1, math.pi / 2 - 0.3, 2.9, torch.tensor([0.0, 0.05, 0.95]), 46.0)


# --------------------------------------------------------------------------------------------- scene
def _load_models(smpl: str | None, bfm: str | None):
    from portrait_core.body.model import BodyModel
    from portrait_core.face.model import FaceModel

    body = BodyModel.from_file(smpl) if smpl else BodyModel.synthetic()
    face = FaceModel.from_mat(bfm) if bfm else FaceModel.synthetic()
    return body, face


def _scene(body, face, pose: torch.Tensor, expression: torch.Tensor):
    """Posed body and face meshes, landmarks (world) and the portrait and face cameras for batch 1."""
    betas = torch.zeros(1, C.BODY_SHAPE_DIM)
    identity = torch.zeros(1, C.IDENTITY_DIM)
    state = body.posed(betas, pose)
    T_face = body.face_transform(betas, pose)  # face frame -> observed
    fv = transform_points(T_face[:, None], face.vertices(identity, expression))
    lm = transform_points(T_face[:, None], face.landmarks(identity, expression))
    G, _ = body.bone_transforms(betas, pose)
    face_cam = Camera.face(G[:, C.HEAD], body.face_centre(betas))
    meshes = [
        Mesh(state.vertices[0].double().numpy(), body.faces.numpy(), BODY_RGB),
        Mesh(fv[0].double().numpy(), face.faces.numpy(), FACE_RGB),
    ]
    return meshes, lm[0].double().numpy(), Camera.portrait(), face_cam


def render_preview(body, face, pose: torch.Tensor, expression: torch.Tensor, size: int, title: str) -> Image.Image:
    """One preview image: portrait view | face-camera view | face model alone | side view | overview (with frusta),
    and a title bar."""
    meshes, lm, portrait, face_cam = _scene(body, face, pose, expression)
    panels = []
    for name, cam in (("portrait camera", portrait), ("face camera", face_cam)):
        rgb, depth = render(cam, meshes, size)
        img = _to_image(rgb)
        d = ImageDraw.Draw(img)
        vis = _draw_landmarks(d, cam, lm, depth, size)
        d.text((4, size - 14), f"{name}  ({vis}/68 landmarks visible)", fill=(0, 0, 0))
        panels.append(img)
    # the face model alone through the face camera (expressions stay visible where the body's head covers the face)
    rgb, depth = render(face_cam, meshes[1:], size)
    img = _to_image(rgb)
    d = ImageDraw.Draw(img)
    vis = _draw_landmarks(d, face_cam, lm, depth, size)
    d.text((4, size - 14), f"face model only ({vis}/68 visible)", fill=(0, 0, 0))
    panels.append(img)
    for name, view in (("side (+X)", _side_camera()), ("overview", _overview_camera())):
        rgb, depth = render(view, meshes, size)
        img = _to_image(rgb)
        d = ImageDraw.Draw(img)
        _draw_frustum(d, view, portrait, size, (40, 80, 220))
        _draw_frustum(d, view, face_cam, size, (220, 40, 40))
        _draw_landmarks(d, view, lm, depth, size)
        d.text((4, size - 14), f"{name}: portrait (blue) / face (red) frusta", fill=(0, 0, 0))
        panels.append(img)
    bar = 18
    sheet = Image.new("RGB", (len(panels) * (size + 2) - 2, size + bar), (255, 255, 255))
    for i, p in enumerate(panels):
        sheet.paste(p, (i * (size + 2), bar))
    ImageDraw.Draw(sheet).text((4, 3), title, fill=(0, 0, 0))
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m portrait_core preview-body", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder for the PNGs")
    parser.add_argument("--size", type=int, default=256, help="panel size in pixels (default 256)")
    parser.add_argument("--smpl", default=None, help="SMPL model file (.pkl/.npz); default: the synthetic body")
    parser.add_argument("--bfm", default=None, help="BFM_model_front.mat; default: the synthetic 3DMM")
    parser.add_argument("--only", nargs="*", default=None, help="preview names to write (default: all)")
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error("--size must be at least 32")
    names = [p[0] for p in PREVIEWS]
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown preview(s) {unknown}; choose from {names}")
    from portrait_core.face.model import EXPRESSION_NAMES

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    body, face = _load_models(args.smpl, args.bfm)
    with torch.no_grad():
        for stem, title, pose_edits, expr_edits in PREVIEWS:
            if args.only and stem not in args.only:
                continue
            pose = torch.zeros(1, 6, 3)
            for slot, aa in pose_edits.items():
                pose[0, slot] = torch.tensor(aa)
            expression = torch.zeros(1, C.EXPRESSION_DIM)
            for name, value in expr_edits.items():
                expression[0, EXPRESSION_NAMES[name]] = value
            img = render_preview(body, face, pose, expression, args.size, title)
            path = out / f"{stem}.png"
            img.save(path)
            print(path)
    return 0


if __name__ == "__main__":
    from portrait_core.cli.errors import run_cli

    sys.exit(run_cli(main))
