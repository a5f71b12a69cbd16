"""Synthetic portrait renderer (Blender Cycles on the CPU through the bpy module).

Only this package imports bpy, and only inside the worker processes (``scene.py``); importing
``portrait_core.data.synth`` itself is cheap and bpy-free.
"""

from .render import SynthConfig, synthesize

__all__ = ["SynthConfig", "synthesize"]
