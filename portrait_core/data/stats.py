"""Dataset statistics as PNGs drawn with PIL (no matplotlib): a contact sheet and label histograms.

``write_stats(root, out)`` writes ``contact_sheet.png`` (portraits over their face crops and masks),
``histograms.png`` (camera yaw/pitch, each pose joint's nod/turn/tilt, the first expression coefficients,
identity and betas spread) and ``stats.json`` (per-field mean/std/min/max).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .labels import write_json_atomic
from .readers import open_source

POSE_NAMES = ("neck", "L-collar", "R-collar", "head", "L-shoulder", "R-shoulder")
AXES = ("x nod", "y turn", "z tilt")


def contact_sheet(src, count: int = 64, tile: int = 128, columns: int = 8) -> np.ndarray:
    """uint8 [rows * (2 tile + label), columns * tile, 3]: portraits with their face crop and mask below."""
    from PIL import Image, ImageDraw

    recs = src.records[:count]
    cols = min(columns, max(1, len(recs)))
    rows = math.ceil(len(recs) / cols)
    cell_h = tile + tile // 2 + 12
    sheet = Image.new("RGB", (cols * tile, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, rec in enumerate(recs):
        x, y = (k % cols) * tile, (k // cols) * cell_h
        img = Image.fromarray(src.read_png(rec["image"], "RGB")).resize((tile, tile), Image.Resampling.LANCZOS)
        sheet.paste(img, (x, y))
        half = tile // 2
        if rec.get("face"):
            face = Image.fromarray(src.read_png(rec["face"], "RGB")).resize((half, half), Image.Resampling.LANCZOS)
            sheet.paste(face, (x, y + tile))
        if rec.get("mask"):
            mask = Image.fromarray(src.read_png(rec["mask"], "L")).resize((half, half)).convert("RGB")
            sheet.paste(mask, (x + half, y + tile))
        angles = rec.get("camera_angles") or {}
        label = f"{rec['name']}"
        if "yaw" in angles:
            label += f" y{math.degrees(angles['yaw']):.0f} p{math.degrees(angles['pitch']):.0f}"
        draw.text((x + 2, y + tile + half), label, fill=(0, 0, 0))
    return np.asarray(sheet)


def _histogram_panel(values: np.ndarray, title: str, size=(220, 120), bins: int = 24,
                     lo: float | None = None, hi: float | None = None):
    """One histogram as a PIL image with a title, range labels and count axis."""
    from PIL import Image, ImageDraw

    W, H = size
    im = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(im)
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    lo = float(v.min()) if lo is None and len(v) else (lo if lo is not None else 0.0)
    hi = float(v.max()) if hi is None and len(v) else (hi if hi is not None else 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    counts, _ = np.histogram(v, bins=bins, range=(lo, hi))
    top = max(int(counts.max()) if len(counts) else 1, 1)
    x0, y0, x1, y1 = 6, 16, W - 6, H - 16
    d.rectangle([x0, y0, x1, y1], outline=(180, 180, 180))
    bw = (x1 - x0) / bins
    for i, c in enumerate(counts):
        h = (y1 - y0) * c / top
        d.rectangle([x0 + i * bw + 1, y1 - h, x0 + (i + 1) * bw - 1, y1], fill=(70, 110, 180))
    d.text((x0, 2), f"{title}  n={len(v)} max={top}", fill=(0, 0, 0))
    d.text((x0, y1 + 2), f"{lo:.2f}", fill=(60, 60, 60))
    d.text((x1 - 36, y1 + 2), f"{hi:.2f}", fill=(60, 60, 60))
    if len(v):
        d.text(((x0 + x1) // 2 - 30, y1 + 2), f"mu {v.mean():.2f} sd {v.std():.2f}", fill=(60, 60, 60))
    return im


def histograms(src) -> np.ndarray:
    """uint8 image: yaw/pitch (degrees), 6 joints x 3 axes (degrees), 8 expression coefficients, id/betas."""
    from PIL import Image

    recs = src.records
    ang = np.array([[r.get("camera_angles", {}).get(k, np.nan) for k in ("yaw", "pitch")] for r in recs])
    pose = np.array([r["pose"] for r in recs], dtype=np.float64)
    exp = np.array([r["expression"] for r in recs], dtype=np.float64)
    ident = np.array([r["identity"] for r in recs], dtype=np.float64)
    betas = np.array([r["body_shape"] for r in recs], dtype=np.float64)
    panels = [_histogram_panel(np.degrees(ang[:, 0]), "camera yaw (deg)"),
              _histogram_panel(np.degrees(ang[:, 1]), "camera pitch (deg)"),
              _histogram_panel(ident.ravel(), "identity (all)"), _histogram_panel(betas.ravel(), "betas (all)")]
    for j, name in enumerate(POSE_NAMES):
        for a, axis in enumerate(AXES):
            panels.append(_histogram_panel(np.degrees(pose[:, j, a]), f"{name} {axis}", lo=-45, hi=45))
    for k in range(8):
        panels.append(_histogram_panel(exp[:, k], f"expression[{k}]"))
    cols = 6
    pw, ph = panels[0].size
    rows = math.ceil(len(panels) / cols)
    sheet = Image.new("RGB", (cols * pw, rows * ph), (255, 255, 255))
    for k, p in enumerate(panels):
        sheet.paste(p, ((k % cols) * pw, (k // cols) * ph))
    return np.asarray(sheet)


def summary(src) -> dict:
    """Per-field mean/std/min/max over the records (JSON-safe)."""
    out = {"count": len(src.records), "info": src.info}
    for key in ("pose", "expression", "identity", "body_shape"):
        a = np.array([r[key] for r in src.records], dtype=np.float64).reshape(len(src.records), -1)
        out[key] = {"mean": np.round(a.mean(0), 4).tolist(), "std": np.round(a.std(0), 4).tolist(),
                    "min": float(a.min()), "max": float(a.max())}
    ang = [r.get("camera_angles") for r in src.records if r.get("camera_angles")]
    for k in ("yaw", "pitch"):
        v = np.array([a[k] for a in ang])
        if len(v):
            out[f"camera_{k}"] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
                                  "max": float(v.max())}
    hair = [r.get("extra", {}).get("hair_style") for r in src.records if r.get("extra")]
    if hair:
        out["hair_styles"] = {h: hair.count(h) for h in sorted(set(hair))}
    return out


def write_stats(root: str | os.PathLike, out: str | os.PathLike, sheet_count: int = 64) -> list[Path]:
    """Write contact_sheet.png, histograms.png and stats.json for the dataset at ``root`` into ``out``."""
    from PIL import Image

    src = open_source(root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "contact_sheet.png", out / "histograms.png", out / "stats.json"]
    Image.fromarray(contact_sheet(src, sheet_count)).save(paths[0])
    Image.fromarray(histograms(src)).save(paths[1])
    write_json_atomic(paths[2], summary(src), indent=1)
    return paths

