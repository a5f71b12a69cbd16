"""``prepare``'s contact sheet: per photo the aligned portrait with the detected landmarks (green), the fitted
3DMM's landmarks (red), the fitted face and body meshes' silhouettes (yellow, blue) and shoulders (detected cyan,
fitted magenta), then the matte and the face-camera crop, with the name, the landmark error and the notes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TILE = 256
DETECTED = (40, 220, 40)
FITTED = (235, 40, 40)
FACE_OUTLINE = (250, 210, 0)
BODY_OUTLINE = (40, 110, 255)


def _silhouette(points_uv: np.ndarray, faces: np.ndarray, size: int):
    """A filled mask (PIL 'L') of the projected triangles; points_uv [N, 2] normalised."""
    from PIL import Image, ImageDraw

    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    xy = points_uv * size
    for tri in xy[faces]:
        d.polygon([tuple(p) for p in tri], fill=255)
    return m


def _outline(mask, colour, base) -> None:
    from PIL import Image, ImageChops, ImageFilter

    edge = ImageChops.subtract(mask, mask.filter(ImageFilter.MinFilter(3)))
    base.paste(Image.new("RGB", base.size, colour), mask=edge)


def _project(points: np.ndarray, camera25: np.ndarray) -> np.ndarray:
    import torch

    from portrait_core.geometry.camera import Camera

    cam = Camera.from_label25(torch.as_tensor(np.asarray(camera25, np.float64)))
    uv, _ = cam.project_normalised(torch.as_tensor(points, dtype=torch.float64))
    return uv[0].numpy()


def overlay(prep, size: int = TILE):
    """The aligned portrait of a ``PreparedPhoto`` with its overlays (PIL RGB image, ``size``^2)."""
    from PIL import Image, ImageDraw

    base = Image.fromarray(np.clip(np.rint(prep.photo * 255), 0, 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.LANCZOS)
    g = prep.geometry
    cam = prep.camera
    _outline(_silhouette(_project(g["body_vertices"], cam), g["body_faces"], size), BODY_OUTLINE, base)
    _outline(_silhouette(_project(g["face_vertices"], cam), g["face_faces"], size), FACE_OUTLINE, base)
    d = ImageDraw.Draw(base)
    k = size / prep.image.shape[0]

    def dots(pts, colour, r):
        for x, y in pts:
            x, y = (x + 0.5) * k, (y + 0.5) * k
            d.ellipse([x - r, y - r, x + r, y + r], fill=colour)

    dots(prep.landmarks_detected, DETECTED, 1.8)
    dots(prep.landmarks_fitted, FITTED, 1.2)
    if prep.shoulders_detected is not None:
        dots(prep.shoulders_detected, (0, 220, 220), 3.0)
    dots(prep.shoulders_fitted, (230, 0, 230), 2.0)
    return base


def contact_sheet(prepared: list, path: str | os.PathLike, tile: int = TILE) -> Path:
    """One row per prepared photo: overlay | matte | face crop, and a caption (written atomically)."""
    from PIL import Image, ImageDraw

    from portrait_core.atomic import atomic_path

    cap = 34
    sheet = Image.new("RGB", (3 * tile + 4 * 6, len(prepared) * (tile + cap + 6) + 6), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for i, prep in enumerate(prepared):
        y = 6 + i * (tile + cap + 6)
        u8 = lambda a: np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)
        sheet.paste(overlay(prep, tile), (6, y))
        sheet.paste(Image.fromarray(u8(prep.matte)).convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR),
                    (12 + tile, y))
        sheet.paste(Image.fromarray(u8(prep.face)).resize((tile, tile), Image.Resampling.LANCZOS), (18 + 2 * tile, y))
        ang = prep.record["camera_angles"]
        d.text((6, y + tile + 2), f"{prep.name}: landmark error {100 * prep.landmark_error:.2f}% of the inter-ocular "
                                  f"distance; yaw {ang['yaw']:.2f} pitch {ang['pitch']:.2f}", fill=(0, 0, 0))
        d.text((6, y + tile + 16), "; ".join(prep.notes)[:150] or "green: detected, red: fitted 3DMM landmarks; "
                                   "yellow/blue: face/body silhouettes", fill=(90, 90, 90))
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
