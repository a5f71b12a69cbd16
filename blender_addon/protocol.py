"""The add-on's side of the worker protocol (numpy only, no bpy). The worker is ``portrait_core/serve.py``.

A message is ``b"BSTO"`` + little-endian uint32 header length + UTF-8 JSON header + raw array payloads.
The header's ``"arrays"`` lists ``{"key", "dtype", "shape"}`` for each payload, in order; the payloads are the
arrays' C-order bytes, so images and meshes cross the pipe without any encoding or disk round-trip.
Requests carry ``"op"``; replies carry ``"ok"`` (and ``"error"``/``"error_type"`` when false); a worker may send
``{"progress": x, "label": ...}`` messages before the reply of a long request.
"""

from __future__ import annotations

import json
import math
import struct
from typing import BinaryIO

import numpy as np

MAGIC = b"BSTO"
VERSION = 1
_ALLOWED_DTYPES = {"float32", "float64", "int32", "int64", "uint8", "uint16", "uint32", "bool"}
#: a reply header longer than this is not believed (the worker's headers are a few KB); the worker refuses request
#: headers over its own ``MAX_HEADER_BYTES`` (1 MiB)
MAX_HEADER_BYTES = 16 << 20


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


def _parse_specs(specs) -> list[tuple[str, np.dtype, tuple]]:
    if not isinstance(specs, list):
        raise ProtocolError(f"the worker sent 'arrays' of type {type(specs).__name__}, not a list")
    out = []
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
            raise ProtocolError(f"the worker sent a malformed array spec {spec!r:.80}")
        shape = spec.get("shape")
        if spec.get("dtype") not in _ALLOWED_DTYPES:
            raise ProtocolError(f"array {spec['key']!r}: dtype {spec.get('dtype')!r:.40} not allowed")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                  for s in shape):
            raise ProtocolError(f"array {spec['key']!r}: malformed shape {shape!r:.80}")
        out.append((spec["key"], np.dtype(spec["dtype"]), tuple(shape)))
    return out


def read_message(stream: BinaryIO) -> tuple[dict, dict[str, np.ndarray]]:
    """One message -> (header, arrays). ``EOFError`` when the stream ends; :class:`ProtocolError` when the bytes
    are not a well-formed message (checked before anything of a declared size is read)."""
    prefix = _read_exact(stream, 8)
    if prefix[:4] != MAGIC:
        raise ProtocolError(f"unexpected bytes from the worker: {prefix!r} (something printed to its stdout?)")
    (n,) = struct.unpack("<I", prefix[4:])
    if n > MAX_HEADER_BYTES:
        raise ProtocolError(f"the worker announced a {n}-byte header (limit {MAX_HEADER_BYTES})")
    try:
        header = json.loads(_read_exact(stream, n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"the worker sent an unreadable header ({str(exc)[:120]})") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"the worker sent a {type(header).__name__} header, not an object")
    arrays = {}
    for key, dtype, shape in _parse_specs(header.pop("arrays", [])):
        count = math.prod(shape)
        buf = _read_exact(stream, count * dtype.itemsize)
        arrays[key] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return header, arrays
