"""Getting a generator for command-line tools: a checkpoint file, the shipped default, or a random-init preset."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .checkpoint import load_generator
from .config import generator_config
from .generator import Generator
from .structures import Latents

__all__ = ["default_checkpoint", "obtain_generator", "identity_for_seed", "parse_int_list"]


def default_checkpoint() -> Path:
    """The shipped default checkpoint (``portrait_core.assets``), which may be absent in a source checkout."""
    try:
        from portrait_core.assets import default_checkpoint_path
    except ImportError:
        return Path(__file__).resolve().parents[1] / "assets" / "default.safetensors"
    return default_checkpoint_path()


def obtain_generator(checkpoint: str | None, preset: str | None, device: str = "cpu", mode: str | None = None,
                     model_seed: int = 0, log=None) -> Generator:
    """Load ``checkpoint``; else the shipped default (when no preset is named and it exists); else a random-init
    generator of ``preset`` (default 'small') built with ``torch.manual_seed(model_seed)``, with a note on stderr.
    ``mode`` ('frontal'/'360') overrides the render mode of a random-init preset (a checkpoint keeps its own).
    A loaded shipped default is marked ``generator.is_shipped_default = True``."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    is_default = False
    if checkpoint is None and preset is None and default_checkpoint().is_file():
        checkpoint, is_default = str(default_checkpoint()), True
        log(f"note: using the shipped default checkpoint {checkpoint}")
    if checkpoint is not None:
        g = load_generator(checkpoint, device=device)
        g.is_shipped_default = is_default
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


def identity_for_seed(generator: Generator, seed: int) -> tuple[Latents, torch.Tensor]:
    """(latents [1], body_shape [1, 10]) for a seed: the default model's label samplers when the generator is the
    shipped default (its identities and appearance codes come from its training labels), else standard-normal
    latents and the mean body shape."""
    if getattr(generator, "is_shipped_default", False):
        try:
            from portrait_core.assets import DefaultSamplers

            latents, body_shape = DefaultSamplers.load().identities(1, seed=seed)
            return latents.to(generator.device), body_shape.to(generator.device)
        except (ImportError, ValueError, OSError):
            pass
    return Latents.sample(1, seed=seed, device=generator.device), torch.zeros(1, 10, device=generator.device)


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
