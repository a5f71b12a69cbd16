"""The generator API train/ uses, in one place (``portrait_core.generator``)."""

from __future__ import annotations

from portrait_core.generator import Controls, Generator, Latents, RenderOutput, generator_config, load_generator
from portrait_core.generator import save_generator as _save_generator

__all__ = ["Controls", "Generator", "Latents", "RenderOutput", "build_generator", "load_generator", "save_generator"]


def build_generator(preset: str, overrides: dict | None = None) -> Generator:
    return Generator(generator_config(preset, **(overrides or {})))


def save_generator(path, G, info: dict | None = None) -> None:
    _save_generator(path, G, info=info)
