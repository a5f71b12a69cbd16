"""``python -m portrait_core serve``: the model worker for the Blender add-on (never imports bpy).

The add-on starts this with the Python of an environment that has torch and Busto, and exchanges messages over
stdin/stdout. A message is ``b"BSTO"`` + little-endian uint32 header length + UTF-8 JSON header + raw array
payloads (C-order bytes; the header's ``"arrays"`` lists ``{"key", "dtype", "shape"}`` in order), so frames and
meshes come back without encoding or disk round-trips. Requests carry ``"op"``; every request gets exactly one
reply with ``"ok"`` (plus ``"error"``/``"error_type"`` when false), optionally preceded by
``{"progress": x, "label": ...}`` messages. The real stdout is reserved for the protocol: anything a library
prints goes to stderr.

Operations (:class:`Session`, also used directly by the add-on's in-process backend):

* ``hello`` -> versions.
* ``load {checkpoint, device}`` -> model info (empty checkpoint: the model shipped in ``portrait_core/assets``).
* ``sample {avatar, preview_size} + preview_yaws[n]`` -> ``joint_positions[24,3]`` (canonical joints, metres),
  ``preview[n,S,S,4]``.
* ``render {avatar, size} + pose[N,6,3], expression[N,64], cam2world[N,4,4], intrinsics[N,3,3]`` ->
  ``rgba[N,H,W,4]`` float32: sRGB-encoded colour composited on white, straight alpha, rows top-down.
* ``extract {avatar, resolution, decimate, colors, level (float or "auto"), morphs}`` -> mesh (``vertices``, ``faces``, ``colors``),
  rig (``joint_names``, ``parents``, ``joint_positions``, ``joints``, ``weights``) and expression morph
  (``morphs[K,V,3]`` for components ``morph_components[K]`` at ``morph_scale``) arrays, canonical metres.
* ``invert {photo | prepared + index, out, latent_steps, tune_steps, sr_steps, candidates, glb}`` -> an avatar of
  the person in a photo, inverted into the loaded model (``portrait_core.photo.invert``): ``checkpoint`` (load
  it to use the avatar), ``out``, ``reconstruction`` (PSNR), ``timings``; progress per stage, cancellable.
* ``release {avatar}``, ``shutdown``.

``avatar`` is ``{seed, truncation, body_shape[10], super_resolve}``: the same spec always bakes the same avatar
(seeded latents), and baked avatars are cached, so a model loads once per process and an avatar bakes once.

Hostile or broken input never ends in a traceback. Every request is checked by :func:`validate_request` (types,
ranges, devices ``cpu``/``cuda``, array shapes and matching frame counts, the limits ``MAX_*`` below) and by a memory
budget (:func:`estimate_request_bytes` against :func:`memory_budget`) before anything is allocated, and answered
``ok: false`` with the reason when it fails. An unreadable header (not UTF-8, not a JSON object) is answered and the
next message read. When the stream cannot be followed any more (wrong magic, a header longer than
``MAX_HEADER_BYTES``, array specs with unknown or over-limit payload size, input cut mid-message) the worker answers
``ok: false`` and exits with status 2, without reading or allocating the declared size.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import struct
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAGIC = b"BSTO"
PROTOCOL_VERSION = 1
_DTYPES = {"float32", "float64", "int32", "int64", "uint8", "uint16", "uint32", "bool"}
MAX_AVATARS = 8

# ------------------------------------------------------------------------------------------------- request limits
#: a request header (the JSON after the 8-byte prefix) longer than this ends the session: it is refused before a
#: byte of it is read, so a length such as 0xFFFFFFFF is answered at once instead of waiting for 4 GiB
MAX_HEADER_BYTES = 1 << 20
#: at most this many arrays, of at most MAX_ARRAY_NDIM dimensions, per message
MAX_ARRAYS = 16
MAX_ARRAY_NDIM = 8
#: total declared array payload of one request; larger requests are refused before their payload is read
MAX_PAYLOAD_BYTES = 64 << 20
#: ``render`` size / ``sample`` preview_size (pixels, square)
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 8192
#: frames of one ``render`` request, preview yaws of one ``sample`` request
MAX_FRAMES = 256
#: ``extract`` grid resolution (nodes along the longest side; the add-on offers 16-512) and expression morphs
MIN_EXTRACT_RESOLUTION = 16
MAX_EXTRACT_RESOLUTION = 512
#: ``extract``: largest baked texture (texels per side; a power of two)
MAX_TEXTURE = 4096
MAX_MORPHS = 64
#: ``extract`` decimation target (faces; 0 keeps every face)
MAX_DECIMATE = 1 << 31
#: ``invert``: steps per stage and appearance codes tried (portrait_core.photo.invert.MAX_STEPS), paths' length
MAX_INVERT_STEPS = 5000
MAX_INVERT_CANDIDATES = 64
MAX_PATH_CHARS = 4096
#: seeds are non-negative 63-bit integers
MAX_SEED = (1 << 63) - 1
#: devices a ``load`` may name: ``cpu``, ``cuda`` or ``cuda:<index>``
DEVICES = ("cpu", "cuda")
#: the memory estimate of a request (:func:`estimate_request_bytes`) must stay under the budget: 3/4 of the physical
#: memory (DEFAULT_MEMORY_BUDGET where that is unknown), or ``BUSTO_WORKER_MEMORY_GB``
DEFAULT_MEMORY_BUDGET = 8 << 30
MEMORY_BUDGET_ENV = "BUSTO_WORKER_MEMORY_GB"
#: working memory per ray sample of a render and per output pixel (the rgba result, super-resolution passes),
#: measured as peak RSS on the shipped model (CPU): ~125 B per sample, ~1300 B per super-resolved pixel; with a
#: margin. Per grid node of a mesh extraction (dense grid, marching cubes; sparse evaluation needs less).
RENDER_BYTES_PER_SAMPLE = 160
RENDER_BYTES_PER_PIXEL = 1536
EXTRACT_BYTES_PER_NODE = 16
#: exit status when the byte stream cannot be followed any more (after an ``ok: false`` reply saying why)
EXIT_PROTOCOL_ERROR = 2

Progress = Callable[[float, str], None]


class Cancelled(RuntimeError):
    """The client asked to stop."""


class ServeError(ValueError):
    """A request the worker cannot honour; the message is shown to the user."""


class BadMessage(ServeError):
    """A message whose header is unreadable (not UTF-8, not a JSON object); its framing is intact (no payload
    follows an unreadable header), so the worker answers ``ok: false`` and reads the next message."""


class FramingError(ServeError):
    """The byte stream cannot be followed any more (wrong magic, an absurd header length, array specs whose payload
    size cannot be known or is over the limit, a stream cut mid-message): the worker answers and exits."""


# ------------------------------------------------------------------------------------------------- framing
def encode_message(header: dict, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    specs, blobs = [], []
    for key, a in (arrays or {}).items():
        a = np.ascontiguousarray(a)
        if a.dtype.name not in _DTYPES:
            raise TypeError(f"array {key!r}: dtype {a.dtype} cannot be sent")
        specs.append({"key": key, "dtype": a.dtype.name, "shape": list(a.shape)})
        blobs.append(a.tobytes())
    head = json.dumps({**header, "arrays": specs}).encode("utf-8")
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs)


def write_message(stream: BinaryIO, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    stream.write(encode_message(header, arrays))
    stream.flush()


def _read_exact(stream: BinaryIO, n: int, what: str = "message") -> bytes:
    chunks, left = [], n
    while left:
        b = stream.read(min(left, 1 << 24))
        if not b:
            raise FramingError(f"the stream ended inside a {what} ({left} of {n} bytes missing)")
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_array_specs(specs, max_payload: int | None = MAX_PAYLOAD_BYTES) -> list[tuple[str, np.dtype, tuple]]:
    """The header's ``"arrays"`` -> [(key, dtype, shape)], checked before any payload byte is read (pure). Raises
    :class:`FramingError` when the payload size cannot be known or exceeds ``max_payload`` bytes."""
    if not isinstance(specs, list):
        raise FramingError(f"'arrays' must be a list of {{key, dtype, shape}}, got {type(specs).__name__}")
    if len(specs) > MAX_ARRAYS:
        raise FramingError(f"{len(specs)} arrays in one message; at most {MAX_ARRAYS}")
    out, total = [], 0
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
            raise FramingError(f"array {i}: a spec must be {{key: str, dtype, shape}}, got {spec!r:.80}")
        key, name, shape = spec["key"], spec.get("dtype"), spec.get("shape")
        if name not in _DTYPES:
            raise FramingError(f"array {key!r}: dtype {name!r:.40} not allowed (one of {', '.join(sorted(_DTYPES))})")
        if not isinstance(shape, list) or len(shape) > MAX_ARRAY_NDIM or not all(_is_int(s) for s in shape):
            raise FramingError(f"array {key!r}: shape must be a list of at most {MAX_ARRAY_NDIM} integers, "
                               f"got {shape!r:.80}")
        if any(s < 0 for s in shape):
            raise FramingError(f"array {key!r}: negative dimension in shape {shape}")
        dtype = np.dtype(name)
        total += math.prod(shape) * dtype.itemsize
        if max_payload is not None and total > max_payload:
            raise FramingError(f"array {key!r} {shape}: the request's arrays exceed the limit of {max_payload} bytes "
                               f"(MAX_PAYLOAD_BYTES)")
        out.append((key, dtype, tuple(shape)))
    return out


def read_message(stream: BinaryIO, max_payload: int | None = MAX_PAYLOAD_BYTES,
                 max_header: int = MAX_HEADER_BYTES) -> tuple[dict, dict[str, np.ndarray]]:
    """One message -> (header without ``"arrays"``, arrays). Raises ``EOFError`` when the stream ends before a
    message starts, :class:`BadMessage` for an unreadable header (the stream stays in step) and
    :class:`FramingError` when it cannot be followed any more. Sizes are checked before anything is allocated."""
    first = stream.read(8)
    if not first:
        raise EOFError("end of input")
    prefix = first + (_read_exact(stream, 8 - len(first), "message prefix") if len(first) < 8 else b"")
    if prefix[:4] != MAGIC:
        raise FramingError(f"not a Busto message: {prefix!r} (expected the magic {MAGIC!r})")
    (n,) = struct.unpack("<I", prefix[4:])
    if n > max_header:
        raise FramingError(f"header length {n} bytes exceeds the limit of {max_header} (MAX_HEADER_BYTES)")
    raw = _read_exact(stream, n, "message header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadMessage(f"the message header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"the message header is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(header, dict):
        raise BadMessage(f"the message header must be a JSON object, got {type(header).__name__}")
    specs = parse_array_specs(header.pop("arrays", []), max_payload)
    arrays = {}
    for key, dtype, shape in specs:
        buf = _read_exact(stream, math.prod(shape) * dtype.itemsize, f"payload of array {key!r}")
        arrays[key] = np.frombuffer(buf, dtype=dtype).reshape(shape).copy()
    if len(arrays) != len(specs):
        raise BadMessage(f"array keys repeat in one message: {[k for k, _, _ in specs]}")
    return header, arrays


# ------------------------------------------------------------------------------------------------- request checks
#: op -> (parameters it accepts, arrays it accepts)
OPS: dict[str, tuple[frozenset, frozenset]] = {
    "hello": (frozenset(), frozenset()),
    "load": (frozenset({"checkpoint", "device"}), frozenset()),
    "sample": (frozenset({"avatar", "preview_size"}), frozenset({"preview_yaws"})),
    "render": (frozenset({"avatar", "size"}), frozenset({"pose", "expression", "cam2world", "intrinsics"})),
    "extract": (frozenset({"avatar", "resolution", "decimate", "colors", "level", "morphs", "texture"}), frozenset()),
    "invert": (frozenset({"photo", "prepared", "index", "out", "latent_steps", "tune_steps", "sr_steps", "face_steps",
                          "detail_steps", "candidates", "glb"}), frozenset()),
    "release": (frozenset({"avatar"}), frozenset()),
    "shutdown": (frozenset(), frozenset()),
}
_AVATAR_KEYS = ("seed", "truncation", "body_shape", "super_resolve")
_RENDER_ARRAYS = (("pose", (6, 3)), ("expression", (64,)), ("cam2world", (4, 4)), ("intrinsics", (3, 3)))


def _int(where: str, name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ServeError(f"{where}: {name} must be an integer, got {type(value).__name__} {value!r:.40}")
    if not lo <= int(value) <= hi:
        raise ServeError(f"{where}: {name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _real(where: str, name: str, value, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ServeError(f"{where}: {name} must be a number, got {type(value).__name__} {value!r:.40}")
    try:
        f = float(value)
    except OverflowError:  # an integer beyond float range
        f = math.inf
    if not math.isfinite(f) or not lo <= f <= hi:
        raise ServeError(f"{where}: {name} must be a finite number in [{lo:g}, {hi:g}], got {value!r:.40}")
    return f


def _or0(value):
    return 0 if value is None else value


def _bool(where: str, name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ServeError(f"{where}: {name} must be true or false, got {type(value).__name__} {value!r:.40}")
    return bool(value)


def validate_avatar(where: str, spec) -> dict:
    """An ``avatar`` parameter -> ``{seed, truncation, body_shape[10], super_resolve}`` with defaults (pure)."""
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise ServeError(f"{where}: avatar must be an object {{{', '.join(_AVATAR_KEYS)}}}, got "
                         f"{type(spec).__name__}")
    unknown = sorted(set(spec) - set(_AVATAR_KEYS))
    if unknown:
        raise ServeError(f"{where}: unknown avatar field(s) {', '.join(map(repr, unknown))}; expected "
                         f"{', '.join(_AVATAR_KEYS)}")
    shape = spec.get("body_shape", [0.0] * 10)
    if not isinstance(shape, (list, tuple)):
        raise ServeError(f"{where}: body_shape must be a list of 10 numbers, got {type(shape).__name__}")
    if len(shape) != 10:
        raise ServeError(f"{where}: body_shape must have 10 values, got {len(shape)}")
    return {
        "seed": _int(where, "avatar seed", spec.get("seed", 0), 0, MAX_SEED),
        "truncation": _real(where, "truncation", spec.get("truncation", 0.7), 0.0, 1.0),
        "body_shape": [_real(where, f"body_shape[{i}]", x, -10.0, 10.0) for i, x in enumerate(shape)],
        "super_resolve": _bool(where, "super_resolve", spec.get("super_resolve", True)),
    }


def _float_array(where: str, name: str, a: np.ndarray, tail: tuple) -> np.ndarray:
    if a.ndim != len(tail) + 1 or tuple(a.shape[1:]) != tail:
        raise ServeError(f"{where}: {name} must be [N, {', '.join(map(str, tail))}], got {list(a.shape)}")
    if a.dtype.kind not in "fiu":
        raise ServeError(f"{where}: {name} must hold numbers, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ServeError(f"{where}: {name} contains NaN or inf")
    return a


def validate_request(op, params, arrays) -> dict:
    """Check one request's types, ranges, devices and array shapes/counts -> its parameters with defaults filled
    in (pure: no model, no I/O). Raises :class:`ServeError` naming the operation and the problem."""
    if not isinstance(op, str) or op not in OPS:
        raise ServeError(f"unknown operation {op!r}; one of {', '.join(OPS)}" if op is not None
                         else "a request needs an 'op'")
    if not isinstance(params, dict) or not isinstance(arrays, dict):
        raise ServeError(f"{op}: parameters must be an object")
    allowed, allowed_arrays = OPS[op]
    unknown = sorted(map(str, set(params) - allowed))
    if unknown:
        raise ServeError(f"{op}: unknown parameter(s) {', '.join(map(repr, unknown))}; expected "
                         f"{', '.join(sorted(allowed)) or 'none'}")
    unknown = sorted(map(str, set(arrays) - allowed_arrays))
    if unknown:
        raise ServeError(f"{op}: unexpected array(s) {', '.join(map(repr, unknown))}; expected "
                         f"{', '.join(sorted(allowed_arrays)) or 'none'}")
    out: dict = {}
    if op == "load":
        ckpt = params.get("checkpoint")
        if ckpt is not None and not isinstance(ckpt, str):
            raise ServeError(f"load: checkpoint must be a path (string), got {type(ckpt).__name__}")
        if ckpt and ("\x00" in ckpt or len(ckpt) > 4096):
            raise ServeError("load: checkpoint is not a usable path (NUL byte or over 4096 characters)")
        device = "cpu" if params.get("device") in (None, "") else params["device"]
        if not isinstance(device, str) or not (device in DEVICES or re.fullmatch(r"cuda:\d{1,3}", device)):
            raise ServeError(f"load: device must be one of {', '.join(DEVICES)} (or cuda:<index>), got {device!r:.40}")
        out = {"checkpoint": ckpt or None, "device": device}
    elif op in ("sample", "render", "extract"):
        out["avatar"] = validate_avatar(op, params.get("avatar"))
    if op == "sample":
        out["preview_size"] = _int(op, "preview_size", params.get("preview_size", 128), MIN_IMAGE_SIZE,
                                   MAX_IMAGE_SIZE)
        yaws = arrays.get("preview_yaws")
        if yaws is not None:
            yaws = _float_array(op, "preview_yaws", np.asarray(yaws).reshape(-1), ())
            if not 1 <= len(yaws) <= MAX_FRAMES:
                raise ServeError(f"sample: 1 to {MAX_FRAMES} preview_yaws (MAX_FRAMES), got {len(yaws)}")
    elif op == "render":
        size = params.get("size")
        out["size"] = None if size is None or (size == 0 and not isinstance(size, bool)) else \
            _int(op, "size", size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        counts = []
        for k, tail in _RENDER_ARRAYS:
            if k not in arrays:
                raise ServeError(f"render: missing array {k!r}")
            counts.append(len(_float_array(op, k, arrays[k], tail)))
        if len(set(counts)) != 1:
            raise ServeError(f"render: pose, expression, cam2world and intrinsics must have the same number of "
                             f"frames, got {counts}")
        if not 1 <= counts[0] <= MAX_FRAMES:
            raise ServeError(f"render: 1 to {MAX_FRAMES} frames per request (MAX_FRAMES), got {counts[0]}")
        K = arrays["intrinsics"]
        if not (np.all(K[:, 0, 0] > 0) and np.all(K[:, 1, 1] > 0)):
            raise ServeError("render: intrinsics must have positive focal lengths (K[0,0], K[1,1] > 0)")
    elif op == "extract":
        out["resolution"] = _int(op, "resolution", params.get("resolution", 128), MIN_EXTRACT_RESOLUTION,
                                 MAX_EXTRACT_RESOLUTION)
        out["decimate"] = _int(op, "decimate", _or0(params.get("decimate")), 0, MAX_DECIMATE)
        out["colors"] = _bool(op, "colors", params.get("colors", True))
        level = params.get("level")
        out["level"] = level if level is None or level == "auto" else _real(op, "level", level)
        out["morphs"] = _int(op, "morphs", _or0(params.get("morphs")), 0, MAX_MORPHS)
        texture = _int(op, "texture", _or0(params.get("texture")), 0, MAX_TEXTURE)
        if texture and (texture < 16 or texture & (texture - 1)):
            raise ServeError(f"extract: texture must be 0 or a power of two from 16 to {MAX_TEXTURE}, got {texture}")
        out["texture"] = texture
    elif op == "invert":
        for key in ("photo", "prepared", "out"):
            value = params.get(key)
            if value is not None and (not isinstance(value, str) or "\x00" in value or len(value) > MAX_PATH_CHARS):
                raise ServeError(f"invert: {key} must be a path (a string without NUL bytes, at most "
                                 f"{MAX_PATH_CHARS} characters)")
            out[key] = value or None
        if (out["photo"] is None) == (out["prepared"] is None):
            raise ServeError("invert: give a photo or a prepared dataset folder (one of them)")
        if out["out"] is None:
            raise ServeError("invert: out (the output folder) is required")
        out["index"] = _int(op, "index", _or0(params.get("index")), 0, MAX_FRAMES * 4096)
        from portrait_core.photo.invert import InvertSettings

        d = InvertSettings()
        defaults = {k: getattr(d, k) for k in ("latent_steps", "tune_steps", "sr_steps", "face_steps", "detail_steps")}
        for key, default in defaults.items():
            out[key] = _int(op, key, params.get(key, default), 0, MAX_INVERT_STEPS)
        out["candidates"] = _int(op, "candidates", params.get("candidates", 8), 1, MAX_INVERT_CANDIDATES)
        out["glb"] = _bool(op, "glb", params.get("glb", False))
    return out


def memory_budget(environ: dict | None = None) -> int:
    """Bytes a request may need (``BUSTO_WORKER_MEMORY_GB``, else 3/4 of the physical memory)."""
    value = (os.environ if environ is None else environ).get(MEMORY_BUDGET_ENV, "").strip()
    if value:
        try:
            gb = float(value)
            if math.isfinite(gb) and gb > 0:
                return int(gb * (1 << 30))
        except ValueError:
            pass
        print(f"busto serve: ignoring {MEMORY_BUDGET_ENV}={value!r} (not a positive number of GiB)", file=sys.stderr)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 0
    return physical * 3 // 4 if physical > 0 else DEFAULT_MEMORY_BUDGET


def estimate_request_bytes(op: str, params: dict, arrays: dict, model: dict) -> int:
    """Working memory a validated request needs, estimated before anything is allocated (pure). ``model`` holds
    ``output_resolution``, ``sr_scale`` (1 without super-resolution) and ``samples_per_ray``."""
    if op in ("render", "sample"):
        if op == "render":
            n, size = len(arrays["pose"]), params["size"] or int(model["output_resolution"])
        else:
            yaws = arrays.get("preview_yaws")
            n, size = (1 if yaws is None else int(np.asarray(yaws).size)), params["preview_size"]
        scale = int(model["sr_scale"]) if params["avatar"]["super_resolve"] else 1
        rays = max(8, math.ceil(size / max(scale, 1))) ** 2
        return n * (rays * int(model["samples_per_ray"]) * RENDER_BYTES_PER_SAMPLE + size * size
                    * RENDER_BYTES_PER_PIXEL)
    if op == "extract":
        return params["resolution"] ** 3 * EXTRACT_BYTES_PER_NODE
    return 0


# ------------------------------------------------------------------------------------------------- model session
def default_checkpoint() -> Path:
    """The model shipped with Busto (``portrait_core/assets/default.safetensors``)."""
    from portrait_core.generator.loading import default_checkpoint as shipped

    path = shipped()
    if not path.is_file():
        raise ServeError(f"no checkpoint given and no model shipped at {path}; choose a checkpoint "
                         f"(.safetensors from 'python -m train') in the Busto preferences or the Model panel")
    return path


def _noop(_x: float, _label: str) -> None:
    pass


class Session:
    """One loaded generator and its baked avatars. Not thread-safe; callers serialise requests."""

    def __init__(self):
        self.generator = None
        self.info: dict = {}
        self.device = "cpu"
        self._avatars: OrderedDict[str, object] = OrderedDict()
        #: how often the model was loaded, avatars baked and frames rendered (a render farm checks "load once")
        self.stats = {"loads": 0, "bakes": 0, "frames": 0}

    # -- dispatch
    def handle(self, op: str, params: dict, arrays: dict[str, np.ndarray], progress: Progress = _noop,
               should_stop: Callable[[], bool] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        if not isinstance(op, str) or op not in OPS:
            validate_request(op, params, arrays)  # raises, naming the problem
        if op not in ("hello", "load", "shutdown") and self.generator is None:
            raise ServeError("no model loaded (send 'load' first)")
        params = validate_request(op, params, arrays)
        self._check_budget(op, params, arrays)
        self._should_stop = should_stop or (lambda: False)
        return getattr(self, f"op_{op}")(params, arrays, progress)

    def _check_budget(self, op: str, params: dict, arrays: dict) -> None:
        if self.generator is None:
            return
        cfg = self.generator.cfg
        sr = cfg.superres.scale if (cfg.superres.enabled and self.generator.superres is not None) else 1
        model = {"output_resolution": cfg.render.resolution * sr, "sr_scale": sr,
                 "samples_per_ray": cfg.render.samples_per_ray}
        need, budget = estimate_request_bytes(op, params, arrays, model), memory_budget()
        if need > budget:
            raise ServeError(f"{op}: this request needs about {need / (1 << 30):.1f} GiB of working memory, over "
                             f"the worker's budget of {budget / (1 << 30):.1f} GiB ({MEMORY_BUDGET_ENV}); ask for "
                             f"fewer frames, a smaller size or a lower resolution")

    def _check_stop(self) -> None:
        if self._should_stop():
            raise Cancelled("cancelled")

    def op_hello(self, params, arrays, progress):
        import torch

        return {"protocol": PROTOCOL_VERSION, "torch": torch.__version__, "python": sys.version.split()[0],
                "cuda": bool(torch.cuda.is_available()), "stats": dict(self.stats)}, {}

    def op_load(self, params, arrays, progress):
        import torch

        from portrait_core.generator import load_generator

        path = Path(params.get("checkpoint") or default_checkpoint())
        device = str(params.get("device") or "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ServeError("device 'cuda' requested but torch sees no CUDA device here; choose CPU")
        key = (str(path.resolve()), path.stat().st_mtime if path.is_file() else 0.0, device)
        if self.generator is None or self.info.get("_key") != list(key):
            progress(0.1, "loading model")
            t0 = time.perf_counter()
            self.generator = None
            self._avatars.clear()
            self.generator = load_generator(path, device=device)  # raises CheckpointError naming the file
            # an appearance-code checkpoint draws identities from its label samplers, found by what it is, not
            # where it lies (identity_for_seed); found now so that a missing one fails the load, naming the file
            from portrait_core.generator.loading import samplers_for

            samplers_for(self.generator)
            self.stats["loads"] += 1
            self.device = device
            cfg = self.generator.cfg
            sr = cfg.superres.scale if (cfg.superres.enabled and self.generator.superres is not None) else 1
            self.info = {
                "_key": list(key), "checkpoint": str(path), "device": device, "preset": cfg.name,
                "mode": cfg.render.mode, "resolution": cfg.render.resolution, "sr_scale": sr,
                "output_resolution": cfg.render.resolution * sr, "load_seconds": round(time.perf_counter() - t0, 3),
                "torch": torch.__version__,
            }
        progress(1.0, "model loaded")
        return {k: v for k, v in self.info.items() if not k.startswith("_")}, {}

    def op_shutdown(self, params, arrays, progress):
        return {"bye": True}, {}

    # -- avatars
    def _avatar(self, spec: dict, progress: Progress = _noop):
        import torch

        from portrait_core.generator.loading import identity_for_seed

        spec = validate_avatar("avatar", spec)  # already checked by handle(); normalised again for direct callers
        key = json.dumps(spec, sort_keys=True)
        avatar = self._avatars.get(key)
        if avatar is None:
            progress(0.2, "baking avatar")
            g = self.generator
            latents, _ = identity_for_seed(g, spec["seed"])  # the user's body shape is kept below
            betas = torch.tensor([spec["body_shape"]], dtype=torch.float32, device=self.device)
            sr = spec["super_resolve"] and g.superres is not None
            avatar = g.make_avatar(latents, betas, truncation=spec["truncation"], super_resolve=sr)
            self.stats["bakes"] += 1
            self._avatars[key] = avatar
            while len(self._avatars) > MAX_AVATARS:
                self._avatars.popitem(last=False)
        else:
            self._avatars.move_to_end(key)
        return avatar

    def op_release(self, params, arrays, progress):
        self._avatars.clear()
        return {}, {}

    def _render(self, avatar, pose, expression, cam2world, intrinsics, size: int) -> np.ndarray:
        import torch

        from portrait_core import conventions as C
        from portrait_core.geometry.camera import Camera

        dev, dt = avatar.device, torch.float32
        c2w = torch.as_tensor(np.asarray(cam2world, np.float32), device=dev)
        K = torch.as_tensor(np.asarray(intrinsics, np.float32), device=dev)
        # sample the same depth interval around the avatar as the training camera (look-at -/+ half range)
        look_at = torch.tensor(C.PORTRAIT_LOOK_AT, dtype=dt, device=dev)
        depth = ((look_at - c2w[:, :3, 3]) * c2w[:, :3, 2]).sum(-1)
        if (depth <= 0.05).any():
            raise ServeError("the camera looks away from the avatar (the avatar is behind the camera)")
        half = C.PORTRAIT_DEPTH_HALF_RANGE
        camera = Camera(c2w, K, (depth - half).clamp_min(0.02), depth + half)
        sr = avatar.textures_hr is not None
        scale = self.generator.cfg.superres.scale if sr else 1
        ray_res = max(8, int(math.ceil(size / scale)))
        out = avatar.render(torch.as_tensor(np.asarray(pose, np.float32), device=dev),
                            torch.as_tensor(np.asarray(expression, np.float32), device=dev), camera,
                            super_resolve=sr, resolution=ray_res, low_resolution=False)
        rgb = ((out.image.clamp(-1, 1) + 1) * 0.5).permute(0, 2, 3, 1)
        alpha = out.alpha.clamp(0, 1).permute(0, 2, 3, 1)
        return torch.cat([rgb, alpha], -1).float().cpu().numpy()

    def op_sample(self, params, arrays, progress):
        import torch

        from portrait_core.geometry.camera import Camera

        avatar = self._avatar(params.get("avatar", {}), progress)
        self._check_stop()
        yaws = np.asarray(arrays.get("preview_yaws", np.array([math.pi / 2])), np.float64).reshape(-1)
        size = int(params.get("preview_size", 128))
        progress(0.7, "rendering preview")
        cam = Camera.portrait(torch.as_tensor(yaws, dtype=torch.float32))
        n = len(yaws)
        preview = self._render(avatar, np.zeros((n, 6, 3)), np.zeros((n, 64)), cam.cam2world.cpu().numpy(),
                               cam.intrinsics.cpu().numpy(), size)
        joints = avatar.canonical_body.joints[0].detach().cpu().double().numpy()
        progress(1.0, "done")
        return {"avatar": params.get("avatar", {})}, {"joint_positions": joints, "preview": preview}

    def op_render(self, params, arrays, progress):
        avatar = self._avatar(params.get("avatar", {}), progress)  # arrays checked by validate_request
        size = int(params.get("size") or self.info["output_resolution"])
        rgba = self._render(avatar, arrays["pose"], arrays["expression"], arrays["cam2world"], arrays["intrinsics"],
                            size)
        self.stats["frames"] += len(rgba)
        return {}, {"rgba": rgba}

    def op_extract(self, params, arrays, progress):
        from portrait_core.export import EmptyFieldError, build_rig, expression_morphs, extract_mesh
        from portrait_core.export.rig import MORPH_SCALE

        avatar = self._avatar(params.get("avatar", {}), progress)
        self._check_stop()
        progress(0.3, "extracting mesh")
        decimate = int(params.get("decimate") or 0) or None
        level = params.get("level")
        kw = {} if level is None else {"level": "auto" if level == "auto" else float(level)}
        try:
            texture = int(params.get("texture") or 0) if params.get("colors", True) else 0
            mesh = extract_mesh(avatar, resolution=int(params.get("resolution", 128)), decimate=decimate,
                                colors=bool(params.get("colors", True)), texture=texture or None, **kw)
        except EmptyFieldError as exc:
            raise ServeError(f"{exc}. Lower the density threshold or use the automatic one (the avatar's occupancy "
                             f"peaks at a lower value, typical of an untrained model)") from exc
        # Blender keeps UVs per face corner: the welded surface + corner UVs + the baked texture
        texture_image = mesh.texture
        mesh, loop_uvs = mesh.unsplit()
        self._check_stop()
        progress(0.8, "skinning")
        rig = build_rig(mesh, self.generator.body, avatar.body_shape.detach().cpu())
        out = {
            "vertices": np.asarray(mesh.vertices, np.float32),
            "faces": np.asarray(mesh.faces, np.uint32),
            "joint_ids": np.asarray(rig.joint_ids, np.int32),
            "parents": np.asarray(rig.parents, np.int32),
            "joint_positions": np.asarray(rig.joint_positions, np.float64),
            "joints": np.asarray(rig.joints, np.uint16),
            "weights": np.asarray(rig.weights, np.float32),
        }
        if params.get("colors", True) and mesh.colors is not None:
            out["colors"] = np.asarray(mesh.colors, np.float32)
        if loop_uvs is not None and texture_image is not None:
            out["loop_uvs"] = np.asarray(loop_uvs, np.float32)  # [F, 3, 2], glTF convention (v down)
            out["texture"] = np.asarray(texture_image, np.uint8)  # [S, S, 3] sRGB
        morph_names: list[str] = []
        n_morphs = int(params.get("morphs") or 0)
        if n_morphs > 0:
            self._check_stop()
            progress(0.9, "expression morphs")
            morphs = expression_morphs(avatar, mesh, components=n_morphs, scale=MORPH_SCALE)
            morph_names = list(morphs)
            out["morphs"] = np.stack([morphs[k] for k in morph_names]).astype(np.float32)  # [K, V, 3]
            out["morph_components"] = np.arange(n_morphs, dtype=np.int32)
        progress(1.0, "done")
        return {"joint_names": list(rig.joint_names), "num_vertices": int(len(mesh.vertices)),
                "num_faces": int(len(mesh.faces)), "morph_names": morph_names, "morph_scale": MORPH_SCALE}, out


    def op_invert(self, params, arrays, progress):
        from portrait_core.photo.invert import InvertCancelled, InvertSettings, run_invert

        settings = InvertSettings(latent_steps=params["latent_steps"], tune_steps=params["tune_steps"],
                                  sr_steps=params["sr_steps"], face_steps=params["face_steps"],
                                  detail_steps=params["detail_steps"], candidates=params["candidates"])
        try:
            report = run_invert(params["out"], photo=params["photo"], prepared=params["prepared"],
                                index=params["index"], settings=settings, checkpoint=self.info.get("checkpoint"),
                                glb=params["glb"], progress=progress, should_stop=self._should_stop,
                                log=lambda m: print(f"busto serve: invert: {m}", file=sys.stderr))
        except InvertCancelled as exc:
            raise Cancelled(str(exc)) from exc
        keys = ("checkpoint", "body_shape", "reconstruction", "initial_reconstruction", "turned_views", "sheet", "glb", "timings")
        return {"out": str(params["out"]), **{k: report[k] for k in keys if k in report}}, {}


# ------------------------------------------------------------------------------------------------- server loop
class _ClientGone(Exception):
    """The reply pipe is closed: nobody is listening any more."""


def _send(stream: BinaryIO, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    data = encode_message(header, arrays)  # encoding problems are the worker's, reported as an error reply
    try:
        stream.write(data)
        stream.flush()
    except (OSError, ValueError) as exc:  # broken pipe, or the stream was closed
        raise _ClientGone(str(exc)) from exc


def _error_reply(exc: BaseException) -> dict:
    if isinstance(exc, MemoryError):
        text = "out of memory (ask for fewer frames, a smaller size or a lower resolution)"
    else:
        text = " ".join(str(exc).split())[:2000] or type(exc).__name__
    return {"ok": False, "error": text, "error_type": type(exc).__name__}


def _debug() -> bool:
    return os.environ.get("BUSTO_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def serve(stdin: BinaryIO, stdout: BinaryIO, session: Session | None = None) -> int:
    """Answer requests until ``shutdown`` or end of input; returns the exit status. Every request gets one reply:
    a failed or malformed one ``ok: false`` with the reason. A message the stream cannot be followed past (see
    :class:`FramingError`) is answered ``ok: false`` too, then the loop ends with :data:`EXIT_PROTOCOL_ERROR`."""
    session = Session() if session is None else session
    while True:
        try:
            try:
                header, arrays = read_message(stdin)
            except EOFError:
                return 0
            except BadMessage as exc:
                print(f"busto serve: bad message: {exc}", file=sys.stderr)
                _send(stdout, _error_reply(exc))
                continue
            except (FramingError, OSError) as exc:
                print(f"busto serve: cannot follow the input any more, exiting: {exc}", file=sys.stderr)
                _send(stdout, _error_reply(exc))
                return EXIT_PROTOCOL_ERROR
            op = header.pop("op", None)

            def progress(x: float, label: str = "") -> None:
                _send(stdout, {"progress": float(x), "label": str(label)})

            try:
                reply, out = session.handle(op, header, arrays, progress)
                _send(stdout, {"ok": True, **reply}, out)
            except _ClientGone:
                raise
            except Exception as exc:  # MemoryError included: reported to the add-on, which shows the message
                print(f"busto serve: {op!r:.40}: {type(exc).__name__}: {exc}", file=sys.stderr)
                if _debug() and not isinstance(exc, ServeError):
                    traceback.print_exc(file=sys.stderr)
                _send(stdout, _error_reply(exc))
            if op == "shutdown":
                return 0
        except _ClientGone as exc:
            print(f"busto serve: the client closed the reply pipe ({exc}); exiting", file=sys.stderr)
            return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    # keep the real stdout for the protocol; route stray prints (libraries, warnings) to stderr
    proto_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    proto_in = sys.stdin.buffer
    try:
        return serve(proto_in, proto_out)
    except KeyboardInterrupt:
        print("busto serve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
