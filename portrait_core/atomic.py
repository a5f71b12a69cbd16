"""Atomic file writes: the one helper every writer of a whole file uses (checkpoints, labels.json, samplers,
keyframes, caches, converted images).

A write goes to a uniquely named temporary file in the destination's folder (``.<name>.<random><suffix>``), is
flushed and fsynced, given the permissions an ordinary ``open()`` would create (``0o666 & ~umask``: ``mkstemp``
alone creates ``0600`` files that another user, e.g. a render-farm node, cannot read), moved over the destination
with ``os.replace`` and the folder fsynced. A reader therefore sees the old file or the new one, never half of
one; on any error the temporary file is removed and the destination left as it was.

    with atomic_path(out, suffix=".npz") as tmp:   # for writers that need a path (np.savez, safetensors, PIL)
        np.savez_compressed(tmp, **arrays)
    atomic_write_bytes(path, data); atomic_write_text(path, text); atomic_write_json(path, obj)
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read from /proc where possible; else set-and-restore under a lock)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def creation_mode() -> int:
    """Permissions of a new regular file as ``open()`` would create it: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder (makes a rename in it durable); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write the whole file to; on a clean exit it becomes ``path``.

    ``suffix`` ends the temporary name (writers that add an extension unless it is there, such as
    ``np.savez``, need theirs). The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, creation_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """``open()`` for writing a whole file atomically (``mode`` 'wb' or 'w')."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding if "b" not in mode else None) as f:
        yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = None, **kwargs: Any) -> Path:
    """Write ``data`` as JSON (``allow_nan=False`` unless given) atomically; returns the path."""
    kwargs.setdefault("allow_nan", False)
    return atomic_write_text(path, json.dumps(data, indent=indent, **kwargs))
