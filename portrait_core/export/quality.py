"""How close an exported mesh is to the avatar: image agreement with the neural renderer, surface smoothness,
skinning robustness. Pure numpy/torch (no bpy); ``busto_apps.export_quality`` renders the mesh with Blender.

Frames: canonical metres (SMPL axes, +Y up, facing +Z, origin at the canonical neck joint). Images are top-down,
sRGB-encoded floats in [0, 1]. See docs/export.md ("Quality").
"""

from __future__ import annotations

import numpy as np

from portrait_core import conventions as C

__all__ = ["demo_extremes", "neural_frame", "overlap_psnr", "face_region", "surface_metrics", "flipped_faces",
           "turn_nod_poses"]

# pose-code joint order (portrait_core.conventions.POSE_JOINTS): neck, left collar, right collar, head, shoulders
_NECK, _L_COLLAR, _R_COLLAR, _HEAD, _L_SHOULDER, _R_SHOULDER = range(6)


def demo_extremes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The pose code [6,3] and expression [64] at the extreme of each motion of ``python -m portrait_core demo``
    (docs/demo.md): the add-on presets' first extreme key at the demo's amplitudes (TURN 0.6, NOD 1, SHRUG 1,
    SMILE 2; an expression slider adds to its coefficient)."""
    out = {}
    p = np.zeros((6, 3))
    p[_NECK, 1], p[_HEAD, 1] = 0.25 * 0.6, 0.35 * 0.6
    out["turn"] = (p, np.zeros(C.EXPRESSION_DIM))
    p = np.zeros((6, 3))
    p[_NECK, 0], p[_HEAD, 0] = 0.12, 0.22
    out["nod"] = (p, np.zeros(C.EXPRESSION_DIM))
    p = np.zeros((6, 3))
    p[_L_COLLAR, 2], p[_R_COLLAR, 2], p[_L_SHOULDER, 2], p[_R_SHOULDER, 2], p[_HEAD, 0] = 0.22, -0.22, -0.1, 0.1, -0.05
    out["shrug"] = (p, np.zeros(C.EXPRESSION_DIM))
    e = np.zeros(C.EXPRESSION_DIM)
    e[1], e[0] = 1.5 * 2.0, 0.3 * 2.0  # smile, jaw_open sliders at amplitude 2
    out["smile"] = (np.zeros((6, 3)), e)
    return out


def turn_nod_poses(angle: float = 0.6) -> dict[str, np.ndarray]:
    """Head turns and nods of ``angle`` radians in all (split neck 5/12, head 7/12 as the TURN preset), both ways."""
    out = {}
    for name, axis in (("turn", 1), ("nod", 0)):
        for sign, tag in ((1.0, "+"), (-1.0, "-")):
            p = np.zeros((6, 3))
            p[_NECK, axis], p[_HEAD, axis] = sign * angle * 5 / 12, sign * angle * 7 / 12
            out[name + tag] = p
    return out


def neural_frame(avatar, pose: np.ndarray, expression: np.ndarray, size: int = 256, camera=None,
                 super_resolve: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Busto Neural frame (as the add-on's engine renders it) at the portrait camera (or ``camera``):
    (rgb [size,size,3] sRGB over white, alpha [size,size], depth [size,size] metres along the optical axis)."""
    import torch

    from portrait_core.geometry.camera import Camera

    camera = camera if camera is not None else Camera.portrait()
    sr = avatar.textures_hr is not None if super_resolve is None else bool(super_resolve)
    scale = avatar.generator.cfg.superres.scale if sr else 1
    ray_res = max(8, int(np.ceil(size / scale)))
    out = avatar.render(torch.as_tensor(np.asarray(pose, np.float32))[None],
                        torch.as_tensor(np.asarray(expression, np.float32))[None], camera,
                        super_resolve=sr, resolution=ray_res)
    b = out.image.shape[0]
    rgb = ((out.image.clamp(-1, 1) + 1) * 0.5).permute(0, 2, 3, 1).float().cpu().numpy()
    alpha = out.alpha.clamp(0, 1)[:, 0].float().cpu().numpy()
    depth = out.depth[:, 0].float().cpu().numpy()
    if rgb.shape[1] != size:  # bilinear, pixel-centre aligned, antialiased when shrinking
        def resized(x: np.ndarray) -> np.ndarray:  # [B, H, W, C] -> [B, size, size, C]
            t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
            t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=True)
            return t.permute(0, 2, 3, 1).numpy()

        rgb = resized(rgb)
        alpha, depth = resized(alpha[..., None])[..., 0], resized(depth[..., None])[..., 0]
    if b == 1:
        return rgb[0], alpha[0], depth[0]
    return rgb, alpha, depth


def overlap_psnr(a: np.ndarray, a_mask: np.ndarray, b: np.ndarray, b_mask: np.ndarray) -> float:
    """PSNR (dB, peak 1) of two sRGB images [H,W,3] in [0,1] over the pixels inside both silhouettes."""
    both = np.asarray(a_mask, bool) & np.asarray(b_mask, bool)
    if not both.any():
        raise ValueError("the silhouettes do not overlap")
    d = np.asarray(a, np.float64)[both] - np.asarray(b, np.float64)[both]
    mse = float(np.mean(d * d))
    return float(10.0 * np.log10(1.0 / max(mse, 1e-12)))


def face_region(vertices: np.ndarray, faces: np.ndarray, radius: float = 0.09) -> np.ndarray:
    """Faces [F] bool of the face: centroid within ``radius`` of the canonical face centre, facing forwards
    (normal z > 0.3)."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    tri = v[f]
    centre = tri.mean(1)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
    near = np.linalg.norm(centre - np.asarray(C.FACE_CENTRE), axis=1) < radius
    return near & (n[:, 2] > 0.3)


def surface_metrics(vertices: np.ndarray, faces: np.ndarray, region: np.ndarray | None = None,
                    crease_deg: float = 30.0) -> dict[str, float]:
    """Smoothness on ``region`` (faces [F] bool; default the face, :func:`face_region`):

    - ``crease_share``: share of edges (both faces in the region) whose dihedral angle exceeds ``crease_deg``;
    - ``normal_noise_deg``: mean angle between a face's normal and the mean normal of its edge neighbours.
    """
    import trimesh

    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    region = face_region(v, f) if region is None else np.asarray(region, bool)
    m = trimesh.Trimesh(v, f, process=False, validate=False)
    adj = m.face_adjacency
    ang = np.degrees(m.face_adjacency_angles)
    inside = region[adj[:, 0]] & region[adj[:, 1]]
    fn = np.asarray(m.face_normals)
    acc = np.zeros_like(fn)
    np.add.at(acc, adj[:, 0], fn[adj[:, 1]])
    np.add.at(acc, adj[:, 1], fn[adj[:, 0]])
    acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-30)
    dev = np.degrees(np.arccos(np.clip((acc * fn).sum(1), -1.0, 1.0)))
    return {"crease_share": float((ang[inside] > crease_deg).mean()) if inside.any() else 0.0,
            "normal_noise_deg": float(dev[region].mean()) if region.any() else 0.0,
            "region_faces": int(region.sum())}


def flipped_faces(rest: np.ndarray, posed: np.ndarray, faces: np.ndarray, min_area: float = 1e-10) -> float:
    """Share of faces whose normal turns by more than 90° between ``rest`` and ``posed`` vertices [V,3] (a rigid
    turn of less than 90° never does that: these faces fold over). Degenerate faces (area < ``min_area`` m²)
    are skipped."""
    f = np.asarray(faces, np.int64)

    def normals(v):
        t = np.asarray(v, np.float64)[f]
        return np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])

    a, b = normals(rest), normals(posed)
    ok = np.linalg.norm(a, axis=1) > 2 * min_area
    return float(((a * b).sum(1) < 0)[ok].mean()) if ok.any() else 0.0
