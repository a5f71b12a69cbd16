"""Rotations, cameras, rays and keyframe/label converters (pure functions on tensors).

Modules: ``rotations`` (torch), ``camera`` (torch: ``Camera``), ``rotations_np`` and ``keyframes`` (numpy only,
importable without torch, e.g. from the Blender add-on). This package ``__init__`` imports nothing, so that
``import portrait_core.geometry.keyframes`` stays torch-free. See docs/cameras-and-keyframes.md.
"""
