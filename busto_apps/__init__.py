"""Applications built on both ``portrait_core`` (the model) and ``blender_addon`` (the Blender add-on).

The layers, bottom to top: ``portrait_core`` (no Blender) <- ``blender_addon`` (Blender, reaches the model through
its backends) <- ``busto_apps`` (headless Blender programs that drive the add-on through its operators and public
functions). Nothing below imports ``busto_apps``; the ``python -m portrait_core demo`` / ``bench-blender`` commands
are aliases that name these modules by string.

    python -m busto_apps demo --out out/demo            # the end-to-end demo (docs/demo.md)
    python -m busto_apps bench-blender --out out/bench  # the add-on workflow, timed (docs/blender-addon.md)
"""
