"""Sidebar text fits the default sidebar width: every label, button and property name of the Busto panels, drawn
by real bpy 5.0.1 and measured with Blender's own UI font (``blf``), fits the space Blender's layout gives it.

The space, from Blender's layout code: the sidebar is ``UI_SIDEBAR_PANEL_WIDTH`` = 220 px wide (Blender 4.2-4.x;
newer builds use 280), less the category tab column (20 px) and the panel margins (2 x 12 px): **176 px of content**.
A column gives an item all of it; a row shares it equally between its items (icon-only buttons take 24 px); a
``grid_flow`` shares it between its columns; a string/pointer property drawn with a name puts the name in a third
of the width (``w_hint / 3``, the field gets the rest). That model reproduces the truncations a user saw at the
default width ("Chec…" for the checkpoint field, "Backend: Su…" beside "Device: CPU"), which the first test checks.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.blender

SIDEBAR_CONTENT_PX = 220 - 20 - 2 * 12
PROPERTIES_CONTENT_PX = 340 - 2 * 12  # the Properties editor's panels (UI_PANEL_WIDTH)
TEXT_MARGIN_PX = 10  # text inset inside a widget, both sides
ICON_PX = 20
ICON_ONLY_PX = 24
NUMBER_VALUE_PX = 40  # ": 0.700" after a number field's name
CHECKBOX_PX = 20


def _text_px(text: str) -> float:
    import blf

    blf.size(0, 11)  # UI_DEFAULT_TEXT_POINTS at a UI scale of 1
    return blf.dimensions(0, text)[0]


class Layout:
    """A UILayout stand-in that keeps the tree: containers and their items, in order."""

    def __init__(self, kind="column", **kw):
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "kw", kw)
        object.__setattr__(self, "items", [])

    def __setattr__(self, key, value):  # enabled, active, alert, scale_y, use_property_split, ...
        pass

    def _child(self, kind, **kw):
        child = Layout(kind, **kw)
        self.items.append(child)
        return child

    def row(self, **kw):
        return self._child("row", **kw)

    def column(self, **kw):
        return self._child("column", **kw)

    def box(self, **kw):
        return self._child("box", **kw)

    def split(self, **kw):
        return self._child("split", **kw)

    def grid_flow(self, **kw):
        return self._child("grid_flow", **kw)

    def label(self, text="", icon="NONE", **kw):
        self.items.append(("label", text, icon != "NONE"))

    def operator(self, idname, text=None, icon="NONE", **kw):
        import bpy

        cat, name = idname.split(".")
        op = getattr(getattr(bpy.ops, cat), name)
        self.items.append(("operator", op.get_rna_type().name if text is None else text, icon != "NONE"))

        class Props:
            def __setattr__(self, key, value):
                pass

        return Props()

    def prop(self, data, prop, text=None, icon="NONE", index=None, **kw):
        rna = data.bl_rna.properties[prop]
        name = rna.name if text is None else text
        self.items.append(("prop", name, rna.type, getattr(rna, "is_array", False) and index in (None, -1),
                           rna.subtype))

    def progress(self, text="", **kw):
        self.items.append(("label", text, False))

    def template_icon(self, **kw):
        pass

    def separator(self, **kw):
        pass


def _need_px(item) -> tuple[str, float, float]:
    """(text, pixels it needs, fraction of its cell available to it)."""
    if item[0] in ("label", "operator"):
        _, text, icon = item
        if not text:
            return text, (ICON_ONLY_PX if icon else 0), 1.0
        return text, _text_px(text) + TEXT_MARGIN_PX + (ICON_PX if icon else 0), 1.0
    _, name, kind, is_array, subtype = item
    if not name:
        return name, 0, 1.0
    if kind == "BOOLEAN":
        return name, _text_px(name) + TEXT_MARGIN_PX + CHECKBOX_PX, 1.0
    if kind in ("INT", "FLOAT") and not is_array:
        return name, _text_px(name) + TEXT_MARGIN_PX + NUMBER_VALUE_PX, 1.0
    if is_array:  # the name is a label above the fields
        return name, _text_px(name) + TEXT_MARGIN_PX, 1.0
    return name, _text_px(name) + TEXT_MARGIN_PX, 1.0 / 3.0  # string / pointer / enum: name beside the field


def overflows(layout: Layout, width: float) -> list[str]:
    """The items of ``layout`` whose text does not fit, as 'text' (needs N px, has M px)."""
    bad = []
    items = layout.items
    if layout.kind == "box":
        width -= 12
    if layout.kind in ("row", "split") and items:
        fixed = [it for it in items if not isinstance(it, Layout) and it[0] != "prop" and not it[1] and it[2]]
        rest = max(1, len(items) - len(fixed))
        cell = (width - ICON_ONLY_PX * len(fixed)) / rest
        if layout.kind == "split" and "factor" in layout.kw and len(items) == 2:
            cells = [width * layout.kw["factor"], width * (1 - layout.kw["factor"])]
        else:
            cells = [ICON_ONLY_PX if it in fixed else cell for it in items]
    elif layout.kind == "grid_flow":
        cols = layout.kw.get("columns", 1) or 1
        cells = [width / cols] * len(items)
    else:
        cells = [width] * len(items)
    for it, w in zip(items, cells):
        if isinstance(it, Layout):
            bad += overflows(it, w)
            continue
        text, need, share = _need_px(it)
        if need > w * share + 0.5:
            bad.append(f"{text!r} needs {need:.0f} px, has {w * share:.0f} px")
    return bad


def _draw(bpy, name) -> Layout:
    panel = getattr(bpy.types, name)
    stub = type("Stub", (), {"layout": Layout("layout")})()
    panel.draw(stub, bpy.context)
    return stub.layout


SIDEBAR = ("BUSTO_PT_model", "BUSTO_PT_avatar", "BUSTO_PT_geometry", "BUSTO_PT_rig", "BUSTO_PT_animate",
           "BUSTO_PT_render")


def _all_overflows(bpy) -> list[str]:
    bad = []
    for name in SIDEBAR:
        bad += [f"{name}: {b}" for b in overflows(_draw(bpy, name), SIDEBAR_CONTENT_PX)]
    bpy.context.scene.render.engine = "BUSTO_NEURAL"
    bad += [f"BUSTO_PT_engine_settings: {b}"
            for b in overflows(_draw(bpy, "BUSTO_PT_engine_settings"), PROPERTIES_CONTENT_PX)]
    return bad


def test_the_width_model_reproduces_the_reported_truncations(registered, bpy_module):
    row = Layout("column").row()
    row.label(text="Device: CPU")
    row.label(text="Backend: Subprocess")
    assert overflows(row, SIDEBAR_CONTENT_PX) == [
        f"'Backend: Subprocess' needs {_text_px('Backend: Subprocess') + TEXT_MARGIN_PX:.0f} px, has 88 px"]
    col = Layout("column")
    col.prop(bpy_module.context.scene.busto, "checkpoint", text="Checkpoint")
    assert len(overflows(col, SIDEBAR_CONTENT_PX)) == 1  # "Chec…"
    col = Layout("column")
    col.prop(bpy_module.context.scene.busto, "checkpoint", text="")
    assert overflows(col, SIDEBAR_CONTENT_PX) == []


def _canonical_joints():
    import torch

    from portrait_core.body.model import BodyModel

    return BodyModel.synthetic().canonical(torch.zeros(1, 10)).joints[0].double().numpy()


def test_sidebar_text_fits_the_default_width(addon, bpy_module, monkeypatch):
    bpy = bpy_module
    bad = _all_overflows(bpy)
    assert bad == [], "\n".join(bad)  # a checkpoint set, no avatar
    bpy.context.scene.busto.checkpoint = ""  # the shipped model (or the 'none shipped' warning)
    rt = bpy.context.window_manager.busto
    rt.model_status, rt.model_device = "default model, 128 px, frontal mode", "cpu"
    bad = _all_overflows(bpy)
    assert bad == [], "\n".join(bad)
    scene_mod = addon.scene
    for i in range(2):  # two avatars: the 'acts on the active one' note
        rig = scene_mod.create_rig(bpy.context, f"Busto avatar {i}", _canonical_joints())
    bpy.context.view_layer.objects.active = rig
    mesh = bpy.data.objects.new("Busto avatar 1 mesh", bpy.data.meshes.new("m"))
    bpy.context.scene.collection.objects.link(mesh)
    rig.busto.mesh = mesh
    rig.busto.show_full_expression = True
    bad = _all_overflows(bpy)
    assert bad == [], "\n".join(bad)
    for backend in ("AUTO", "INPROCESS", "SUBPROCESS"):
        monkeypatch.setenv("BUSTO_BACKEND", backend)
        bad = _all_overflows(bpy)
        assert bad == [], backend + ": " + "\n".join(bad)
