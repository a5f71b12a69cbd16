"""The animatable portrait generator: configs, networks, pure rendering functions, the pipeline, avatars and
checkpoints. See docs/generator.md."""

from .avatar import Avatar
from .checkpoint import CheckpointError, load_generator, save_generator
from .config import GeneratorConfig, generator_config
from .generator import Generator
from .structures import Controls, Latents, RenderOutput

__all__ = [
    "Avatar", "CheckpointError", "Controls", "Generator", "GeneratorConfig", "Latents", "RenderOutput",
    "generator_config", "load_generator", "save_generator",
]
