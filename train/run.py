"""Run folders and the one logger object (console/progress bar, log.txt, stats.jsonl, TensorBoard).

Layout of ``<run.out>/<NNNNN>-<preset>/``: ``config.json`` (the resolved TrainConfig), ``env.json`` (versions, git
revision, host, world size), ``log.txt``, ``stats.jsonl`` (one JSON line per logged step), ``tb/`` (TensorBoard
events), ``samples/`` (PNG grids), ``face_recon.pt`` (the frozen face reconstruction net, when trained on the
fly) and ``checkpoints/`` (see train/checkpoint.py). Only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from train.checkpoint import atomic_write_text, latest_checkpoint
from train.config import TrainConfig, to_json


def new_run_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.run.name:
        return out / cfg.run.name
    ids = [int(m.group(1)) for p in out.iterdir() if (m := re.match(r"^(\d{5})-", p.name))]
    return out / f"{(max(ids) + 1 if ids else 0):05d}-{cfg.preset}"


def find_resumable(cfg: TrainConfig) -> Path | None:
    """``--resume auto``: the named run folder, else the newest ``<out>/NNNNN-<preset>`` with a checkpoint."""
    out = Path(cfg.run.out)
    if cfg.run.name:
        p = out / cfg.run.name
        return p if latest_checkpoint(p / "checkpoints") else None
    if not out.is_dir():
        return None
    cands = sorted((p for p in out.iterdir() if re.match(rf"^\d{{5}}-{re.escape(cfg.preset)}$", p.name)),
                   key=lambda p: p.name)
    for p in reversed(cands):
        if latest_checkpoint(p / "checkpoints"):
            return p
    return None


def git_revision() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(world_size: int, device: str) -> dict:
    import safetensors

    env = {
        "python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
        "safetensors": safetensors.__version__, "platform": platform.platform(), "host": platform.node(),
        "git_revision": git_revision(), "world_size": world_size, "device": device,
        "cuda": torch.version.cuda, "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(), "argv": sys.argv, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime()),
    }
    return env


class Logger:
    """Rank-0 logger. On other ranks every method is a no-op."""

    def __init__(self, run_dir: Path | None, total_steps: int, start_step: int, progress: bool, tensorboard: bool,
                 enabled: bool = True):
        self.enabled = enabled and run_dir is not None
        self.run_dir = run_dir
        self.total, self.start = total_steps, start_step
        self._tb = None
        self._progress = None
        self._task = None
        self._t0 = time.time()
        if not self.enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(run_dir / "log.txt", "a", buffering=1)
        self._stats = open(run_dir / "stats.jsonl", "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                self.info("tensorboard is not installed: TensorBoard logging is off")
        if progress and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                      TextColumn("{task.fields[msg]}"), transient=False)
            self._progress.start()
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, msg="")

    def resume_at(self, step: int) -> int:
        """A resumed run replays the steps after its checkpoint: drop the ``stats.jsonl`` rows past ``step`` (and a
        torn last line) so each step appears once, and start the progress bar there. Returns the rows dropped."""
        if not self.enabled:
            return 0
        self.start = step
        if self._task is not None:
            self._progress.update(self._task, completed=step)
        path = self.run_dir / "stats.jsonl"
        self._stats.close()
        keep, dropped = [], 0
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    row_step = int(rec["step"])
                except (ValueError, KeyError, TypeError):
                    dropped += 1  # a line torn by a kill mid-write
                    continue
                if row_step > step:
                    dropped += 1
                else:
                    keep.append(line if line.endswith("\n") else line + "\n")
        if dropped:
            atomic_write_text(path, "".join(keep))
        self._stats = open(path, "a", buffering=1)
        return dropped

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        self._log.write(line + "\n")
        if self._progress is not None:
            self._progress.console.print(line)
        else:
            print(line, flush=True)

    def scalars(self, step: int, values: dict[str, float], extra: dict | None = None) -> None:
        if not self.enabled:
            return
        rec = {"step": step, "time": round(time.time() - self._t0, 3), **{k: float(v) for k, v in values.items()}}
        if extra:
            rec.update(extra)
        self._stats.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, float(v), step)

    def progress(self, step: int, msg: str = "") -> None:
        if self.enabled and self._progress is not None:
            self._progress.update(self._task, completed=step, msg=msg)

    def image(self, tag: str, step: int, grid: torch.Tensor) -> None:
        """``grid`` [3, H, W] in [-1, 1]: TensorBoard image + PNG under samples/."""
        if not self.enabled:
            return
        img = ((grid.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        if self._tb is not None:
            self._tb.add_image(tag, img, step)
        from PIL import Image

        d = self.run_dir / "samples"
        d.mkdir(exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{tag.replace('/', '_')}-{step:08d}.png")

    def close(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        self._log.close()
        self._stats.close()


def write_run_files(run_dir: Path, cfg: TrainConfig, world_size: int, device: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", to_json(cfg))
    atomic_write_text(run_dir / "env.json", json.dumps(environment(world_size, device), indent=2))


def image_grid(images: torch.Tensor, cols: int) -> torch.Tensor:
    """[N, 3, H, W] -> [3, rows*H, cols*W] (white padding)."""
    n, c, h, w = images.shape
    rows = (n + cols - 1) // cols
    out = images.new_ones(c, rows * h, cols * w)
    for i in range(n):
        r, k = divmod(i, cols)
        out[:, r * h:(r + 1) * h, k * w:(k + 1) * w] = images[i]
    return out


def default_device(spec: str) -> str:
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def rank_world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (0, 0, 1 without)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
