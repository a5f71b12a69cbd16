"""Registration: every class of the add-on's modules in order, the property pointers, and clean removal.

Nothing here imports torch or portrait_core; the model is reached lazily through :mod:`.backend`.
"""

from __future__ import annotations

import bpy

from . import backend, engine, jobs, operators, prefs, props, ui

CLASSES = (*props.CLASSES, *prefs.CLASSES, *jobs.CLASSES, *operators.CLASSES, *ui.CLASSES, *engine.CLASSES)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    props.register_pointers()
    engine.register()


def unregister():
    engine.unregister()
    props.unregister_pointers()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
    backend.shutdown_all()
