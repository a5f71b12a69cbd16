"""Getting a generator for command-line tools and the worker (a checkpoint file, the shipped default, or a
random-init preset), and Busto's one way to turn a seed into an avatar's latents (:func:`identity_for_seed`).

Which inputs a seed gives is decided by what a checkpoint *is*, never by where it lies: a checkpoint whose ``info``
says its noise latent is an appearance code draws identity, body shape and appearance from its label samplers
(:func:`find_samplers`: samplers stored with it, or the shipped samplers when its content is the shipped default's);
any other generator draws N(0, I) latents from the seed and the mean body shape.
"""

from __future__ import annotations

import hashlib
import os
import sys
from functools import lru_cache
from pathlib import Path

import torch

from portrait_core.data.samplers import LabelSampler, default_samplers_path

from .checkpoint import load_generator, silence_noise_dims
from .config import generator_config
from .generator import Generator
from .structures import Latents

__all__ = ["ASSETS_DIR", "DEFAULT_CHECKPOINT", "default_checkpoint", "default_checkpoint_path",
           "default_samplers_path", "obtain_generator", "silence_noise_dims", "uses_appearance_codes", "find_samplers", "samplers_for",
           "identity_for_seed", "parse_int_list", "with_face_texture"]

#: the folder of the shipped model's files (data only: default.safetensors, default_samplers.safetensors, ...)
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_CHECKPOINT = "default.safetensors"
#: the samplers file a training run or export writes beside its generator
SAMPLERS_FILE = "samplers.safetensors"


def default_checkpoint_path() -> Path:
    """Path of the shipped default generator checkpoint (it may be absent in a source checkout without LFS)."""
    return ASSETS_DIR / DEFAULT_CHECKPOINT


def default_checkpoint() -> Path:
    """The shipped default checkpoint (alias of :func:`default_checkpoint_path`)."""
    return default_checkpoint_path()


def obtain_generator(checkpoint: str | None, preset: str | None, device: str = "cpu", mode: str | None = None,
                     model_seed: int = 0, log=None) -> Generator:
    """Load ``checkpoint``; else the shipped default (when no preset is named and it exists); else a random-init
    generator of ``preset`` (default 'small') built with ``torch.manual_seed(model_seed)``, with a note on stderr.
    ``mode`` ('frontal'/'360') overrides the render mode of a random-init preset (a checkpoint keeps its own).
    A loaded generator carries ``checkpoint_path`` and ``checkpoint_info``; a random-init one has
    ``checkpoint_path = None``."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if checkpoint is None and preset is None and default_checkpoint_path().is_file():
        checkpoint = str(default_checkpoint_path())
        log(f"note: using the shipped default checkpoint {checkpoint}")
    if checkpoint is not None:
        g = load_generator(checkpoint, device=device)
        if mode is not None and mode != g.cfg.render.mode:
            log(f"note: {checkpoint} was trained in {g.cfg.render.mode!r} mode; --mode {mode} ignored")
        return g
    preset = preset or "small"
    overrides = {"render": {"mode": mode}} if mode else {}
    torch.manual_seed(model_seed)
    g = Generator(generator_config(preset, **overrides)).to(device).eval()
    g.checkpoint_path = None
    log(f"note: no checkpoint given (and no default checkpoint shipped yet): using a RANDOM-INIT '{preset}' "
        f"generator (model seed {model_seed}); expect smooth blobs, not portraits")
    return g


def with_face_texture(g: Generator, seed: int = 0) -> Generator:
    """``g`` itself when it has a face texture, else a copy of it with a fresh one (``FaceTextureConfig`` defaults,
    drawn with ``seed``; its last layer starts at zero): every other weight is ``g``'s, and it renders the same
    pixels until the texture is trained, e.g. by photo inversion on one identity. Keeps ``checkpoint_info`` and
    ``checkpoint_path``."""
    from .checkpoint import transfer_weights

    if g.face_texture is not None:
        return g
    torch.manual_seed(seed)
    out = Generator(generator_config(g.cfg, face_texture={"enabled": True})).to(g.device)
    transfer_weights(out, g.state_dict(), "with_face_texture")
    out.checkpoint_info = getattr(g, "checkpoint_info", {})
    out.checkpoint_path = getattr(g, "checkpoint_path", None)
    return out.train(g.training)


def uses_appearance_codes(generator_or_info) -> bool:
    """True when a loaded generator's checkpoint ``info`` (or that ``info`` dict itself) says its noise latent is an
    appearance code (``portrait_core/assets/appearance.py``) to be drawn from label samplers, not N(0, I) noise."""
    info = generator_or_info if isinstance(generator_or_info, dict) else \
        getattr(generator_or_info, "checkpoint_info", None)
    noise = (info or {}).get("noise_latent") if isinstance(info, dict) else None
    return isinstance(noise, dict) and noise.get("kind") == "appearance_code"


def find_samplers(gen_path: str | os.PathLike, given: str | os.PathLike | None = None,
                  info: dict | None = None) -> Path:
    """The label-sampler file of the generator checkpoint ``gen_path``, by what the checkpoint is:

    1. ``given`` (an explicit ``--samplers``);
    2. ``samplers.safetensors`` stored with it: beside it, or in its training run folder
       (``RUN/checkpoints/STEP/generator.safetensors``);
    3. the samplers file its ``info['samplers']`` names (a bare file name), beside it;
    4. the shipped ``default_samplers.safetensors`` when the file's content (SHA-256) is the shipped default's,
       wherever that copy lies.

    ``info`` defaults to the checkpoint's recorded info. FileNotFoundError naming the places looked at."""
    gen_path = Path(gen_path)
    if given:
        given = Path(given)
        if not given.is_file():
            raise FileNotFoundError(f"{given}: no such sampler file")
        return given
    cands = [gen_path.parent / SAMPLERS_FILE]
    if gen_path.parent.parent.name == "checkpoints":
        cands.append(gen_path.parent.parent.parent / SAMPLERS_FILE)
    if info is None:
        info = _checkpoint_info(gen_path)
    named = (info or {}).get("samplers") if isinstance(info, dict) else None
    if isinstance(named, str) and named and Path(named).name == named and named not in (".", ".."):
        cands.append(gen_path.parent / named)
    for c in cands:
        if c.is_file():
            return c
    shipped = default_checkpoint_path()
    if _same_content(gen_path, shipped) and default_samplers_path().is_file():
        return default_samplers_path()
    raise FileNotFoundError(f"{gen_path}: its noise latent is an appearance code, so it needs its label samplers "
                       f"(--samplers FILE); none at {', '.join(map(str, cands))}, and its content is not the "
                       f"shipped default model's")


def samplers_for(generator, given: str | os.PathLike | None = None) -> LabelSampler | None:
    """The label samplers a loaded generator draws its inputs from: those of :func:`find_samplers` for a checkpoint
    whose noise latent is an appearance code (loaded once per generator and file), else None (N(0, I) latents).
    ``given`` is an explicit sampler file for such a checkpoint. FileNotFoundError when one is needed and not
    found, SamplerError when the file found is not a valid sampler file."""
    if not uses_appearance_codes(generator):
        return None
    path = getattr(generator, "checkpoint_path", None)
    if path is None and not given:
        raise FileNotFoundError("this generator's noise latent is an appearance code but it was not loaded from a "
                           "checkpoint file, so its label samplers cannot be found; pass them explicitly")
    src = find_samplers(path or "", given, info=generator.checkpoint_info)
    st = src.stat()
    key = (str(src.resolve()), st.st_size, st.st_mtime_ns)
    cached = getattr(generator, "_label_samplers", None)
    if cached is None or cached[0] != key:
        cached = (key, LabelSampler.load(src))
        generator._label_samplers = cached
    return cached[1]


def identity_for_seed(generator: Generator, seed: int,
                      samplers: LabelSampler | str | os.PathLike | None = None) -> tuple[Latents, torch.Tensor]:
    """(latents [1], body_shape [1, 10]) for a seed - the one way Busto turns a seed into an avatar: drawn from
    the generator's label samplers (``samplers``: a sampler or its file; default :func:`samplers_for`) when its
    checkpoint uses appearance codes, else standard-normal latents and the mean body shape. The result depends on
    the checkpoint's content and the seed only, not on the checkpoint's path."""
    if not isinstance(samplers, LabelSampler):
        samplers = samplers_for(generator, samplers)
    if samplers is not None:
        latents, body_shape = samplers.identities(1, seed=seed)
        return latents.to(generator.device), body_shape.to(generator.device)
    return Latents.sample(1, seed=seed, device=generator.device), torch.zeros(1, 10, device=generator.device)


def _checkpoint_info(path: Path) -> dict:
    import json

    from .checkpoint import read_metadata

    try:
        return json.loads(read_metadata(path)["info"])
    except Exception:  # an unreadable checkpoint has no recorded info; loading it reports the problem
        return {}


def _same_content(a: Path, b: Path) -> bool:
    """True when files ``a`` and ``b`` hold the same bytes (size first, then SHA-256, cached per file state)."""
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    if sa.st_size != sb.st_size:
        return False
    return _sha256(str(a.resolve()), sa.st_size, sa.st_mtime_ns) == _sha256(str(b.resolve()), sb.st_size,
                                                                             sb.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
