"""Avatar export: field -> mesh (extract), SMPL upper-body rig + expression morphs (rig), glTF writer (gltf).

All geometry is metres in the canonical frame (SMPL axes: +Y up, the subject faces +Z, origin at the canonical neck
joint J12), which is also glTF's frame. See docs/export.md. Heavy modules are imported on first use.
"""

from __future__ import annotations

from portrait_core.export.extract import (
    AVATAR_LEVEL,
    EmptyFieldError,
    Mesh,
    avatar_bounds,
    evaluate_grid,
    extract_mesh,
    extract_mesh_from_field,
)
from portrait_core.export.gltf import Animation, build_gltf, write_glb, write_mesh
from portrait_core.export.pipeline import (
    ExportResult,
    animation_from_track,
    benchmark_export,
    export_avatar,
    load_animations,
)
from portrait_core.export.rig import (
    MORPH_SCALE,
    Rig,
    build_rig,
    build_rig_from_arrays,
    expression_morphs,
    morph_basis,
    morph_weights,
)

__all__ = [
    "AVATAR_LEVEL", "EmptyFieldError", "Mesh", "avatar_bounds", "evaluate_grid", "extract_mesh",
    "extract_mesh_from_field", "Animation", "build_gltf", "write_glb", "write_mesh", "ExportResult",
    "animation_from_track", "benchmark_export", "export_avatar", "load_animations", "MORPH_SCALE", "Rig", "build_rig",
    "build_rig_from_arrays", "expression_morphs", "morph_basis", "morph_weights",
]
