"""Loading and saving SMPL-format model files (official ``.pkl`` through a restricted unpickler, or ``.npz``).

The official SMPL pickles were written by Python 2 with chumpy objects and the pre-1.8 ``scipy.sparse.csc``
module path. :class:`RestrictedUnpickler` rebuilds only numpy arrays, scipy sparse matrices and inert chumpy
stand-ins; any other global (a code payload) is refused with :class:`SMPLFileError` naming the file and the
global. The result is converted to plain numpy arrays and validated against the layout smplx reads.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

NUM_JOINTS = 24
NUM_POSE_FEATURES = 9 * (NUM_JOINTS - 1)  # 207
SMPL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


class SMPLFileError(ValueError):
    """A SMPL-format file is missing, corrupt, unsafe or has a key of the wrong shape; the message names it."""


class _ChumpyStub:
    """Inert stand-in for any ``chumpy`` class: keeps the pickled state; the array is ``state['x']``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def to_array(self) -> np.ndarray | None:
        st = self._state
        if isinstance(st, dict):
            for key in ("x", "a", "r"):
                if key in st and isinstance(st[key], np.ndarray | list | tuple | float | int):
                    return np.asarray(st[key])
        return None


_STUB_CLASSES: dict[str, type] = {}


def _chumpy_stub(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _STUB_CLASSES:
        _STUB_CLASSES[key] = type(name, (_ChumpyStub,), {"__module__": "busto_chumpy_stub." + module})
    return _STUB_CLASSES[key]


_NUMPY_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 encode bytes this way (pure function)
    ("numpy._core.numeric", "_frombuffer"),
}
#: Inert builtin containers/values that Python 2 and protocol-2 pickles reference (no callables with effects).
_SAFE_BUILTINS = {
    "object": object,
    "set": set,
    "frozenset": frozenset,
    "bytes": bytes,
    "bytearray": bytearray,
    "complex": complex,
    "slice": slice,
}
_SPARSE_NAMES = {"csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"}
_SPARSE_MODULES = {
    "scipy.sparse",
    "scipy.sparse.csc",
    "scipy.sparse.csr",
    "scipy.sparse.coo",
    "scipy.sparse._csc",
    "scipy.sparse._csr",
    "scipy.sparse._coo",
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that allows numpy arrays/dtypes, scipy sparse matrices and chumpy stand-ins, nothing else."""

    def __init__(self, file, *, source: str = "<stream>", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_ALLOWED:
            return super().find_class(module, name)
        if module in _SPARSE_MODULES and name in _SPARSE_NAMES:
            return getattr(sp, name)
        if module == "chumpy" or module.startswith("chumpy."):
            return _chumpy_stub(module, name)
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            # Python 2 pickles rebuild new-style objects through copy_reg._reconstructor(cls, base, state)
            return _safe_reconstructor
        if module in ("__builtin__", "builtins") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        raise SMPLFileError(
            f"{self.source}: refused to load global '{module}.{name}' (not an array, sparse matrix or chumpy object)"
        )


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copy_reg._reconstructor`` restricted to the chumpy stand-ins (protocol 0/1 pickles of chumpy objects)."""
    if isinstance(cls, type) and issubclass(cls, _ChumpyStub) and base is object:
        return cls.__new__(cls)
    raise pickle.UnpicklingError(f"refused copy_reg._reconstructor for {cls!r}")


def _to_plain(value: Any, source: str, key: str) -> Any:
    if isinstance(value, _ChumpyStub):
        arr = value.to_array()
        if arr is None:
            raise SMPLFileError(f"{source}: key '{key}' is a chumpy object without an array ('x')")
        return arr
    return value


def _check_finite(source: str, key: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        raise SMPLFileError(f"{source}: key '{key}' has non-finite values")


def validate_smpl_dict(raw: dict, source: str = "<dict>") -> dict[str, Any]:
    """Check and normalise the 7 keys smplx reads. Returns float64 arrays (``J_regressor`` as csc_matrix),
    ``kintree_table`` int64 (2, 24) and ``f`` uint32 (F, 3); other keys are kept as given.
    Raises :class:`SMPLFileError` naming ``source`` and the key."""
    if not isinstance(raw, dict):
        raise SMPLFileError(f"{source}: expected a dict of arrays, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        k = k.decode("latin1") if isinstance(k, bytes) else k
        if isinstance(v, _ChumpyStub) and k not in SMPL_KEYS and v.to_array() is None:
            continue  # an unused chumpy expression (no array state): drop it
        out[k] = _to_plain(v, source, k)
    missing = [k for k in SMPL_KEYS if k not in out]
    if missing:
        raise SMPLFileError(f"{source}: missing key(s) {', '.join(repr(k) for k in missing)}")

    def dense(key: str, dtype=np.float64) -> np.ndarray:
        v = out[key]
        try:
            arr = v.toarray() if sp.issparse(v) else np.asarray(v)
            arr = arr.astype(dtype)
        except (TypeError, ValueError) as e:
            raise SMPLFileError(f"{source}: key '{key}' is not a numeric array ({e})") from None
        return arr

    def shape_error(key: str, arr: np.ndarray, want: str) -> SMPLFileError:
        return SMPLFileError(f"{source}: key '{key}' has shape {tuple(arr.shape)}, expected {want}")

    vt = dense("v_template")
    if vt.ndim != 2 or vt.shape[1] != 3 or vt.shape[0] < 4:
        raise shape_error("v_template", vt, "(V, 3)")
    V = vt.shape[0]
    _check_finite(source, "v_template", vt)
    out["v_template"] = vt

    sd = dense("shapedirs")
    if sd.ndim != 3 or sd.shape[:2] != (V, 3) or not (sd.shape[2] == 10 or sd.shape[2] >= 300):
        raise shape_error("shapedirs", sd, f"({V}, 3, 10) or ({V}, 3, >=300)")
    _check_finite(source, "shapedirs", sd)
    out["shapedirs"] = sd

    pd = dense("posedirs")
    if pd.shape != (V, 3, NUM_POSE_FEATURES):
        raise shape_error("posedirs", pd, f"({V}, 3, {NUM_POSE_FEATURES})")
    _check_finite(source, "posedirs", pd)
    out["posedirs"] = pd

    jr = out["J_regressor"]
    jr = jr.astype(np.float64).tocsc() if sp.issparse(jr) else dense("J_regressor")
    if jr.shape != (NUM_JOINTS, V):
        raise shape_error("J_regressor", jr, f"({NUM_JOINTS}, {V})")
    _check_finite(source, "J_regressor", jr.data if sp.issparse(jr) else jr)
    out["J_regressor"] = sp.csc_matrix(jr)

    w = dense("weights")
    if w.shape != (V, NUM_JOINTS):
        raise shape_error("weights", w, f"({V}, {NUM_JOINTS})")
    _check_finite(source, "weights", w)
    if np.abs(w.sum(1) - 1).max() > 1e-3:
        raise SMPLFileError(
            f"{source}: key 'weights' rows do not sum to 1 (max error {np.abs(w.sum(1) - 1).max():.3g})"
        )
    out["weights"] = w

    kt = np.asarray(out["kintree_table"])
    if kt.shape != (2, NUM_JOINTS) or not np.issubdtype(kt.dtype, np.number):
        raise shape_error("kintree_table", kt, f"(2, {NUM_JOINTS})")
    kt = kt.astype(np.int64)
    parents = kt[0].copy()
    parents[0] = -1
    if any(not (0 <= parents[j] < j) for j in range(1, NUM_JOINTS)):
        raise SMPLFileError(
            f"{source}: key 'kintree_table' parents must precede their children, got {parents.tolist()}"
        )
    out["kintree_table"] = kt

    f = np.asarray(out["f"])
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise shape_error("f", f, "(F, 3) integer")
    if f.size and (f.min() < 0 or f.max() >= V):
        raise SMPLFileError(f"{source}: key 'f' has vertex indices outside [0, {V})")
    out["f"] = f.astype(np.uint32)
    return out


def load_smpl_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a user's SMPL-format model (``.pkl`` official/de-chumpified, or ``.npz``) safely and validate it.

    Returns the 7 smplx keys (see :func:`validate_smpl_dict`) plus any other keys the file holds.
    Raises :class:`SMPLFileError` (a ValueError) naming the file and what is wrong.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise SMPLFileError(f"{source}: no such file")
    data = path.read_bytes()
    if data[:2] == b"PK" or path.suffix.lower() == ".npz":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise SMPLFileError(f"{source}: not a readable npz file ({type(e).__name__}: {e})") from None
        raw = _npz_to_raw(raw, source)
    else:
        try:
            raw = RestrictedUnpickler(io.BytesIO(data), source=source, encoding="latin1").load()
        except SMPLFileError:
            raise
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            KeyError,
            ImportError,
            MemoryError,
        ) as e:
            raise SMPLFileError(f"{source}: truncated or corrupt pickle ({type(e).__name__}: {e})") from None
    return validate_smpl_dict(raw, source)


def _npz_to_raw(raw: dict[str, np.ndarray], source: str) -> dict[str, Any]:
    """npz files store a sparse J_regressor as (J_regressor_data, _indices, _indptr, _shape) or densely."""
    if "J_regressor" not in raw and "J_regressor_data" in raw:
        try:
            raw["J_regressor"] = sp.csc_matrix(
                (raw.pop("J_regressor_data"), raw.pop("J_regressor_indices"), raw.pop("J_regressor_indptr")),
                shape=tuple(int(s) for s in raw.pop("J_regressor_shape")),
            )
        except (KeyError, ValueError) as e:
            raise SMPLFileError(f"{source}: key 'J_regressor' sparse parts are inconsistent ({e})") from None
    return raw


def save_smpl_npz(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Save the 7 smplx keys (validated) to a compressed ``.npz`` loadable by :func:`load_smpl_file`.

    Arrays are stored float32 (``f`` uint32, ``kintree_table`` int64); a sparse ``J_regressor`` is stored as its
    csc parts (``J_regressor_data/_indices/_indptr/_shape``).
    """
    d = validate_smpl_dict(dict(data), str(path))
    arrays: dict[str, np.ndarray] = {}
    for k in SMPL_KEYS:
        if k == "J_regressor":
            jr = d[k]
            arrays.update(
                J_regressor_data=jr.data.astype(np.float64),
                J_regressor_indices=jr.indices.astype(np.int64),
                J_regressor_indptr=jr.indptr.astype(np.int64),
                J_regressor_shape=np.array(jr.shape),
            )
        elif k in ("f", "kintree_table"):
            arrays[k] = d[k]
        else:
            arrays[k] = d[k].astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # exact name (np.savez would append .npz to other suffixes)
        np.savez_compressed(fh, **arrays)
    return path


def smplx_struct(data: dict[str, Any]):
    """A ``smplx.utils.Struct`` for ``smplx.SMPL(model_path='', data_struct=...)`` from a loaded dict."""
    from smplx.utils import Struct

    return Struct(**{k: data[k] for k in SMPL_KEYS})
