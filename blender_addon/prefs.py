"""Add-on preferences (checkpoint, device, backend, worker Python, cache folder, worker timeouts) and how they are
resolved.

Environment variables override the preferences, which is what render farms need (one .blend, many machines):
``BUSTO_CHECKPOINT``, ``BUSTO_DEVICE``, ``BUSTO_BACKEND`` (inprocess/subprocess/auto), ``BUSTO_PYTHON``,
``BUSTO_SITE_PACKAGES``, ``BUSTO_CACHE``, ``BUSTO_TIMEOUT_LOAD``, ``BUSTO_TIMEOUT_RENDER``, ``BUSTO_TIMEOUT_EXTRACT``
(seconds).
"""

from __future__ import annotations

import os

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty

from . import backend as backend_mod

BACKEND_ITEMS = [
    ("AUTO", "Automatic", "In-process when torch and portrait_core import inside Blender, else the worker"),
    ("INPROCESS", "In-process", "Import torch and portrait_core inside Blender (optionally from a site-packages "
                                "folder set below)"),
    ("SUBPROCESS", "Worker process", "Run 'python -m portrait_core serve' with the Python named below"),
]
DEVICE_ITEMS = [("cpu", "CPU", "Run the model on the CPU"), ("cuda", "CUDA", "Run the model on an NVIDIA GPU")]


class BustoPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    checkpoint: StringProperty(
        name="Checkpoint", subtype="FILE_PATH", default="",
        description="Generator checkpoint (.safetensors). Empty: the model shipped with Busto "
                    "(portrait_core/assets/)")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="cpu")
    backend: EnumProperty(name="Backend", items=BACKEND_ITEMS, default="AUTO")
    python: StringProperty(
        name="Worker Python", subtype="FILE_PATH", default="",
        description="Python interpreter of an environment with Busto installed (e.g. .venv/bin/python); "
                    "used by the worker-process backend")
    site_packages: StringProperty(
        name="Site-packages", subtype="DIR_PATH", default="",
        description="Optional: a site-packages folder (Python 3.11) holding torch and portrait_core, added to "
                    "Blender's import path for the in-process backend")
    cache_dir: StringProperty(
        name="Cache folder", subtype="DIR_PATH", default="",
        description="Extracted meshes are cached here (empty: the extension's user folder)")
    timeout_load: FloatProperty(
        name="Load", default=backend_mod.DEFAULT_TIMEOUTS["load"], min=1.0, soft_max=3600.0, unit="TIME_ABSOLUTE",
        description="Seconds the worker process may take to start and load the model before it is stopped")
    timeout_render: FloatProperty(
        name="Sample / Render", default=backend_mod.DEFAULT_TIMEOUTS["render"], min=1.0, soft_max=3600.0,
        unit="TIME_ABSOLUTE",
        description="Seconds the worker process may take to sample an avatar or render a frame before it is stopped "
                    "(a stuck worker then fails the frame instead of hanging a render)")
    timeout_extract: FloatProperty(
        name="Extract", default=backend_mod.DEFAULT_TIMEOUTS["extract"], min=1.0, soft_max=7200.0,
        unit="TIME_ABSOLUTE", description="Seconds the worker process may take to extract a mesh before it is stopped")

    def draw(self, context):
        draw_preferences(self.layout, self)


def draw_preferences(layout, prefs) -> None:
    col = layout.column()
    col.prop(prefs, "checkpoint")
    row = col.row()
    row.prop(prefs, "device", expand=True)
    col.prop(prefs, "backend")
    col.prop(prefs, "python")
    col.prop(prefs, "site_packages")
    col.prop(prefs, "cache_dir")
    row = col.row(heading="Timeouts")
    for name in ("timeout_load", "timeout_render", "timeout_extract"):
        row.prop(prefs, name)
    box = layout.box()
    for line in backend_mod.environment_report(resolve_from(prefs)).splitlines():
        box.label(text=line)


class _Defaults:
    """Stand-in when the preferences are unreachable (the add-on imported outside Blender's add-on system)."""

    checkpoint = ""
    device = "cpu"
    backend = "AUTO"
    python = ""
    site_packages = ""
    cache_dir = ""
    timeout_load = backend_mod.DEFAULT_TIMEOUTS["load"]
    timeout_render = backend_mod.DEFAULT_TIMEOUTS["render"]
    timeout_extract = backend_mod.DEFAULT_TIMEOUTS["extract"]


def get_prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else _Defaults()


def resolve_from(prefs, scene=None, rig=None) -> backend_mod.Settings:
    """Backend settings. The checkpoint is the first set of: ``BUSTO_CHECKPOINT``, the rig's (the one its avatar
    was sampled from), the scene's, the preference; empty means the model shipped with Busto."""
    env = os.environ
    checkpoint = env.get("BUSTO_CHECKPOINT") or (rig.busto.checkpoint if rig is not None else "") \
        or (scene.busto.checkpoint if scene is not None else "") or prefs.checkpoint
    return backend_mod.Settings(
        checkpoint=bpy.path.abspath(checkpoint) if checkpoint else "",
        device=env.get("BUSTO_DEVICE", prefs.device),
        backend=env.get("BUSTO_BACKEND", prefs.backend).upper(),
        python=bpy.path.abspath(env.get("BUSTO_PYTHON", prefs.python)),
        site_packages=bpy.path.abspath(env.get("BUSTO_SITE_PACKAGES", prefs.site_packages)),
        cache_dir=bpy.path.abspath(env.get("BUSTO_CACHE", prefs.cache_dir)) or _default_cache(),
        load_timeout=_seconds(env, "BUSTO_TIMEOUT_LOAD", getattr(prefs, "timeout_load", 0.0)),
        render_timeout=_seconds(env, "BUSTO_TIMEOUT_RENDER", getattr(prefs, "timeout_render", 0.0)),
        extract_timeout=_seconds(env, "BUSTO_TIMEOUT_EXTRACT", getattr(prefs, "timeout_extract", 0.0)),
    )


def _seconds(env, name: str, fallback: float) -> float:
    """A positive number of seconds from the environment, else the preference (0: the backend's default)."""
    try:
        value = float(env.get(name, ""))
    except ValueError:
        return float(fallback)
    return value if value > 0 and value == value else float(fallback)


def resolve(context=None, scene=None, rig=None) -> backend_mod.Settings:
    context = context or bpy.context
    return resolve_from(get_prefs(context), scene if scene is not None else context.scene, rig)


def _default_cache() -> str:
    try:
        return bpy.utils.extension_path_user(__package__, path="cache", create=True)
    except ValueError:  # not installed as an extension (legacy add-on or a plain import)
        return bpy.utils.user_resource("DATAFILES", path="busto", create=True)


CLASSES = (BustoPreferences,)
