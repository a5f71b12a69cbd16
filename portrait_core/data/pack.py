"""One compact archive per dataset: an uncompressed zip of WebP portraits/face crops, PNG masks and labels.json.

Portraits and face crops are lossy WebP (``quality``, default 85, 4:2:0 chroma); masks are 8-bit grayscale PNG
(lossless, they compress to a few hundred bytes); labels.json keeps every record with paths rewritten to the
archive members (``images/NAME.webp``, ``masks/NAME.png``, ``faces/NAME.webp``). Image members are stored (no deflate: WebP/PNG
are already compressed); labels.json is deflated. ``PortraitDataset`` opens the archive as is.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .labels import FORMAT, FORMAT_VERSION, LABELS_FILE, LabelError
from .readers import open_source
from .safety import PathError, check_resolution, name_problem


def _encode(arr: np.ndarray, fmt: str, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if fmt == "webp":
        im.save(buf, format="WEBP", quality=quality, method=6)
    else:
        im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _resize(arr: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or arr.shape[0] == size:
        return arr
    from PIL import Image

    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.LANCZOS))


def default_archive_path(root: str | os.PathLike) -> Path:
    """Where ``pack`` writes without ``--out``: beside the dataset, named after it (``out/synth`` ->
    ``out/synth.zip``; an archive ``a.zip`` -> ``a-packed.zip``), never the current folder."""
    root = Path(root).resolve()
    if root.suffix.lower() == ".zip":
        return root.with_name(f"{root.stem}-packed.zip")
    return root.with_name(f"{root.name}.zip")


def pack_dataset(root: str | os.PathLike, out: str | os.PathLike, resolution: int | None = None,
                 face_resolution: int | None = None, quality: int = 85, progress: bool = False) -> tuple[Path, int]:
    """Pack the dataset at ``root`` (any supported format) into ``out`` (.zip); returns (path, size in bytes).

    ``resolution``/``face_resolution`` resize while packing (None keeps the stored sizes). Written atomically.
    Member names come from record names, which must be plain file stems (PathError otherwise).
    """
    check_resolution(resolution, "pack: resolution", allow_none=True)
    check_resolution(face_resolution, "pack: face_resolution", allow_none=True)
    src = open_source(root)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records, seen = [], set()
    for i, rec in enumerate(src.records):
        why = name_problem(rec.get("name"))
        if why:
            raise PathError(f"{src.label_file}: record {i}: {why}")
        if rec["name"] in seen:
            raise LabelError(f"{src.label_file}: record {i}: name {rec['name']!r} is used twice")
        seen.add(rec["name"])
    from portrait_core.atomic import atomic_path

    with atomic_path(out) as tmp:  # fsynced, the umask's permissions
        _write_archive(tmp, src, records, resolution, face_resolution, quality)
    return out, out.stat().st_size


def _write_archive(tmp: Path, src, records: list, resolution, face_resolution, quality: int) -> None:
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for rec in src.records:
            name = rec["name"]
            new = {k: v for k, v in rec.items() if k != "mesh"}
            img = _resize(src.read_png(rec["image"], "RGB"), resolution)
            new["image"] = f"images/{name}.webp"
            zf.writestr(new["image"], _encode(img, "webp", quality))
            if rec.get("mask"):
                new["mask"] = f"masks/{name}.png"
                zf.writestr(new["mask"], _encode(_resize(src.read_png(rec["mask"], "L"), resolution), "png", 0))
            if rec.get("face"):
                new["face"] = f"faces/{name}.webp"
                face = _resize(src.read_png(rec["face"], "RGB"), face_resolution)
                zf.writestr(new["face"], _encode(face, "webp", quality))
            records.append(new)
        info = dict(src.info)
        if resolution:
            info["resolution"] = resolution
        if face_resolution:
            info["face_resolution"] = face_resolution
        info["packed"] = {"image_format": "webp", "quality": quality, "mask_format": "png"}
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "info": info, "images": records}
        # labels are text: deflate them (images and masks are stored as already-compressed members)
        zf.writestr(LABELS_FILE, json.dumps(doc, separators=(",", ":")), compress_type=zipfile.ZIP_DEFLATED,
                    compresslevel=9)
