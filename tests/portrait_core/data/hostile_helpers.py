"""Tiny hand-made datasets (no Blender) for the hostile-input tests: a Busto folder and a 360°PHQ folder."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from portrait_core import conventions as C
from portrait_core.data.labels import make_info, make_record, write_labels
from portrait_core.geometry.camera import Camera


def camera_rows(n: int) -> np.ndarray:
    """[n, 25] valid portrait camera labels around the frontal view."""
    yaw = C.FRONTAL_YAW + torch.linspace(-0.3, 0.3, n, dtype=torch.float64)
    pitch = torch.full((n,), C.FRONTAL_PITCH, dtype=torch.float64)
    return Camera.portrait(yaw, pitch).to_label25().numpy()


def png(path: Path, size: int = 16, colour=(200, 120, 80), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), colour if mode == "RGB" else 255).save(path)
    return path


def busto(root: Path, n: int = 3, size: int = 16, **overrides) -> Path:
    """A valid Busto folder of ``n`` flat-colour records; ``overrides[i]`` = dict of record fields to replace."""
    root = Path(root)
    cams = camera_rows(n)
    records = []
    for i in range(n):
        name = f"r{i}"
        png(root / "images" / f"{name}.png", size, (40 * i, 100, 200))
        png(root / "masks" / f"{name}.png", size, mode="L")
        png(root / "faces" / f"{name}.png", size, (200, 40 * i, 100))
        rec = make_record(name, image=f"images/{name}.png", mask=f"masks/{name}.png", face=f"faces/{name}.png",
                          camera=cams[i], face_camera=cams[i], pose=np.zeros((6, 3)), expression=np.zeros(64),
                          identity=np.zeros(80), body_shape=np.zeros(10))
        rec.update(overrides.get(str(i), {}))
        records.append(rec)
    info = make_info(resolution=size, face_resolution=size, yaw_mode="frontal", generator="test", seed=0, count=n,
                     face_model="synthetic")
    write_labels(root, info, records)
    return root


def phq360(root: Path, n: int = 3, size: int = 16, names: list[str] | None = None, rows: dict | None = None) -> Path:
    """A 360°PHQ folder: ``dataset.json`` + ``n`` PNGs; ``names``/``rows`` override label entries by index."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cams = camera_rows(n)
    labels = []
    for i in range(n):
        png(root / f"img{i:04d}.png", size, (30 * i, 90, 160))
        labels.append([f"img{i:04d}.png", [float(v) for v in cams[i]] + [0.0] * 6])
    for i, name in enumerate(names or []):
        if name is not None:
            labels[i][0] = name
    for i, row in (rows or {}).items():
        labels[i][1] = row
    (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    return root


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` (RGB) with a tiny, incomplete IDAT: a decompression bomb's
    header, a few dozen bytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes) to show that nothing changed."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}
