"""Getting a generator for command-line tools: a checkpoint file, the shipped default, or a random-init preset."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .checkpoint import load_generator
from .config import generator_config
from .generator import Generator

__all__ = ["DEFAULT_CHECKPOINT", "obtain_generator", "parse_int_list"]

#: Where the shipped default checkpoint lives once one exists.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "generator.safetensors"


def obtain_generator(checkpoint: str | None, preset: str | None, device: str = "cpu", mode: str | None = None,
                     model_seed: int = 0, log=None) -> Generator:
    """Load ``checkpoint``; else the shipped default (when no preset is named and it exists); else a random-init
    generator of ``preset`` (default 'small') built with ``torch.manual_seed(model_seed)``, with a note on stderr.
    ``mode`` ('frontal'/'360') overrides the render mode of a random-init preset (a checkpoint keeps its own)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if checkpoint is None and preset is None and DEFAULT_CHECKPOINT.is_file():
        checkpoint = str(DEFAULT_CHECKPOINT)
    if checkpoint is not None:
        g = load_generator(checkpoint, device=device)
        if mode is not None and mode != g.cfg.render.mode:
            log(f"note: {checkpoint} was trained in {g.cfg.render.mode!r} mode; --mode {mode} ignored")
        return g
    preset = preset or "small"
    overrides = {"render": {"mode": mode}} if mode else {}
    torch.manual_seed(model_seed)
    g = Generator(generator_config(preset, **overrides)).to(device).eval()
    log(f"note: no checkpoint given (and no default checkpoint shipped yet): using a RANDOM-INIT '{preset}' "
        f"generator (model seed {model_seed}); expect smooth blobs, not portraits")
    return g


def parse_int_list(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part.split("-", 1) if not part.startswith("-") else ("-" + part[1:].split("-", 1)[0],
                                                                          part[1:].split("-", 1)[1])
            lo_i, hi_i = int(lo), int(hi)
            if hi_i < lo_i:
                raise ValueError(f"bad range {part!r}: end before start")
            out.extend(range(lo_i, hi_i + 1))
        else:
            out.append(int(part))
    if not out:
        raise ValueError(f"no integers in {text!r}")
    return out
