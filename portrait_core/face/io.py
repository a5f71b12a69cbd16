"""Read and write ``BFM_model_front.mat`` (Deep3DFaceRecon / BFM09 layout), validated.

Layout (MATLAB v5 as written by ``scipy.io.savemat``; N vertices, F faces; positions in **decimetres**;
**index arrays are 1-based**, as in the file):

=================  ==========  ===========================================================================
key                shape       meaning
=================  ==========  ===========================================================================
meanshape          (1, 3N)     mean shape, xyz interleaved
idBase             (3N, 80)    identity basis pre-multiplied by the std (coefficients ~ N(0, 1))
exBase             (3N, 64)    expression basis x std
meantex            (1, 3N)     mean albedo, RGB 0-255
texBase            (3N, 80)    albedo basis x std
tri                (F, 3)      triangles, 1-based vertex indices
point_buf          (N, 8)      incident faces per vertex, 1-based, padded with F+1 (a dummy zero face)
keypoints          (1, 68)     1-based vertex index of each iBUG-68 landmark ((68, 1) also accepted)
frontmask2_idx     (K, 1)      1-based vertex subset used by the photometric loss
tri_mask2          (F2, 3)     1-based triangles of that subset (full-mesh vertex indices)
skinmask           (1, N)      per-vertex skin flag
=================  ==========  ===========================================================================

``load_bfm_mat`` returns float arrays as float32 and index arrays as int64, still 1-based; it never changes the
data (``FaceModel`` converts to metres, 0-based indices and a centred mean shape).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["BFMFormatError", "BFM_KEYS", "load_bfm_mat", "save_bfm_mat", "validate_bfm"]

BFM_KEYS: tuple[str, ...] = (
    "meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "point_buf", "keypoints", "frontmask2_idx",
    "tri_mask2", "skinmask",
)
_FLOAT_KEYS = ("meanshape", "idBase", "exBase", "meantex", "texBase", "skinmask")
_INDEX_KEYS = ("tri", "point_buf", "keypoints", "frontmask2_idx", "tri_mask2")
_ID_DIM, _EXP_DIM, _TEX_DIM = 80, 64, 80


class BFMFormatError(ValueError):
    """A BFM_model_front.mat file (or dict) does not have the expected layout; the message names file and key."""


def _err(source: str, key: str | None, msg: str) -> BFMFormatError:
    where = f"{source}: key '{key}'" if key else source
    return BFMFormatError(f"{where}: {msg}")


def _as_row(source: str, key: str, a: np.ndarray, n: int | None, what: str) -> np.ndarray:
    """Accept (1, n) or (n, 1) (MATLAB writes vectors either way); return (1, n)."""
    if a.ndim != 2 or 1 not in a.shape:
        raise _err(source, key, f"expected shape (1, {n if n is not None else 'n'}) ({what}), got {a.shape}")
    a = a.reshape(1, -1)
    if n is not None and a.shape[1] != n:
        raise _err(source, key, f"expected shape (1, {n}) ({what}), got {a.shape}")
    return a


def _check_shape(source: str, key: str, a: np.ndarray, shape: tuple, what: str) -> None:
    ok = a.ndim == len(shape) and all(s is None or s == t for s, t in zip(shape, a.shape))
    if not ok:
        pretty = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
        raise _err(source, key, f"expected shape {pretty} ({what}), got {a.shape}")


def _to_index(source: str, key: str, a: np.ndarray, lo: int, hi: int, what: str) -> np.ndarray:
    """Integer-valued array with every value in [lo, hi] (1-based) -> int64."""
    if a.size == 0:
        raise _err(source, key, f"is empty ({what})")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise _err(source, key, f"contains non-finite values ({what})")
        if not np.all(a == np.round(a)):
            raise _err(source, key, f"contains non-integer values ({what})")
    elif a.dtype.kind not in "iub":
        raise _err(source, key, f"expected a numeric index array, got dtype {a.dtype}")
    out = a.astype(np.int64)
    mn, mx = int(out.min()), int(out.max())
    if mn < lo or mx > hi:
        bad = np.argwhere((out < lo) | (out > hi))[0]
        raise _err(
            source, key,
            f"index out of range: value {int(out[tuple(bad)])} at {tuple(int(i) for i in bad)} "
            f"(values span {mn}..{mx}; expected 1-based {lo}..{hi}, {what})",
        )
    return out


def validate_bfm(data: dict, source: str = "<dict>") -> dict[str, np.ndarray]:
    """Validate a BFM-layout mapping; return float32 / int64 arrays (1-based indices kept), vectors as (1, n).

    Raises ``BFMFormatError`` naming ``source`` and the offending key.
    """
    missing = [k for k in BFM_KEYS if k not in data]
    if missing:
        raise _err(source, missing[0], f"missing (required keys: {', '.join(BFM_KEYS)}; missing: {', '.join(missing)})")
    arrs: dict[str, np.ndarray] = {}
    for k in BFM_KEYS:
        a = np.asarray(data[k])
        if a.dtype == object or a.dtype.kind not in "fiub":
            raise _err(source, k, f"expected a numeric array, got dtype {a.dtype}")
        if a.ndim == 1:
            a = a.reshape(1, -1)
        arrs[k] = a

    ms = _as_row(source, "meanshape", arrs["meanshape"], None, "xyz interleaved, decimetres")
    if ms.shape[1] == 0 or ms.shape[1] % 3:
        raise _err(source, "meanshape", f"length {ms.shape[1]} is not a positive multiple of 3")
    n3 = ms.shape[1]
    N = n3 // 3
    out: dict[str, np.ndarray] = {"meanshape": ms}
    out["idBase"] = arrs["idBase"]
    _check_shape(source, "idBase", out["idBase"], (n3, _ID_DIM), f"3N x {_ID_DIM} identity basis, N={N}")
    out["exBase"] = arrs["exBase"]
    _check_shape(source, "exBase", out["exBase"], (n3, _EXP_DIM), f"3N x {_EXP_DIM} expression basis, N={N}")
    out["meantex"] = _as_row(source, "meantex", arrs["meantex"], n3, f"RGB interleaved, N={N}")
    out["texBase"] = arrs["texBase"]
    _check_shape(source, "texBase", out["texBase"], (n3, _TEX_DIM), f"3N x {_TEX_DIM} texture basis, N={N}")
    out["skinmask"] = _as_row(source, "skinmask", arrs["skinmask"], N, f"one flag per vertex, N={N}")
    for k in _FLOAT_KEYS:
        a = out[k]
        if not np.all(np.isfinite(a)):
            bad = np.argwhere(~np.isfinite(a))[0]
            raise _err(source, k, f"contains non-finite values (first at {tuple(int(i) for i in bad)})")
        out[k] = a.astype(np.float32)

    _check_shape(source, "tri", arrs["tri"], (None, 3), "triangles")
    F = arrs["tri"].shape[0]
    out["tri"] = _to_index(source, "tri", arrs["tri"], 1, N, f"vertex indices, N={N}")
    _check_shape(source, "point_buf", arrs["point_buf"], (N, 8), f"N x 8 incident faces, N={N}")
    out["point_buf"] = _to_index(source, "point_buf", arrs["point_buf"], 1, F + 1, f"face indices padded with F+1, F={F}")
    kp = arrs["keypoints"]
    if kp.ndim != 2 or sorted(kp.shape) != [1, 68]:
        raise _err(source, "keypoints", f"expected shape (1, 68) or (68, 1) (iBUG-68 vertex indices), got {kp.shape}")
    out["keypoints"] = _to_index(source, "keypoints", kp.reshape(1, 68), 1, N, f"vertex indices, N={N}")
    fm = arrs["frontmask2_idx"]
    if fm.ndim != 2 or 1 not in fm.shape:
        raise _err(source, "frontmask2_idx", f"expected shape (K, 1) (vertex subset), got {fm.shape}")
    out["frontmask2_idx"] = _to_index(source, "frontmask2_idx", fm.reshape(-1, 1), 1, N, f"vertex indices, N={N}")
    _check_shape(source, "tri_mask2", arrs["tri_mask2"], (None, 3), "triangles of the front mask")
    out["tri_mask2"] = _to_index(source, "tri_mask2", arrs["tri_mask2"], 1, N, f"vertex indices, N={N}")
    return out


def load_bfm_mat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load and validate a ``BFM_model_front.mat`` (MATLAB v5). Units and 1-based indices are kept as in the file.

    Raises ``FileNotFoundError`` for a missing file and ``BFMFormatError`` (naming the file and the key) for a
    MATLAB v7.3/HDF5 file, a truncated or corrupt file, a missing key, a wrong shape, a non-finite value or an
    out-of-range index.
    """
    import scipy.io

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: BFM model file not found (BFM_model_front.mat; see docs/face.md)")
    with open(p, "rb") as fh:
        head = fh.read(128)
    if head.startswith(b"\x89HDF") or b"MATLAB 7.3" in head:
        raise BFMFormatError(
            f"{p}: MATLAB v7.3 (HDF5) file; scipy cannot read it. Re-save it as MATLAB v5 "
            "(e.g. load it with h5py and write it with scipy.io.savemat)"
        )
    try:
        raw = scipy.io.loadmat(str(p), variable_names=list(BFM_KEYS))
    except NotImplementedError as e:  # scipy's own v7.3 detection
        raise BFMFormatError(f"{p}: MATLAB v7.3 (HDF5) file; re-save it as MATLAB v5 ({e})") from e
    except Exception as e:  # truncated, corrupt, not a .mat at all
        raise BFMFormatError(f"{p}: cannot read as a MATLAB v5 file (truncated or corrupt?): {type(e).__name__}: {e}") from e
    return validate_bfm(raw, source=str(p))


def save_bfm_mat(path: str | os.PathLike, bfm: dict) -> Path:
    """Write a BFM-layout dict to ``path`` with ``scipy.io.savemat`` (MATLAB v5), exactly the keys of the layout.

    The dict is validated first (``BFMFormatError`` names the offending key); indices are written 1-based as given.
    """
    import scipy.io

    p = Path(path)
    data = validate_bfm(bfm, source=str(p))
    out = {}
    for k in BFM_KEYS:
        a = data[k]
        out[k] = a.astype(np.int32) if k in _INDEX_KEYS else a.astype(np.float32)
    from portrait_core.atomic import atomic_open

    with atomic_open(p, "wb") as fh:
        scipy.io.savemat(fh, out, do_compression=False, oned_as="row")
    return p
