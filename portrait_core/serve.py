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
* ``release {avatar}``, ``shutdown``.

``avatar`` is ``{seed, truncation, body_shape[10], super_resolve}``: the same spec always bakes the same avatar
(seeded latents), and baked avatars are cached, so a model loads once per process and an avatar bakes once.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAGIC = b"BSTO"
PROTOCOL_VERSION = 1
_DTYPES = {"float32", "float64", "int32", "int64", "uint8", "uint16", "uint32", "bool"}
MAX_AVATARS = 8

Progress = Callable[[float, str], None]


class Cancelled(RuntimeError):
    """The client asked to stop."""


class ServeError(ValueError):
    """A request the worker cannot honour; the message is shown to the user."""


# ------------------------------------------------------------------------------------------------- framing
def write_message(stream: BinaryIO, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    specs, blobs = [], []
    for key, a in (arrays or {}).items():
        a = np.ascontiguousarray(a)
        if a.dtype.name not in _DTYPES:
            raise TypeError(f"array {key!r}: dtype {a.dtype} cannot be sent")
        specs.append({"key": key, "dtype": a.dtype.name, "shape": list(a.shape)})
        blobs.append(a.tobytes())
    head = json.dumps({**header, "arrays": specs}).encode("utf-8")
    stream.write(MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs))
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
        raise ValueError(f"not a Busto message: {prefix!r}")
    (n,) = struct.unpack("<I", prefix[4:])
    header = json.loads(_read_exact(stream, n).decode("utf-8"))
    arrays = {}
    for spec in header.pop("arrays", []):
        dtype = np.dtype(spec["dtype"])
        if dtype.name not in _DTYPES:
            raise ValueError(f"array {spec['key']!r}: dtype {dtype} not allowed")
        shape = tuple(int(s) for s in spec["shape"])
        buf = _read_exact(stream, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        arrays[spec["key"]] = np.frombuffer(buf, dtype=dtype).reshape(shape).copy()
    return header, arrays


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
        method = getattr(self, f"op_{op}", None)
        if method is None:
            raise ServeError(f"unknown operation {op!r}")
        if op not in ("hello", "load", "shutdown") and self.generator is None:
            raise ServeError("no model loaded (send 'load' first)")
        self._should_stop = should_stop or (lambda: False)
        return method(params, arrays, progress)

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
            # the shipped model draws identities/appearance codes from its label samplers (identity_for_seed)
            from portrait_core.generator.loading import default_checkpoint as shipped

            self.generator.is_shipped_default = shipped().is_file() and path.resolve() == shipped().resolve()
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

        spec = {
            "seed": int(spec.get("seed", 0)),
            "truncation": float(spec.get("truncation", 0.7)),
            "body_shape": [float(x) for x in spec.get("body_shape", [0.0] * 10)],
            "super_resolve": bool(spec.get("super_resolve", True)),
        }
        if len(spec["body_shape"]) != 10:
            raise ServeError(f"body_shape must have 10 values, got {len(spec['body_shape'])}")
        if not 0.0 <= spec["truncation"] <= 1.0:
            raise ServeError(f"truncation must be in [0, 1], got {spec['truncation']}")
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
                            super_resolve=sr, resolution=ray_res)
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
        avatar = self._avatar(params.get("avatar", {}), progress)
        for k, shape in (("pose", (6, 3)), ("expression", (64,)), ("cam2world", (4, 4)), ("intrinsics", (3, 3))):
            if k not in arrays:
                raise ServeError(f"render: missing array {k!r}")
            if tuple(arrays[k].shape[1:]) != shape:
                raise ServeError(f"render: {k} must be [N, {', '.join(map(str, shape))}], got {list(arrays[k].shape)}")
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
            mesh = extract_mesh(avatar, resolution=int(params.get("resolution", 128)), decimate=decimate,
                                colors=bool(params.get("colors", True)), **kw)
        except EmptyFieldError as exc:
            raise ServeError(f"{exc}. Lower the density threshold or use the automatic one (the avatar's occupancy "
                             f"peaks at a lower value, typical of an untrained model)") from exc
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


# ------------------------------------------------------------------------------------------------- server loop
def serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Answer requests until ``shutdown`` or end of input. Errors become ``ok: false`` replies."""
    session = Session()
    while True:
        try:
            header, arrays = read_message(stdin)
        except EOFError:
            return 0
        op = header.pop("op", None)

        def progress(x: float, label: str = "") -> None:
            write_message(stdout, {"progress": float(x), "label": label})

        try:
            reply, out = session.handle(str(op), header, arrays, progress)
            write_message(stdout, {"ok": True, **reply}, out)
        except Exception as exc:  # reported to the add-on, which shows the message
            write_message(stdout, {"ok": False, "error": str(exc) or type(exc).__name__,
                                   "error_type": type(exc).__name__})
            print(f"busto serve: {op}: {type(exc).__name__}: {exc}", file=sys.stderr)
        if op == "shutdown":
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
    return serve(proto_in, proto_out)


if __name__ == "__main__":
    sys.exit(main())
