"""The import direction of ARCHITECTURE.md: portrait_core never imports train or bpy (except the data
renderer, lazily); train never imports bpy or blender_addon."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def _violations(package: str, banned: set[str], allowed_files: set[str] = frozenset()) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if any(rel.startswith(a) for a in allowed_files):
            continue
        bad += [f"{rel}:{line} imports {mod}" for mod, line in _imports(path) if mod in banned]
    return bad


def test_portrait_core_imports_neither_train_nor_blender():
    assert _violations("portrait_core", {"train", "blender_addon", "bpy", "bmesh", "mathutils", "bpy_extras",
                                         "busto_apps"},
                       allowed_files={"portrait_core/data/synth/"}) == []


def test_nothing_below_the_apps_imports_them():
    """busto_apps (the demo, the Blender bench) sits above portrait_core and the add-on: neither imports it."""
    for package in ("portrait_core", "blender_addon", "train"):
        assert _violations(package, {"busto_apps"}) == [], package


def test_apps_use_only_public_names_of_the_addon_and_the_core():
    """No ``obj._private`` attribute of another module's objects in busto_apps (``self._x`` is the module's own)."""
    bad = []
    for path in sorted((ROOT / "busto_apps").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name}" for a in node.names
                        if a.name.startswith("_") and node.module.split(".")[0] in ("portrait_core", "blender_addon")]
    assert bad == []


def test_train_never_imports_blender():
    assert _violations("train", {"bpy", "blender_addon", "bmesh", "mathutils"}) == []


def test_import_checker_sees_imports(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import bpy\nfrom train.loop import x\n")
    assert [m for m, _ in _imports(p)] == ["bpy", "train"]
