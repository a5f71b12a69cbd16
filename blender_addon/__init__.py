"""Busto: animatable 3D-aware portrait avatars in Blender (extension entry point).

Registration lives in :mod:`.addon`; importing this package does not import bpy, so the numpy-only
:mod:`.convert` and :mod:`.protocol` modules can be used (and tested) outside Blender.
"""


def register():
    from . import addon

    addon.register()


def unregister():
    from . import addon

    addon.unregister()
