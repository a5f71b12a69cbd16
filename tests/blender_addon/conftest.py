"""Fixtures for the add-on tests: the bpy module (skipped when missing), the add-on registered once per session
from source, a factory-fresh empty scene per test, and a random-init ``tiny`` generator checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def bpy_module():
    return pytest.importorskip("bpy", reason="the bpy module (Blender 5.0.1) is not installed")


@pytest.fixture(scope="module")
def registered(bpy_module):
    """Registered for one test module at a time, so other packages' bpy tests see a Blender without it."""
    import blender_addon

    blender_addon.register()
    yield blender_addon
    blender_addon.unregister()


@pytest.fixture
def addon(registered, bpy_module, tiny_checkpoint):
    """The registered add-on in an empty factory scene whose model is the tiny checkpoint."""
    bpy_module.ops.wm.read_factory_settings(use_empty=True)
    bpy_module.context.scene.busto.checkpoint = str(tiny_checkpoint)
    yield registered


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random-init ``tiny`` generator saved with save_generator (seeded: identical in every process)."""
    import torch

    from portrait_core.generator import Generator, generator_config, save_generator

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    torch.manual_seed(0)
    save_generator(path, Generator(generator_config("tiny")), info={"note": "random init, tests"})
    return path


class Recorder:
    """A stand-in for ``UILayout`` that records calls and checks that drawn properties exist."""

    def __init__(self, log=None, path="layout"):
        self.log = log if log is not None else []
        self.path = path
        self.enabled = True
        self.active = True
        self.alert = False
        self.scale_y = 1.0

    def _child(self, kind, *args, **kw):
        self.log.append((kind, args, kw))
        return Recorder(self.log, f"{self.path}.{kind}")

    def row(self, *a, **k):
        return self._child("row", *a, **k)

    def column(self, *a, **k):
        return self._child("column", *a, **k)

    def box(self, *a, **k):
        return self._child("box", *a, **k)

    def split(self, *a, **k):
        return self._child("split", *a, **k)

    def grid_flow(self, *a, **k):
        return self._child("grid_flow", *a, **k)

    def prop(self, data, prop, **kw):
        rna = data.bl_rna.properties
        assert prop in rna, f"{self.path}: {type(data).__name__} has no property {prop!r}"
        self.log.append(("prop", (prop,), kw))

    def operator(self, idname, **kw):
        import bpy

        cat, name = idname.split(".")
        assert hasattr(getattr(bpy.ops, cat), name), f"unknown operator {idname}"
        rna = getattr(getattr(bpy.ops, cat), name).get_rna_type().properties
        self.log.append(("operator", (idname,), kw))

        class Props:
            def __setattr__(self, key, value):
                assert key in rna, f"operator {idname} has no property {key!r}"
                object.__setattr__(self, key, value)

        return Props()

    def label(self, text="", **kw):
        self.log.append(("label", (text,), kw))

    def progress(self, **kw):
        self.log.append(("progress", (), kw))

    def template_icon(self, **kw):
        self.log.append(("template_icon", (), kw))

    def separator(self, **kw):
        self.log.append(("separator", (), kw))

    def texts(self):
        return [a[0] for kind, a, _ in self.log if kind == "label"]

    def operators(self):
        return [a[0] for kind, a, _ in self.log if kind == "operator"]

    def props(self):
        return [a[0] for kind, a, _ in self.log if kind == "prop"]


@pytest.fixture
def recorder():
    return Recorder


@pytest.fixture(scope="session")
def run_python():
    return _run_python


def _run_python(code: str, timeout: int = 300, env: dict | None = None):
    """Run ``code`` in a fresh interpreter of this venv (a fresh Blender process), from the repository root."""
    import subprocess

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=full_env)
