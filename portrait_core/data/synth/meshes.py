"""Ground-truth meshes of synthetic avatars as binary PLY (vertices in metres, canonical frame, sRGB colours).

``NNNNNN_posed.ply`` is exactly what was rendered (pose and expression applied); ``NNNNNN_canonical.ply`` is the
same avatar in the canonical pose with a neutral expression (the space the generator's canonical fields live in).
Both merge body, face and hair into one triangle soup-free mesh (shared vertices per part, parts not welded).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_ply(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> None:
    """Binary little-endian PLY: float32 xyz, optional uint8 rgb (from sRGB in [0, 1]), int32 triangles. Atomic."""
    path = Path(path)
    v = np.asarray(vertices, dtype="<f4")
    f = np.asarray(faces, dtype="<i4")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(v)}",
              "property float x", "property float y", "property float z"]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    if colors is not None:
        rgb = np.clip(np.round(np.asarray(colors) * 255), 0, 255).astype(np.uint8)
        vdt = np.dtype([("p", "<f4", 3), ("c", "u1", 3)])
        vbuf = np.empty(len(v), dtype=vdt)
        vbuf["p"], vbuf["c"] = v, rgb
    else:
        vbuf = v
    fdt = np.dtype([("n", "u1"), ("i", "<i4", 3)])
    fbuf = np.empty(len(f), dtype=fdt)
    fbuf["n"], fbuf["i"] = 3, f
    from portrait_core.atomic import atomic_open

    with atomic_open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(vbuf.tobytes())
        fh.write(fbuf.tobytes())


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read a PLY written by :func:`write_ply` -> (vertices [V,3] float32, faces [F,3] int32, colours uint8 | None)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    nv = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in header if h.startswith("element face")).split()[-1])
    has_c = any(h.endswith(" red") for h in header)
    vdt = np.dtype([("p", "<f4", 3), ("c", "u1", 3)]) if has_c else np.dtype([("p", "<f4", 3)])
    v = np.frombuffer(data, dtype=vdt, count=nv, offset=end)
    f = np.frombuffer(data, dtype=np.dtype([("n", "u1"), ("i", "<i4", 3)]), count=nf, offset=end + nv * vdt.itemsize)
    return v["p"].copy(), f["i"].copy(), (v["c"].copy() if has_c else None)


def merge(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate (vertices, faces, colours) parts into one mesh."""
    vs, fs, cs, off = [], [], [], 0
    for v, f, c in parts:
        vs.append(v)
        fs.append(f + off)
        cs.append(c)
        off += len(v)
    return np.concatenate(vs), np.concatenate(fs), np.concatenate(cs)


def write_avatar_meshes(folder: Path, name: str, factory, baked, view, posed) -> dict:
    """Write the posed and canonical (neutral) meshes of one sample; returns the record's ``mesh`` paths."""
    from dataclasses import replace

    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    style = baked.params.hair_style
    hair_f = factory.hair_faces[style]
    body_col = baked.body_colours.copy()
    body_col[baked.cloth_mask > 0.5] = baked.params.cloth  # garment base colour (the pattern is shader-only)
    parts = [(posed.body, factory.body_faces, body_col), (posed.face, factory.face_faces, baked.face_colours),
             (posed.hair, hair_f, baked.hair_colours)]
    write_ply(folder / f"{name}_posed.ply", *merge(parts))
    canon_view = replace(view, pose=np.zeros_like(view.pose))
    canon = factory.pose(baked, canon_view, expression_zero=True)
    parts = [(canon.body, factory.body_faces, body_col), (canon.face, factory.face_faces, baked.face_colours),
             (canon.hair, hair_f, baked.hair_colours)]
    write_ply(folder / f"{name}_canonical.ply", *merge(parts))
    return {"posed": f"meshes/{name}_posed.ply", "canonical": f"meshes/{name}_canonical.ply"}
