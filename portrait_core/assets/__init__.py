"""Busto's shipped default model - data only: ``default.safetensors`` (a ``portrait_core.generator`` checkpoint,
< 25 MiB), its label samplers ``default_samplers.safetensors`` and ``MODEL_CARD.md``.

>>> from portrait_core.assets import load_default
>>> G, samplers = load_default()
>>> latents, body_shape = samplers.identities(4, seed=0)
>>> camera, pose = samplers.views(4, seed=0)
>>> expression = samplers.expressions(4, seed=0)

The logic lives elsewhere and is re-exported here for compatibility: the sampler class and its file format in
:mod:`portrait_core.data.samplers` (``DefaultSamplers`` is :class:`~portrait_core.data.samplers.LabelSampler`), and
which samplers a checkpoint uses (by what it is, not where it lies) in :mod:`portrait_core.generator.loading`.
Names load lazily, so ``portrait_core.assets.appearance`` stays light.
"""

from __future__ import annotations

import importlib
import os

__all__ = ["ASSETS_DIR", "DEFAULT_CHECKPOINT", "DEFAULT_SAMPLERS", "SAMPLER_FORMAT", "SamplerError",
           "DefaultSamplers", "default_checkpoint_path", "default_samplers_path", "load_default",
           "uses_appearance_codes", "find_samplers"]

_LAZY = {
    "ASSETS_DIR": ("portrait_core.generator.loading", "ASSETS_DIR"),
    "DEFAULT_CHECKPOINT": ("portrait_core.generator.loading", "DEFAULT_CHECKPOINT"),
    "default_checkpoint_path": ("portrait_core.generator.loading", "default_checkpoint_path"),
    "uses_appearance_codes": ("portrait_core.generator.loading", "uses_appearance_codes"),
    "find_samplers": ("portrait_core.generator.loading", "find_samplers"),
    "DEFAULT_SAMPLERS": ("portrait_core.data.samplers", "DEFAULT_SAMPLERS"),
    "SAMPLER_FORMAT": ("portrait_core.data.samplers", "SAMPLER_FORMAT"),
    "SamplerError": ("portrait_core.data.samplers", "SamplerError"),
    "DefaultSamplers": ("portrait_core.data.samplers", "LabelSampler"),
    "default_samplers_path": ("portrait_core.data.samplers", "default_samplers_path"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_default(device="cpu", checkpoint: str | os.PathLike | None = None,
                 samplers: str | os.PathLike | None = None):
    """``(Generator, LabelSampler)`` of the shipped default model (or of ``checkpoint``, with ``samplers`` or the
    samplers that belong to it)."""
    from portrait_core.data.samplers import LabelSampler
    from portrait_core.generator import load_generator
    from portrait_core.generator.loading import default_checkpoint_path, samplers_for

    G = load_generator(checkpoint or default_checkpoint_path(), device=device)
    found = samplers_for(G, samplers)
    return G, found if found is not None else LabelSampler.load(samplers)
