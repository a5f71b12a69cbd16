"""The generator API train/ uses, in one place (``portrait_core.generator``)."""

from __future__ import annotations

from portrait_core.generator.config import generator_config
from portrait_core.generator.generator import Generator
from portrait_core.generator.structures import Controls, Latents, RenderOutput

__all__ = ["Controls", "Generator", "Latents", "RenderOutput", "build_generator", "load_generator", "save_generator"]


def build_generator(preset: str, overrides: dict | None = None) -> Generator:
    return Generator(generator_config(preset, **(overrides or {})))


def save_generator(path, G, metadata=None) -> None:
    from portrait_core.generator.checkpoint import save_generator as _save

    _save(path, G, metadata=metadata)


def load_generator(path, device="cpu") -> Generator:
    from portrait_core.generator.checkpoint import load_generator as _load

    return _load(path, device=device)
