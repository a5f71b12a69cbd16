"""Containment of dataset paths and limits on declared sizes (see docs/data-format.md, "Paths and limits").

Every path read from a dataset (label ``image``/``mask``/``face``/``mesh`` paths, 360°PHQ file names, table
files) and every path a converter or packer writes goes through :func:`contained`: the path must be relative,
use '/' separators, hold no '..' component, and resolve (symlinks followed) inside its root; otherwise a
:class:`PathError` names the dataset file, the record and the offending path. Record names become file stems
(``images/NAME.png``) and must be one plain path component (:func:`name_problem`).

Sizes a file declares in its header (image dimensions, ``.npy``/``.npz`` shapes, zip member sizes,
``info.resolution``) are checked against the limits below *before* anything is allocated; exceeding one raises
a :class:`LimitError`. Both errors are :class:`~portrait_core.data.labels.LabelError` subclasses, so every
reader, ``validate`` and the CLIs report them like any other label problem. Pure Python/numpy: no torch.
"""

from __future__ import annotations

import io
import math
import os
import stat
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .labels import LabelError

#: largest image (width x height) decoded; below PIL's DecompressionBomb threshold, checked from the header
MAX_IMAGE_PIXELS = 8192 * 8192
#: largest ``info.resolution`` / ``face_resolution`` / requested output size (pixels per side)
MAX_RESOLUTION = 8192
#: largest ``.npy`` array (bytes) a label table may declare
MAX_TABLE_BYTES = 2 * 1024**3
#: largest single file read from a dataset or archive member (bytes, as declared by the file system or zip)
MAX_FILE_BYTES = 1024**3
#: longest record name (characters)
MAX_NAME_CHARS = 200


class PathError(LabelError):
    """A path read from a dataset, or written by a converter, that is malformed or leaves its root."""


class LimitError(LabelError):
    """A size declared by a file (or requested) above a limit; raised before anything is allocated."""


# --- paths -----------------------------------------------------------------------------------------------------

def path_problem(rel: object) -> str | None:
    """Why ``rel`` is not an acceptable relative dataset path, or None (pure: no file system access)."""
    if not isinstance(rel, str):
        return f"expected a relative path string, got {type(rel).__name__}"
    if not rel:
        return "empty path"
    if "\x00" in rel:
        return f"path {rel!r} contains a NUL character"
    if "\\" in rel:
        return f"path {rel!r} contains '\\' (use '/' separators)"
    if rel.startswith("/") or (len(rel) >= 2 and rel[1] == ":"):
        return f"path {rel!r} is absolute (paths are relative to the dataset folder)"
    if ".." in rel.split("/"):
        return f"path {rel!r} has a '..' component (paths must stay inside the dataset)"
    return None


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a record name (a file stem: one plain path component), or None."""
    if not isinstance(name, str):
        return f"expected a string, got {name!r}"
    if not name or name in (".", ".."):
        return f"name {name!r} cannot be a file name"
    if len(name) > MAX_NAME_CHARS:
        return f"name is {len(name)} characters long (at most {MAX_NAME_CHARS})"
    bad = [c for c in ("/", "\\", "\x00", ":") if c in name]
    if bad:
        return f"name {name!r} contains {bad[0]!r} (names are file stems: one path component)"
    return None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class Root:
    """A folder that paths must stay inside. ``locate`` checks one relative path (resolved parent folders are
    cached, so checking every file of a large dataset costs about one ``lstat`` per file)."""

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root)
        self.real = os.path.realpath(self.path)
        self._dirs: dict[str, str] = {}

    def locate(self, rel: object, what: str) -> Path:
        """``root/rel`` if it stays inside the root (symlinks resolved); else PathError '<what>: <problem>'."""
        why = path_problem(rel)
        if why:
            raise PathError(f"{what}: {why}")
        assert isinstance(rel, str)
        parent, _, leaf = rel.rstrip("/").rpartition("/")
        real_parent = self._dirs.get(parent)
        if real_parent is None:
            real_parent = os.path.realpath(os.path.join(self.real, parent)) if parent else self.real
            self._dirs[parent] = real_parent
        if not _inside(real_parent, self.real):
            raise PathError(f"{what}: path {rel!r} resolves to {real_parent}, outside {self.real}")
        full = os.path.join(real_parent, leaf)
        if os.path.islink(full):
            target = os.path.realpath(full)
            if not _inside(target, self.real):
                raise PathError(f"{what}: path {rel!r} is a link to {target}, outside {self.real}")
        return Path(full)


def contained(root: str | os.PathLike, relative: object, what: str) -> Path:
    """``root/relative`` resolved inside ``root`` (symlinks followed), or a :class:`PathError`.

    ``what`` names where the path came from, e.g. ``"/data/ds/labels.json: images[3].image"``; the error reads
    ``"<what>: path '../x' has a '..' component ..."``.
    """
    return Root(root).locate(relative, what)


def read_regular_file(path: Path, what: str) -> bytes:
    """Bytes of ``path`` if it is a regular file within :data:`MAX_FILE_BYTES` (no FIFOs or devices)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: file not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise PathError(f"{what}: (file): not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise LimitError(f"{what}: (file): {st.st_size} bytes, above the limit of {MAX_FILE_BYTES}")
    with open(path, "rb") as f:
        return f.read(MAX_FILE_BYTES + 1)


def read_zip_member(zf: zipfile.ZipFile, name: str, what: str) -> bytes:
    """One archive member's bytes, its declared size checked against :data:`MAX_FILE_BYTES` first."""
    info = zf.getinfo(name)  # KeyError when absent
    if info.file_size > MAX_FILE_BYTES:
        raise LimitError(f"{what}: (archive member): declares {info.file_size} bytes, above the limit of "
                         f"{MAX_FILE_BYTES}")
    try:  # (zipfile refuses a compression method it lacks with its own error type, caught below)
        return zf.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
        raise LabelError(f"{what}: (archive member): cannot be read: {e}") from None


# --- declared sizes --------------------------------------------------------------------------------------------

def check_resolution(value: object, what: str, allow_none: bool = False) -> int | None:
    """``value`` as an int in [1, MAX_RESOLUTION] (None allowed if ``allow_none``), else LimitError."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_RESOLUTION:
        raise LimitError(f"{what}: expected an integer from 1 to {MAX_RESOLUTION}, got {value!r}")
    return int(value)


def check_image_size(size: tuple[int, int], what: str) -> None:
    """LimitError when an image header declares more than :data:`MAX_IMAGE_PIXELS` pixels."""
    w, h = size
    if w * h > MAX_IMAGE_PIXELS:
        raise LimitError(f"{what}: (image): declares {w}x{h} pixels, above the limit of {MAX_IMAGE_PIXELS} "
                         f"(portrait_core.data.safety.MAX_IMAGE_PIXELS)")


def _npy_header(fp: BinaryIO, what: str) -> tuple[tuple[int, ...], np.dtype]:
    from numpy.lib import format as npf

    try:
        version = npf.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = npf.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = npf.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, TypeError, EOFError, OverflowError) as e:
        raise LabelError(f"{what}: (array): not a readable .npy array: {e}") from None
    return tuple(int(s) for s in shape), np.dtype(dtype)


def read_npy(fp: BinaryIO, size: int, what: str, kinds: str = "biuf") -> np.ndarray:
    """Read one ``.npy`` stream of ``size`` bytes after checking its header: dtype kind in ``kinds`` (never
    objects), declared bytes within :data:`MAX_TABLE_BYTES` and within the data the stream holds."""
    from numpy.lib import format as npf

    shape, dtype = _npy_header(fp, what)
    if dtype.hasobject or dtype.kind not in kinds:
        raise LabelError(f"{what}: (array): dtype {dtype} is not accepted (expected numbers)")
    if any(s < 0 for s in shape):
        raise LabelError(f"{what}: (array): declares a negative shape {list(shape)}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_TABLE_BYTES:
        raise LimitError(f"{what}: (array): declares shape {list(shape)} ({nbytes} bytes), above the limit of "
                         f"{MAX_TABLE_BYTES} bytes")
    held = size - fp.tell()
    if nbytes > held:
        raise LabelError(f"{what}: (array): declares shape {list(shape)} ({nbytes} bytes) but holds only {held} bytes")
    try:
        fp.seek(0)
        return npf.read_array(fp, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise LabelError(f"{what}: (array): cannot be read: {e}") from None


def load_npy(path: str | os.PathLike, what: str | None = None) -> np.ndarray:
    """A numeric ``.npy`` file, its header checked before the data is allocated (see :func:`read_npy`)."""
    what = what or str(path)
    data = read_regular_file(Path(path), what)
    return read_npy(io.BytesIO(data), len(data), what)


def load_npz(path: str | os.PathLike, what: str | None = None, text_keys: tuple[str, ...] = ()) -> dict:
    """All arrays of an ``.npz`` (keys in ``text_keys`` may hold strings), each header checked first."""
    what = what or str(path)
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[:-4]
                where = f"{what}: {key}"
                if info.file_size > MAX_TABLE_BYTES + 4096:
                    raise LimitError(f"{where}: (array): declares {info.file_size} bytes, above the limit of {MAX_TABLE_BYTES}")
                with zf.open(info) as fp:
                    data = fp.read()
                out[key] = read_npy(io.BytesIO(data), len(data), where, "biuf" + ("U" if key in text_keys else ""))
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
        if isinstance(e, LabelError):
            raise
        raise LabelError(f"{what}: (archive): cannot read: {e}") from None
    return out


def decode_text(data: bytes, what: str) -> str:
    """UTF-8 text, or a LabelError naming the file and the offending byte offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LabelError(f"{what}: (encoding): not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") \
            from None
