"""Fixtures for the data tests: one small synthetic dataset rendered once per session (Blender in a worker)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

HAS_BPY = importlib.util.find_spec("bpy") is not None  # checked without importing bpy into pytest


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """8 images at 32x32 (face crops 32x32), frontal, seed 7, with meshes; returns (root, seconds)."""
    if not HAS_BPY:
        pytest.skip("the synthetic renderer needs the bpy module")
    from portrait_core.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "ds"
    t0 = time.time()
    synthesize(root, 8, resolution=32, face_resolution=32, seed=7, workers=1, meshes=True, progress=False)
    return root, time.time() - t0
