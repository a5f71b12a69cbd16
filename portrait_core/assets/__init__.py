"""Busto's shipped default model: ``default.safetensors`` (a ``portrait_core.generator`` checkpoint, < 25 MiB),
its label samplers ``default_samplers.safetensors`` and ``MODEL_CARD.md``.

>>> from portrait_core.assets import load_default
>>> G, samplers = load_default()
>>> latents, body_shape = samplers.identities(4, seed=0)
>>> camera, pose = samplers.views(4, seed=0)
>>> expression = samplers.expressions(4, seed=0)

The sampler tables are the training labels of the default model (SynthPortrait): (identity, body shape) rows are
drawn jointly, appearance codes (the generator's ``noise`` input, see :mod:`portrait_core.assets.appearance`)
independently of them, (portrait camera, pose) jointly, expressions independently - the same factorisation as the
GAN training's fake-input sampler. Loading needs only torch and safetensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["ASSETS_DIR", "DEFAULT_CHECKPOINT", "DEFAULT_SAMPLERS", "SAMPLER_FORMAT", "SamplerError",
           "DefaultSamplers", "default_checkpoint_path", "default_samplers_path", "load_default",
           "uses_appearance_codes", "find_samplers"]

ASSETS_DIR = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = "default.safetensors"
DEFAULT_SAMPLERS = "default_samplers.safetensors"
SAMPLER_FORMAT = "busto-label-samplers"
SAMPLER_FORMAT_VERSION = "1"
#: tensor name -> trailing shape
SAMPLER_TENSORS = {"identity": (80,), "body_shape": (10,), "appearance": (80,), "camera": (25,), "pose": (6, 3),
                   "expression": (64,)}


class SamplerError(ValueError):
    """A sampler file is missing, of another format, or holds tensors of the wrong shape."""


def uses_appearance_codes(generator) -> bool:
    """True when a loaded generator's checkpoint ``info`` says its noise latent is an appearance code
    (``portrait_core/assets/appearance.py``) to be drawn from label samplers, not N(0, I) noise."""
    info = getattr(generator, "checkpoint_info", None) or {}
    return (info.get("noise_latent") or {}).get("kind") == "appearance_code"


def find_samplers(gen_path: str | os.PathLike, given: str | os.PathLike | None = None) -> Path:
    """The label-sampler file of an appearance-code generator: ``given``, else ``samplers.safetensors`` beside the
    generator or in its run folder (``RUN/checkpoints/STEP/generator.safetensors``), else the shipped
    ``default_samplers.safetensors`` for the shipped model. FileNotFoundError naming the places looked at."""
    gen_path = Path(gen_path)
    if given:
        cands = [Path(given)]
    else:
        cands = [gen_path.parent / "samplers.safetensors", gen_path.parent.parent.parent / "samplers.safetensors"]
        if gen_path.resolve() == default_checkpoint_path().resolve():
            cands.append(default_samplers_path())
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{gen_path}: its noise latent is an appearance code, so it needs its label samplers; "
                            f"none at {', '.join(map(str, cands))}")


def default_checkpoint_path() -> Path:
    """Path of the shipped default generator checkpoint (it may be absent in a source checkout without LFS)."""
    return ASSETS_DIR / DEFAULT_CHECKPOINT


def default_samplers_path() -> Path:
    """Path of the default model's label-sampler tables."""
    return ASSETS_DIR / DEFAULT_SAMPLERS


@dataclass
class DefaultSamplers:
    """Empirical label tables. identity [N, 80], body_shape [N, 10], appearance [N, 80] (one row per training
    identity); camera [M, 25] (portrait-camera labels), pose [M, 6, 3] (one row per training image);
    expression [M, 64]."""

    identity: Tensor
    body_shape: Tensor
    appearance: Tensor
    camera: Tensor
    pose: Tensor
    expression: Tensor

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> DefaultSamplers:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path) if path is not None else default_samplers_path()
        if not path.is_file():
            raise SamplerError(f"{path}: no such sampler file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except Exception as e:
            raise SamplerError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {e})") from e
        if meta.get("format") != SAMPLER_FORMAT or meta.get("format_version") != SAMPLER_FORMAT_VERSION:
            raise SamplerError(f"{path}: format {meta.get('format')!r} v{meta.get('format_version')!r}, expected "
                               f"{SAMPLER_FORMAT!r} v{SAMPLER_FORMAT_VERSION!r}")
        return cls.from_tensors(tensors, where=str(path))

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], where: str = "samplers") -> DefaultSamplers:
        for name, trailing in SAMPLER_TENSORS.items():
            t = tensors.get(name)
            if t is None:
                raise SamplerError(f"{where}: missing tensor {name!r}")
            if t.dim() != 1 + len(trailing) or tuple(t.shape[1:]) != trailing or t.shape[0] < 1:
                raise SamplerError(f"{where}: tensor {name!r} has shape {list(t.shape)}, expected [N, "
                                   f"{', '.join(map(str, trailing))}]")
            if not torch.isfinite(t).all():
                raise SamplerError(f"{where}: tensor {name!r} contains NaN or inf")
        for group in (("identity", "body_shape", "appearance"), ("camera", "pose")):
            sizes = {tensors[k].shape[0] for k in group}
            if len(sizes) != 1:
                raise SamplerError(f"{where}: tensors {group} must have the same number of rows, got {sizes}")
        return cls(**{k: tensors[k].float() for k in SAMPLER_TENSORS})

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: getattr(self, k).detach().float().contiguous() for k in SAMPLER_TENSORS}, str(path),
                  metadata={"format": SAMPLER_FORMAT, "format_version": SAMPLER_FORMAT_VERSION})
        return path

    @staticmethod
    def _rows(n: int, size: int, g: torch.Generator) -> Tensor:
        return torch.randint(size, (n,), generator=g)

    def identities(self, n: int, seed: int | None = None):
        """``(Latents, body_shape [n, 10])``: identity and body shape drawn jointly from one training identity,
        the appearance code (``Latents.noise``) from another."""
        from portrait_core.generator import Latents

        g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % (2 ** 62))
        i = self._rows(n, self.identity.shape[0], g)
        j = self._rows(n, self.appearance.shape[0], g)
        return Latents(self.identity[i].clone(), self.appearance[j].clone()), self.body_shape[i].clone()

    def views(self, n: int, seed: int | None = None):
        """``(Camera, pose [n, 6, 3])`` drawn jointly from training images (portrait camera with the portrait
        depth range)."""
        from portrait_core import conventions as C
        from portrait_core.geometry.camera import Camera

        g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % (2 ** 62))
        i = self._rows(n, self.camera.shape[0], g)
        cam = Camera.from_label25(self.camera[i])
        r = (cam.origin - cam.origin.new_tensor(C.PORTRAIT_LOOK_AT)).norm(dim=-1)
        return cam.with_near_far(r - C.PORTRAIT_DEPTH_HALF_RANGE, r + C.PORTRAIT_DEPTH_HALF_RANGE), \
            self.pose[i].clone()

    def expressions(self, n: int, seed: int | None = None) -> Tensor:
        """[n, 64] expressions drawn from training images."""
        g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % (2 ** 62))
        return self.expression[self._rows(n, self.expression.shape[0], g)].clone()


def load_default(device: str | torch.device = "cpu", checkpoint: str | os.PathLike | None = None,
                 samplers: str | os.PathLike | None = None):
    """``(Generator, DefaultSamplers)`` of the shipped default model (or of ``checkpoint``/``samplers``)."""
    from portrait_core.generator import load_generator

    G = load_generator(checkpoint or default_checkpoint_path(), device=device)
    return G, DefaultSamplers.load(samplers)
