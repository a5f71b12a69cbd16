"""UV unwrap (xatlas) and a colour texture baked from the neural renderer.

The canonical mesh is unwrapped into charts (xatlas); every texel inside a chart is a point on the surface
(barycentric). The avatar is rendered by its own neural renderer (canonical pose, neutral expression) from several
portrait cameras around the frontal one; each texel takes the colour of the pixels that see it, averaged in linear
light with weights ``alpha² · cos(view angle)^k`` over the views where it is visible (depth test against a z-buffer
splatted from all texels). Texels no view sees keep the vertex colour (``avatar.color_field``). Empty texels next to
charts are filled from their neighbours (gutter) so filtering never reads the background.

Conventions: canonical metres (SMPL axes, +Y up, facing +Z); UV as glTF (u right, v down from the image's top-left
corner: texel row ``i`` holds v in [i/S, (i+1)/S)); the texture is sRGB-encoded uint8 [S, S, 3] (what glTF's
``baseColorTexture`` and Blender's importer expect). See docs/export.md ("Texture").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["UVLayout", "unwrap", "rasterize_uv", "bake_views", "bake_texture", "DEFAULT_VIEWS", "srgb_encode",
           "srgb_decode", "check_texture_size"]

#: (yaw, pitch) offsets (radians) from the frontal portrait camera: front, turned left/right, up/down, and the
#: diagonals — the head turns and nods of the demo (±0.36 rad) stay inside this cone.
DEFAULT_VIEWS: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (0.3, 0.0), (-0.3, 0.0), (0.6, 0.0), (-0.6, 0.0), (0.0, 0.25), (0.0, -0.25),
    (0.3, 0.2), (-0.3, 0.2), (0.3, -0.2), (-0.3, -0.2),
)


def srgb_decode(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def srgb_encode(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


@dataclass
class UVLayout:
    """xatlas result: ``vmap`` [V'] index of the source vertex of each new vertex (seams split vertices),
    ``faces`` [F,3] uint32 into the new vertices (same order and winding as the source faces), ``uvs`` [V',2]
    float32 in [0,1] (glTF convention, v down), ``size`` the texture size in texels."""

    vmap: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    size: int


def unwrap(vertices: np.ndarray, faces: np.ndarray, size: int = 1024, padding: int = 4,
           piece_faces: int = 8000) -> UVLayout:
    """UV-unwrap a triangle mesh with xatlas into one ``size``² atlas with ``padding`` texels between charts.

    xatlas' charting grows faster than linearly with the face count (62k faces: ~50 s on 2 cores), so the mesh is
    first cut into spatially coherent pieces of at most ``piece_faces`` faces (recursive median splits of the
    face centroids along the longest axis); each piece is charted on its own and all charts are packed together
    (~10 s). Piece borders become chart borders."""
    import xatlas

    v = np.ascontiguousarray(vertices, np.float32)
    f = np.asarray(faces, np.int64)
    centroids = v[f].mean(1)
    todo, pieces = [np.arange(len(f))], []
    while todo:
        g = todo.pop()
        if len(g) <= piece_faces:
            pieces.append(g)
            continue
        c = centroids[g]
        order = np.argsort(c[:, int(np.argmax(np.ptp(c, 0)))], kind="stable")
        todo += [g[order[:len(g) // 2]], g[order[len(g) // 2:]]]
    atlas = xatlas.Atlas()
    used_of = []
    for g in pieces:
        used, inverse = np.unique(f[g], return_inverse=True)
        used_of.append(used)
        atlas.add_mesh(v[used], inverse.reshape(-1, 3).astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise ValueError(f"xatlas made {atlas.atlas_count} atlases; expected one at {size}² texels")
    vmaps, uvs, out_faces, offset = [], [], np.zeros((len(f), 3), np.uint32), 0
    for i, g in enumerate(pieces):
        vm, idx, uv = atlas.get_mesh(i)
        vmaps.append(used_of[i][np.asarray(vm, np.int64)])
        uvs.append(np.asarray(uv, np.float32))
        out_faces[g] = np.asarray(idx, np.int64).reshape(-1, 3) + offset
        offset += len(vm)
    return UVLayout(np.concatenate(vmaps), out_faces, np.concatenate(uvs), int(size))


def rasterize_uv(uvs: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Texels inside the UV triangles: (face [S,S] int64, -1 where empty; barycentrics [S,S,3] float32).
    Texel (i, j) has its centre at uv ((j + ½)/S, (i + ½)/S)."""
    face_of = np.full((size, size), -1, np.int64)
    bary = np.zeros((size, size, 3), np.float32)
    p = np.asarray(uvs, np.float64)[np.asarray(faces, np.int64)] * size - 0.5  # texel-centre coordinates [F,3,2]
    lo = np.ceil(p.min(1) - 1e-9).astype(np.int64).clip(0, size - 1)
    hi = np.floor(p.max(1) + 1e-9).astype(np.int64).clip(0, size - 1)
    ext = hi - lo + 1  # [F, 2] (x, y)
    ok = (ext > 0).all(1)
    a, b, c = p[:, 0], p[:, 1], p[:, 2]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    ok &= np.abs(det) > 1e-12
    keys = ext[:, 0] * 100000 + ext[:, 1]
    for key in np.unique(keys[ok]):
        sel = np.nonzero(ok & (keys == key))[0]
        w, h = int(key // 100000), int(key % 100000)
        for start in range(0, len(sel), max(1, 2_000_000 // (w * h))):
            s = sel[start:start + max(1, 2_000_000 // (w * h))]
            gx, gy = np.meshgrid(np.arange(w), np.arange(h), indexing="xy")
            x = lo[s, 0][:, None] + gx.ravel()[None]  # [n, w*h]
            y = lo[s, 1][:, None] + gy.ravel()[None]
            d = det[s][:, None]
            l1 = ((x - a[s, 0:1]) * (c[s, 1:2] - a[s, 1:2]) - (c[s, 0:1] - a[s, 0:1]) * (y - a[s, 1:2])) / d
            l2 = ((b[s, 0:1] - a[s, 0:1]) * (y - a[s, 1:2]) - (x - a[s, 0:1]) * (b[s, 1:2] - a[s, 1:2])) / d
            l0 = 1.0 - l1 - l2
            inside = (l0 >= -1e-6) & (l1 >= -1e-6) & (l2 >= -1e-6)
            fi, k = np.nonzero(inside)
            yy, xx = y[fi, k], x[fi, k]
            face_of[yy, xx] = s[fi]
            bary[yy, xx] = np.stack([l0[fi, k], l1[fi, k], l2[fi, k]], -1)
    return face_of, bary


def _texel_points(layout: UVLayout, vertices: np.ndarray, normals: np.ndarray):
    face_of, bary = rasterize_uv(layout.uvs, layout.faces, layout.size)
    covered = face_of >= 0
    fidx = face_of[covered]
    b = bary[covered].astype(np.float64)
    tri = np.asarray(layout.faces, np.int64)[fidx]
    v = np.asarray(vertices, np.float64)[layout.vmap]
    n = np.asarray(normals, np.float64)[layout.vmap]
    pts = np.einsum("nk,nkc->nc", b, v[tri])
    nrm = np.einsum("nk,nkc->nc", b, n[tri])
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    return covered, pts, nrm, tri, b


def _sample_bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """img [H,W,C] at pixel-centre coordinates (x right, y down; pixel (i,j) centre at (j, i))."""
    h, w = img.shape[:2]
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    x0 = np.floor(x).astype(np.int64).clip(0, w - 2)
    y0 = np.floor(y).astype(np.int64).clip(0, h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return (img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x0 + 1] * fx * (1 - fy)
            + img[y0 + 1, x0] * (1 - fx) * fy + img[y0 + 1, x0 + 1] * fx * fy)


def bake_views(points: np.ndarray, normals: np.ndarray, views: Sequence[dict], *, power: float = 4.0,
               depth_tolerance: float = 0.006, min_alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Project ``points`` [N,3] (outward ``normals`` [N,3]) into rendered views and blend their colours.

    Each view is ``{"rgb": [H,W,3] sRGB over white, "alpha": [H,W], "cam2world": [4,4] OpenCV,
    "intrinsics": [3,3] normalised}``. A point counts in a view when it faces the camera, lies within
    ``depth_tolerance`` (m) of the nearest point splatted into its pixel (the points themselves, a dense sampling
    of the surface, are the z-buffer), and the view's alpha there is at least ``min_alpha``. Weight
    ``alpha² · cos^power``. Returns (linear rgb [N,3], total weight [N])."""
    pts = np.asarray(points, np.float64)
    nrm = np.asarray(normals, np.float64)
    acc = np.zeros((len(pts), 3))
    wsum = np.zeros(len(pts))
    for view in views:
        rgb = np.asarray(view["rgb"], np.float32)
        alpha = np.asarray(view["alpha"], np.float32)
        h, w = alpha.shape
        M = np.asarray(view["cam2world"], np.float64)
        K = np.asarray(view["intrinsics"], np.float64)
        R, t = M[:3, :3], M[:3, 3]
        cam = (pts - t) @ R  # world -> camera (OpenCV: z forward)
        z = cam[:, 2]
        front = z > 1e-3
        x = (K[0, 0] * cam[:, 0] / np.maximum(z, 1e-3) + K[0, 2]) * w - 0.5
        y = (K[1, 1] * cam[:, 1] / np.maximum(z, 1e-3) + K[1, 2]) * h - 0.5
        inside = front & (x > -0.5) & (x < w - 0.5) & (y > -0.5) & (y < h - 0.5)
        view_dir = pts - t
        view_dir /= np.maximum(np.linalg.norm(view_dir, axis=1, keepdims=True), 1e-12)
        cos = -(nrm * view_dir).sum(1)
        # z-buffer at 2x the pixel size (fewer holes between splatted points), min depth per cell
        cell = (np.clip(np.round(y / 2), 0, (h - 1) // 2) * ((w + 1) // 2)
                + np.clip(np.round(x / 2), 0, (w - 1) // 2)).astype(np.int64)
        ncell = ((h + 1) // 2) * ((w + 1) // 2)
        zb = torch.full((ncell,), float("inf"), dtype=torch.float64)
        sel = np.nonzero(inside)[0]
        zb.scatter_reduce_(0, torch.from_numpy(cell[sel]), torch.from_numpy(z[sel]), reduce="amin")
        zmin = zb.numpy()[cell]
        a = _sample_bilinear(alpha[..., None], x, y)[:, 0]
        visible = inside & (cos > 0.05) & (z <= zmin + depth_tolerance) & (a >= min_alpha)
        idx = np.nonzero(visible)[0]
        if len(idx) == 0:
            continue
        col = _sample_bilinear(rgb, x[idx], y[idx]).astype(np.float64)
        ai = a[idx][:, None]
        straight = np.clip((col - (1.0 - ai)) / np.maximum(ai, 1e-3), 0.0, 1.0)  # un-composite the white background
        wgt = ai[:, 0] ** 2 * np.clip(cos[idx], 0.0, 1.0) ** power
        acc[idx] += wgt[:, None] * srgb_decode(straight)
        wsum[idx] += wgt
    return acc / np.maximum(wsum, 1e-12)[:, None], wsum


def _fill_gutter(img: np.ndarray, filled: np.ndarray, iterations: int = 16) -> np.ndarray:
    """Grow ``img`` [S,S,3] from ``filled`` texels into empty ones (mean of filled 8-neighbours), ``iterations``
    rings; remaining empty texels take the mean colour."""
    img = img.copy()
    filled = filled.copy()
    for _ in range(iterations):
        if filled.all():
            break
        pad = np.pad(img * filled[..., None], ((1, 1), (1, 1), (0, 0)))
        cnt = np.pad(filled.astype(np.float32), 1)
        s = np.zeros_like(img)
        c = np.zeros(filled.shape, np.float32)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                if dy == 1 and dx == 1:
                    continue
                s += pad[dy:dy + img.shape[0], dx:dx + img.shape[1]]
                c += cnt[dy:dy + img.shape[0], dx:dx + img.shape[1]]
        grow = (~filled) & (c > 0)
        img[grow] = s[grow] / c[grow][:, None]
        filled = filled | grow
    if not filled.all() and filled.any():
        img[~filled] = img[filled].mean(0)
    return img


@torch.no_grad()
def bake_texture(avatar, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray,
                 colors: np.ndarray | None = None, *, size: int = 1024,
                 views: Sequence[tuple[float, float]] = DEFAULT_VIEWS, render_size: int = 256,
                 layout: UVLayout | None = None) -> tuple[UVLayout, np.ndarray, dict]:
    """Unwrap the canonical mesh and bake its colour texture from the avatar's neural renders.

    ``views``: (yaw, pitch) offsets from the frontal portrait camera; each is rendered at ``render_size``² in the
    canonical pose with a neutral expression (super-resolved when the avatar has it). ``colors`` [V,3] sRGB vertex
    colours fill texels no view sees. Returns (layout, texture uint8 [S,S,3] sRGB, info with timings and the
    share of texels seen)."""
    import time

    from portrait_core import conventions as C
    from portrait_core.export.quality import neural_frame
    from portrait_core.geometry.camera import Camera

    t0 = time.perf_counter()
    if layout is None:
        layout = unwrap(vertices, faces, size)
    t1 = time.perf_counter()
    covered, pts, nrm, tri, bary = _texel_points(layout, vertices, normals)
    t2 = time.perf_counter()
    rendered = []
    zero_pose, zero_expr = np.zeros((6, 3)), np.zeros(C.EXPRESSION_DIM)
    for yaw, pitch in views:
        cam = Camera.portrait(C.FRONTAL_YAW + float(yaw), C.FRONTAL_PITCH - float(pitch))
        rgb, alpha, _ = neural_frame(avatar, zero_pose, zero_expr, render_size, camera=cam)
        rendered.append({"rgb": rgb, "alpha": alpha, "cam2world": cam.cam2world[0].double().numpy(),
                         "intrinsics": cam.intrinsics[0].double().numpy()})
    t3 = time.perf_counter()
    lin, wsum = bake_views(pts, nrm, rendered)
    if colors is not None:
        fallback = srgb_decode(np.einsum("nk,nkc->nc", bary, np.asarray(colors, np.float64)[layout.vmap][tri]))
        w0 = 1e-3
        lin = (lin * wsum[:, None] + w0 * fallback) / (wsum + w0)[:, None]
    img = np.zeros((layout.size, layout.size, 3), np.float32)
    img[covered] = lin
    img = _fill_gutter(img, covered)
    tex = np.clip(np.round(srgb_encode(img) * 255.0), 0, 255).astype(np.uint8)
    t4 = time.perf_counter()
    info = {"texture_size": layout.size, "views": [list(v) for v in views], "render_size": int(render_size),
            "texels": int(covered.sum()), "texels_seen": float((wsum > 0).mean()) if len(wsum) else 0.0,
            "t_unwrap": t1 - t0, "t_texels": t2 - t1, "t_render": t3 - t2, "t_bake": t4 - t3,
            "utilization": float(covered.mean())}
    return layout, tex, info


def check_texture_size(size: int) -> int:
    size = int(size)
    if size < 16 or size > 8192 or (size & (size - 1)) != 0:
        raise ValueError(f"texture size must be a power of two in [16, 8192], got {size}")
    return size

