"""The add-on's side of the worker protocol (numpy only, no bpy). The worker is ``portrait_core/serve.py``.

A message is ``b"BSTO"`` + little-endian uint32 header length + UTF-8 JSON header + raw array payloads.
The header's ``"arrays"`` lists ``{"key", "dtype", "shape"}`` for each payload, in order; the payloads are the
arrays' C-order bytes, so images and meshes cross the pipe without any encoding or disk round-trip.
Requests carry ``"op"``; replies carry ``"ok"`` (and ``"error"``/``"error_type"`` when false); a worker may send
``{"progress": x, "label": ...}`` messages before the reply of a long request.
"""

from __future__ import annotations

import json
import struct
from typing import BinaryIO

import numpy as np

MAGIC = b"BSTO"
VERSION = 1
_ALLOWED_DTYPES = {"float32", "float64", "int32", "int64", "uint8", "uint16", "uint32", "bool"}


class ProtocolError(RuntimeError):
    """The byte stream is not a Busto worker message (e.g. the worker printed to stdout, or died)."""


def write_message(stream: BinaryIO, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    arrays = arrays or {}
    specs, blobs = [], []
    for key, a in arrays.items():
        a = np.ascontiguousarray(a)
        if a.dtype.name not in _ALLOWED_DTYPES:
            raise TypeError(f"array {key!r}: dtype {a.dtype} cannot be sent")
        specs.append({"key": key, "dtype": a.dtype.name, "shape": list(a.shape)})
        blobs.append(a.tobytes())
    head = json.dumps({**header, "arrays": specs}).encode("utf-8")
    stream.write(MAGIC + struct.pack("<I", len(head)) + head)
    for b in blobs:
        stream.write(b)
    stream.flush()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        b = stream.read(left)
        if not b:
            raise EOFError(f"stream closed with {left} of {n} bytes missing")
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def read_message(stream: BinaryIO) -> tuple[dict, dict[str, np.ndarray]]:
    prefix = _read_exact(stream, 8)
    if prefix[:4] != MAGIC:
        raise ProtocolError(f"unexpected bytes from the worker: {prefix!r} (something printed to its stdout?)")
    (n,) = struct.unpack("<I", prefix[4:])
    header = json.loads(_read_exact(stream, n).decode("utf-8"))
    arrays = {}
    for spec in header.pop("arrays", []):
        dtype = np.dtype(spec["dtype"])
        if dtype.name not in _ALLOWED_DTYPES:
            raise ProtocolError(f"array {spec['key']!r}: dtype {dtype} not allowed")
        shape = tuple(int(s) for s in spec["shape"])
        count = int(np.prod(shape)) if shape else 1
        buf = _read_exact(stream, count * dtype.itemsize)
        arrays[spec["key"]] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return header, arrays
