"""Model backends (no bpy): in-process (torch + portrait_core imported inside Blender) or a worker subprocess
(``python -m portrait_core serve`` run by another Python). Both expose the same calls and return numpy arrays:

``load() -> info``; ``sample(spec, preview_yaws) -> {joint_positions[24,3], preview[n,H,W,4]}``;
``render_frames(spec, pose[N,6,3], expression[N,64], cam2world[N,4,4], intrinsics[N,3,3], super_resolve)
-> rgba[N,H,W,4]`` (sRGB-encoded colour on white, straight alpha, top-down rows);
``extract(spec, resolution, decimate, colors) -> mesh + rig arrays``.

A backend is created once per settings and cached for the whole process, so a model loads once per Blender
session and once per command-line render, and avatars stay baked across frames.

The worker-process backend never waits forever: each request kind has a timeout (``Settings.timeout_for``:
preferences *Timeouts*, environment ``BUSTO_TIMEOUT_LOAD``/``_RENDER``/``_EXTRACT``), and while it waits it polls
every ``POLL_SECONDS`` for the cancel flag. A timeout or a cancel stops the worker (it starts again on the next
request); a timeout raises :class:`WorkerTimeout` with a message saying so. In-process calls cannot be interrupted
mid-computation; they check the cancel flag between stages.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from . import protocol


class BackendError(RuntimeError):
    """A user-facing failure (missing torch, bad checkpoint, worker died...). The message says what to do."""


class Cancelled(RuntimeError):
    """The user cancelled the job."""


class WorkerTimeout(BackendError):
    """The worker process did not answer a request in time; it was stopped (and restarts on the next request)."""


#: seconds the worker-process backend waits for a reply to each kind of request (defaults; load, sample/render and
#: extract are set in the preferences): a stuck worker, or a hung farm render, fails with a clear message instead
DEFAULT_TIMEOUTS = {"hello": 60.0, "load": 600.0, "sample": 300.0, "render": 300.0, "extract": 1800.0,
                    "invert": 3600.0, "release": 60.0, "shutdown": 10.0}
#: how often a waiting request checks the cancel flag and the clock
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Settings:
    checkpoint: str = ""
    device: str = "cpu"
    backend: str = "AUTO"
    python: str = ""
    site_packages: str = ""
    cache_dir: str = ""
    load_timeout: float = DEFAULT_TIMEOUTS["load"]
    render_timeout: float = DEFAULT_TIMEOUTS["render"]  # sample and render
    extract_timeout: float = DEFAULT_TIMEOUTS["extract"]

    def timeout_for(self, op: str) -> float:
        """Seconds to wait for the reply to ``op`` (a non-positive or invalid setting falls back to the default)."""
        value = {"load": self.load_timeout, "sample": self.render_timeout, "render": self.render_timeout,
                 "extract": self.extract_timeout}.get(op)
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = 0.0
        return value if value > 0 and value == value else DEFAULT_TIMEOUTS.get(op, 60.0)


@dataclass(frozen=True)
class AvatarSpec:
    """Everything that identifies a baked avatar; re-sampling the same spec gives the same avatar."""

    seed: int = 0
    truncation: float = 0.7
    body_shape: tuple[float, ...] = (0.0,) * 10
    super_resolve: bool = True

    def to_json(self) -> dict:
        d = asdict(self)
        d["body_shape"] = [float(x) for x in self.body_shape]
        return d


Progress = Callable[[float, str], None]


def _noop(_x: float, _label: str) -> None:
    pass


def _prefixed(op: str, message: str) -> str:
    """``op: message``, unless the worker's message names the operation already."""
    return message if message.startswith(f"{op}:") else f"{op}: {message}"


# --------------------------------------------------------------------------------------------- environment
def _add_site_packages(path: str) -> None:
    if path and os.path.isdir(path) and path not in sys.path:
        sys.path.append(path)  # user-chosen in the preferences; appended so Blender's own modules win


def inprocess_available(settings: Settings) -> tuple[bool, str]:
    """Whether torch and portrait_core can be imported here (without importing them)."""
    _add_site_packages(settings.site_packages)

    def importable(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # e.g. sys.modules[name] is None: imports of it are blocked
            return False

    missing = [m for m in ("torch", "portrait_core") if not importable(m)]
    if missing:
        return False, f"not importable in this Blender: {', '.join(missing)}"
    return True, "torch and portrait_core importable"


def shipped_checkpoint(settings: Settings) -> str | None:
    """The model shipped in ``portrait_core/assets`` of the in-process environment (found without importing
    portrait_core), or None."""
    _add_site_packages(settings.site_packages)
    try:
        spec = importlib.util.find_spec("portrait_core")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        assets = os.path.join(folder, "assets")
        if os.path.isdir(assets):
            path = os.path.join(assets, "default.safetensors")
            if os.path.isfile(path):
                return path
    return None


def environment_report(settings: Settings) -> str:
    """Human-readable lines for the preferences and the Model panel."""
    ok, why = inprocess_available(settings)
    lines = [f"In-process: {'available' if ok else why}"]
    if settings.python:
        exists = os.path.isfile(settings.python)
        lines.append(f"Worker Python: {settings.python}" + ("" if exists else " (file not found)"))
    else:
        lines.append("Worker Python: not set")
    if not ok and not settings.python:
        lines.append("To use Busto, either set 'Worker Python' to the python of an environment")
        lines.append("with Busto installed (pip install -e .), or 'Site-packages' to its")
        lines.append("site-packages folder (Python 3.11) for the in-process backend.")
    return "\n".join(lines)


def choose_kind(settings: Settings) -> str:
    kind = settings.backend.upper()
    if kind in ("INPROCESS", "SUBPROCESS"):
        return kind
    ok, _ = inprocess_available(settings)
    if ok:
        return "INPROCESS"
    if settings.python:
        return "SUBPROCESS"
    raise BackendError("Busto needs torch and portrait_core. " + environment_report(settings).replace("\n", " "))


# --------------------------------------------------------------------------------------------- backends
class InProcessBackend:
    """Calls ``portrait_core.serve.Session`` directly (one implementation, two transports)."""

    kind = "INPROCESS"

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.RLock()
        ok, why = inprocess_available(settings)
        if not ok:
            raise BackendError(f"In-process backend: {why}. Set 'Site-packages' in the Busto preferences or use "
                               f"the worker-process backend with a 'Worker Python'.")
        try:
            from portrait_core.serve import Session
        except Exception as exc:  # a broken environment: report, do not crash Blender
            raise BackendError(f"In-process backend: importing portrait_core failed: {exc}") from exc
        self._session = Session()
        self.info: dict | None = None

    def load(self, progress: Progress = _noop, should_stop: Callable[[], bool] | None = None) -> dict:
        with self._lock:
            if self.info is None:
                self.info = self._call("load", None, progress, should_stop,
                                       checkpoint=self.settings.checkpoint, device=self.settings.device)
            return self.info

    def _call(self, op: str, arrays: dict | None, progress: Progress, should_stop, **kw) -> dict:
        try:
            reply, out = self._session.handle(op, kw, arrays or {}, progress=progress, should_stop=should_stop)
        except Exception as exc:
            if type(exc).__name__ == "Cancelled":
                raise Cancelled(str(exc)) from exc
            raise BackendError(_prefixed(op, str(exc))) from exc
        return {**reply, **out}

    def request(self, op: str, arrays: dict | None = None, progress: Progress = _noop,
                should_stop: Callable[[], bool] | None = None, timeout: float | None = None, **kw) -> dict:
        """``timeout`` is accepted for the same calls as the worker backend; in-process work cannot be interrupted
        mid-computation (``should_stop`` is checked between stages)."""
        with self._lock:
            self.load(should_stop=should_stop)
            return self._call(op, arrays, progress, should_stop, **kw)

    def close(self) -> None:
        self._session = None


class SubprocessBackend:
    """Talks to ``<python> -m portrait_core serve`` over its stdin/stdout (see :mod:`.protocol`)."""

    kind = "SUBPROCESS"

    def __init__(self, settings: Settings):
        if not settings.python:
            raise BackendError("Worker-process backend: set 'Worker Python' in the Busto preferences (the python "
                               "of an environment where 'python -m portrait_core serve' works).")
        if not os.path.isfile(settings.python):
            raise BackendError(f"Worker Python not found: {settings.python}")
        self.settings = settings
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._replies: queue.Queue | None = None
        self._stderr: deque[str] = deque(maxlen=40)
        self.info: dict | None = None

    # -- process management
    def _start(self) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._stderr.clear()
        try:
            self._proc = subprocess.Popen(
                [self.settings.python, "-m", "portrait_core", "serve"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0,
            )
        except OSError as exc:
            raise BackendError(f"could not start the worker {self.settings.python}: {exc}") from exc
        self._drainer = threading.Thread(target=self._drain, args=(self._proc,), daemon=True)
        self._drainer.start()
        # replies are read by a thread into a queue (one per process), so a waiting request can time out and cancel
        self._replies = queue.Queue()
        threading.Thread(target=self._read_replies, args=(self._proc, self._replies), daemon=True).start()

    def _drain(self, proc: subprocess.Popen) -> None:
        try:
            for line in iter(proc.stderr.readline, b""):
                self._stderr.append(line.decode("utf-8", "replace").rstrip())
        except (OSError, ValueError):  # the pipe was closed by _kill
            pass

    @staticmethod
    def _read_replies(proc: subprocess.Popen, replies: queue.Queue) -> None:
        try:
            while True:
                replies.put(protocol.read_message(proc.stdout))
        except BaseException as exc:  # EOF, a malformed message, the pipe closed by _kill: the waiter reports it
            replies.put(exc)

    @staticmethod
    def _write(proc: subprocess.Popen, header: dict, arrays: dict | None) -> None:
        try:
            protocol.write_message(proc.stdin, header, arrays)
        except (OSError, ValueError):  # the worker exited or stopped reading: the reply side reports it
            pass

    def _died(self, what: str) -> BackendError:
        code = None
        if self._proc is not None:
            try:  # let it finish dying and its last stderr lines arrive
                code = self._proc.wait(timeout=3)
                self._drainer.join(timeout=3)
            except subprocess.TimeoutExpired:
                code = self._proc.poll()
        tail = "\n".join(list(self._stderr)[-8:])
        self._kill()
        return BackendError(f"the worker process {what} (exit code {code}). Its last messages:\n{tail}")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.kill()
                proc.wait(timeout=5)
            except Exception:
                pass
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    if pipe is not None:
                        pipe.close()
                except Exception:
                    pass
        self._replies = None
        self.info = None

    def _exchange(self, header: dict, arrays: dict | None, progress: Progress,
                  should_stop: Callable[[], bool] | None = None, timeout: float | None = None):
        op = str(header.get("op"))
        timeout = self.settings.timeout_for(op) if timeout is None else float(timeout)
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        replies, deadline = self._replies, time.monotonic() + timeout
        # written from a thread: a worker that stops reading must not block us past the timeout or a cancel
        threading.Thread(target=self._write, args=(self._proc, header, arrays), daemon=True).start()
        while True:
            try:
                item = replies.get(timeout=POLL_SECONDS)
            except queue.Empty:
                item = None
            if isinstance(item, BaseException):
                raise self._died(f"stopped unexpectedly ({item or type(item).__name__})") from item
            if item is not None and "progress" not in item[0]:
                reply, out = item
                break
            if item is not None:
                try:
                    progress(float(item[0]["progress"]), str(item[0].get("label", "")))
                except (TypeError, ValueError) as exc:
                    self._kill()
                    raise BackendError(f"{op}: the worker sent a malformed progress message ({exc})") from exc
            if should_stop is not None and should_stop():
                # the worker cannot be interrupted mid-request: stop it; it restarts on the next call
                self._kill()
                raise Cancelled("cancelled")
            if time.monotonic() >= deadline:
                tail = "\n".join(list(self._stderr)[-4:])
                self._kill()
                raise WorkerTimeout(
                    f"{op}: the worker process did not answer within {timeout:g} s, so it was stopped (it starts "
                    f"again on the next request). If the request is just slow, raise the timeout in the Busto "
                    f"preferences (Timeouts) or with BUSTO_TIMEOUT_{'RENDER' if op == 'sample' else op.upper()}."
                    + (f" Its last messages:\n{tail}" if tail else ""))
        if not reply.get("ok", False):
            if reply.get("error_type") == "Cancelled":
                raise Cancelled(reply.get("error", "cancelled"))
            raise BackendError(_prefixed(op, str(reply.get("error", "unknown error"))))
        reply.pop("ok", None)
        return reply, out

    def load(self, progress: Progress = _noop, should_stop: Callable[[], bool] | None = None) -> dict:
        with self._lock:
            if self.info is None or self._proc is None or self._proc.poll() is not None:
                reply, _ = self._exchange({"op": "load", "checkpoint": self.settings.checkpoint,
                                           "device": self.settings.device}, None, progress, should_stop)
                self.info = reply
            return self.info

    def request(self, op: str, arrays: dict | None = None, progress: Progress = _noop,
                should_stop: Callable[[], bool] | None = None, timeout: float | None = None, **kw):
        """One request (the model is loaded first if needed). ``timeout``: seconds to wait for the reply (default
        ``settings.timeout_for(op)``)."""
        with self._lock:
            self.load(should_stop=should_stop)
            reply, out = self._exchange({"op": op, **kw}, arrays, progress, should_stop, timeout)
            return {**reply, **out}

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                try:
                    protocol.write_message(self._proc.stdin, {"op": "shutdown"})
                    self._proc.wait(timeout=DEFAULT_TIMEOUTS["shutdown"])
                except Exception:
                    pass
            self._kill()


# --------------------------------------------------------------------------------------------- cache + calls
_BACKENDS: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()


def get_backend(settings: Settings):
    """The process-wide backend for these settings (created on first use; the model loads lazily)."""
    kind = choose_kind(settings)
    key = (kind, settings.checkpoint, settings.device, settings.python, settings.site_packages)
    with _CACHE_LOCK:
        b = _BACKENDS.get(key)
        if b is None:
            b = InProcessBackend(settings) if kind == "INPROCESS" else SubprocessBackend(settings)
            _BACKENDS[key] = b
        else:
            b.settings = settings  # same model and environment; the latest timeouts and cache folder apply
        return b


def loaded_backends() -> list:
    return [b for b in _BACKENDS.values() if getattr(b, "info", None)]


#: the largest safetensors header :func:`checkpoint_mode` reads (a generator's header is a few hundred KiB)
MAX_HEADER_BYTES = 64 * 1024 * 1024


def checkpoint_mode(path: str) -> str:
    """The render mode (``"frontal"`` or ``"360"``) of a generator checkpoint: its config's ``render.mode``, read
    from the safetensors header alone (no torch, no model load). Raises :class:`BackendError` naming the file."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise ValueError(f"header of {n} bytes (not a safetensors file?)")
            header = json.loads(f.read(n))
        config = json.loads(header["__metadata__"]["config"])
        mode = config.get("render", {}).get("mode", "frontal")  # missing keys take the defaults (frontal)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
        raise BackendError(f"{path}: cannot read the generator config of this checkpoint ({exc})") from exc
    if mode not in ("frontal", "360"):
        raise BackendError(f"{path}: render.mode is {mode!r}, expected 'frontal' or '360'")
    return mode


def model_mode(settings: Settings) -> str:
    """``"frontal"`` or ``"360"``: the mode of the settings' model. A loaded model answers with its load reply
    (``info["mode"]``, from the worker or the in-process session); otherwise the checkpoint file's header says it
    (the shipped model for an empty checkpoint). ``""`` when it cannot be known without loading (the worker's
    shipped model) or the file cannot be read."""
    for key, b in list(_BACKENDS.items()):
        info = getattr(b, "info", None)
        if info and key[1] == settings.checkpoint and info.get("mode"):
            return str(info["mode"])
    path = settings.checkpoint or shipped_checkpoint(settings)
    if not path or not os.path.isfile(path):
        return ""
    try:
        return checkpoint_mode(path)
    except BackendError:
        return ""


def shutdown_all() -> None:
    with _CACHE_LOCK:
        for b in _BACKENDS.values():
            try:
                b.close()
            except Exception:
                pass
        _BACKENDS.clear()


def load(settings: Settings, progress: Progress = _noop, should_stop: Callable[[], bool] | None = None) -> dict:
    return get_backend(settings).load(progress, should_stop)


def sample(settings: Settings, spec: AvatarSpec, preview_yaws=(np.pi / 2,), preview_size: int = 128,
           progress: Progress = _noop, should_stop=None) -> dict:
    return get_backend(settings).request("sample", {"preview_yaws": np.asarray(preview_yaws, np.float64)}, progress,
                                         should_stop, avatar=spec.to_json(), preview_size=int(preview_size))


def render_frames(settings: Settings, spec: AvatarSpec, pose, expression, cam2world, intrinsics,
                  size: int | None = None, should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    arrays = {
        "pose": np.asarray(pose, np.float32).reshape(-1, 6, 3),
        "expression": np.asarray(expression, np.float32).reshape(-1, 64),
        "cam2world": np.asarray(cam2world, np.float32).reshape(-1, 4, 4),
        "intrinsics": np.asarray(intrinsics, np.float32).reshape(-1, 3, 3),
    }
    kw = {"size": int(size)} if size else {}
    return get_backend(settings).request("render", arrays, should_stop=should_stop, avatar=spec.to_json(),
                                         **kw)["rgba"]


def extract(settings: Settings, spec: AvatarSpec, resolution: int, decimate: int, colors: bool,
            level: float | str = 0.5,
            morphs: int = 0, progress: Progress = _noop, should_stop=None, texture: int = 1024) -> dict:
    """Mesh + rig (+ morphs) of an avatar; with ``colors`` also a ``texture``² colour texture baked from the neural
    renderer (per-corner ``loop_uvs``; 0 = vertex colours only). Results are cached in ``settings.cache_dir/meshes`` (keyed by the
    checkpoint file's path, size and modification time, the avatar and the options), so extracting the same avatar
    again, e.g. after reopening a .blend, is instant."""
    params = {"avatar": spec.to_json(), "resolution": int(resolution), "decimate": int(decimate),
              "colors": bool(colors), "level": level if level == "auto" else float(level), "morphs": int(morphs),
              "texture": int(texture) if colors else 0}
    path = _mesh_cache_path(settings, params)
    if path is not None and os.path.isfile(path):
        try:
            return _load_cached(path)
        except Exception:  # a damaged cache entry: extract again
            pass
    out = get_backend(settings).request("extract", None, progress, should_stop, **params)
    if path is not None:
        _save_cached(path, out)
    return out


def invert(settings: Settings, out: str, photo: str | None = None, prepared: str | None = None, index: int = 0,
           latent_steps: int = 40, tune_steps: int = 30, sr_steps: int = 30, face_steps: int = 60,
           detail_steps: int = 100, candidates: int = 8, glb: bool = False, progress: Progress = _noop,
           should_stop=None) -> dict:
    """An avatar of the person in ``photo`` (or record ``index`` of a ``prepared`` dataset folder), inverted into
    the settings' model and written to ``out`` (the worker's ``invert``): ``checkpoint``, ``body_shape``,
    ``reconstruction``, ``timings``... Load ``checkpoint`` (seed 0 and ``body_shape``) to use the avatar."""
    params = {"out": str(out), "index": int(index), "latent_steps": int(latent_steps), "tune_steps": int(tune_steps),
              "sr_steps": int(sr_steps), "face_steps": int(face_steps), "detail_steps": int(detail_steps),
              "candidates": int(candidates), "glb": bool(glb)}
    params.update({"photo": str(photo)} if photo else {"prepared": str(prepared)})
    return get_backend(settings).request("invert", None, progress, should_stop, **params)


def _mesh_cache_path(settings: Settings, params: dict) -> str | None:
    import hashlib
    import json

    if not settings.cache_dir or not settings.checkpoint or not os.path.isfile(settings.checkpoint):
        return None  # the shipped default lives in the worker's environment: no stable key here
    st = os.stat(settings.checkpoint)
    key = json.dumps({"ckpt": os.path.abspath(settings.checkpoint), "size": st.st_size, "mtime": st.st_mtime_ns,
                      **params}, sort_keys=True)
    return os.path.join(settings.cache_dir, "meshes", hashlib.sha1(key.encode()).hexdigest()[:20] + ".npz")


def _save_cached(path: str, out: dict) -> None:
    import json

    arrays = {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
    meta = {k: v for k, v in out.items() if not isinstance(v, np.ndarray)}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # caching is an optimisation; a read-only cache folder must not fail the extraction


def _load_cached(path: str) -> dict:
    import json

    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files if k != "__meta__"}
        out.update(json.loads(bytes(z["__meta__"]).decode()))
    return out
