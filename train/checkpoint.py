"""Atomic checkpoint files and folders.

A training checkpoint is a folder ``<run>/checkpoints/step-NNNNNNNN/`` holding ``state.pt`` (torch state dicts,
RNG states and the config as JSON; loadable with ``weights_only=True``) and ``generator.safetensors`` (the EMA
generator, ``portrait_core.generator.save_generator`` format). It is written into a temporary folder (each file
fsynced), then moved into place with ``os.replace``; the ``latest`` pointer file is replaced atomically the same
way. A crash at any moment therefore leaves the previous checkpoint and pointer intact.

Test hook: ``BUSTO_CKPT_SLEEP="SECONDS@N"`` sleeps SECONDS inside the N-th checkpoint write of the process (after
the files are written, before the folder is moved into place), so a test can kill the process mid-write.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

# the one atomic-write helper (re-exported: train/ writes through ck.atomic_write_text)
from portrait_core.atomic import atomic_write_bytes, atomic_write_text, fsync_dir  # noqa: F401

STATE_FORMAT = "busto-train-state"
STATE_FORMAT_VERSION = 1
STATE_FILE = "state.pt"
GENERATOR_FILE = "generator.safetensors"
LATEST = "latest"
BEST = "best.json"
_writes = 0


class CheckpointError(ValueError):
    """A missing, corrupt or foreign checkpoint; the message names the path."""


_fsync_dir = fsync_dir


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (``portrait_core.atomic``)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _maybe_sleep_for_tests() -> None:
    spec = os.environ.get("BUSTO_CKPT_SLEEP", "")
    if not spec:
        return
    seconds, _, nth = spec.partition("@")
    if not nth or int(nth) == _writes:
        print(f"[checkpoint] BUSTO_CKPT_SLEEP: sleeping {seconds}s inside write #{_writes}", flush=True)
        time.sleep(float(seconds))


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def write_checkpoint(ckpt_root: Path, step: int, state: dict, export_generator: Callable[[Path], None] | None,
                     keep_last: int, protect: set[str] = frozenset()) -> Path:
    """Write ``state`` (+ the generator export) atomically as ``ckpt_root/step-NNNNNNNN``, point ``latest`` at it,
    and delete older checkpoints beyond the last ``keep_last`` (never those in ``protect``, e.g. the best)."""
    global _writes
    _writes += 1
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = step_name(step)
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with open(tmp / STATE_FILE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if export_generator is not None:
        export_generator(tmp / GENERATOR_FILE)
        _fsync_file(tmp / GENERATOR_FILE)
    _fsync_dir(tmp)
    _maybe_sleep_for_tests()
    if final.exists():  # re-saving a step (e.g. after a resume): move the old one aside first
        trash = ckpt_root / f".old-{name}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    atomic_write_text(ckpt_root / LATEST, name + "\n")
    rotate(ckpt_root, keep_last, protect | {name})
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).exists())


def rotate(ckpt_root: Path, keep_last: int, protect: set[str]) -> None:
    ckpts = list_checkpoints(ckpt_root)
    for p in ckpts[:-keep_last] if keep_last > 0 else []:
        if p.name not in protect:
            shutil.rmtree(p, ignore_errors=True)
    for p in Path(ckpt_root).glob(".tmp-step-*"):  # leftovers of killed writes
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The checkpoint ``latest`` points to (falling back to the newest complete folder)."""
    root = Path(ckpt_root)
    ptr = root / LATEST
    if ptr.exists():
        try:  # a damaged pointer falls back to the newest complete folder
            cand = root / ptr.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError, ValueError):
            cand = None
        if cand is not None and (cand / STATE_FILE).exists():
            return cand
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def read_best(ckpt_root: Path) -> dict | None:
    """The ``best.json`` record, or None when there is none (or it is unreadable: it is rewritten at the next best)."""
    p = Path(ckpt_root) / BEST
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def write_best(ckpt_root: Path, name: str, metric: str, value: float, step: int) -> None:
    atomic_write_text(Path(ckpt_root) / BEST, json.dumps({"checkpoint": name, "metric": metric, "value": value,
                                                          "step": step}))


def resolve(path: str | os.PathLike) -> Path:
    """A run folder, a checkpoints folder or a checkpoint folder/``state.pt`` -> the checkpoint folder."""
    p = Path(path)
    if p.is_file() and p.name == STATE_FILE:
        return p.parent
    if (p / STATE_FILE).exists():
        return p
    for root in (p / "checkpoints", p):
        c = latest_checkpoint(root)
        if c is not None:
            return c
    raise CheckpointError(f"{p}: no training checkpoint found (expected a run folder, a checkpoint folder with "
                          f"{STATE_FILE}, or a {STATE_FILE} file)")


def load_state(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load ``state.pt`` of a checkpoint (``weights_only=True``) and check its format."""
    ckpt = resolve(path)
    f = ckpt / STATE_FILE
    try:
        state = torch.load(f, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{f}: cannot be read as a training state ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{f}: not a Busto training state (format "
                              f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    if state.get("format_version") != STATE_FORMAT_VERSION:
        raise CheckpointError(f"{f}: training-state format version {state.get('format_version')} is not "
                              f"{STATE_FORMAT_VERSION}")
    return state
