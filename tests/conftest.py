"""Shared test setup: Blender user dirs in a temp folder (before any bpy import), CPU, fixed threads."""

from __future__ import annotations

import os
import tempfile

# bpy writes preferences and extensions to the user config dir; keep tests out of the real one.
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="busto-blender-user-"))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


@pytest.fixture(scope="session")
def keyframes_dir():
    """The official AniPortraitGAN keyframes (tests/data copy, MIT licence)."""
    from pathlib import Path

    return Path(__file__).parent / "data" / "aniportraitgan-keyframes"
