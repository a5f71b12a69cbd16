"""glTF export of a Busto avatar from Blender: the rig, its skinned mesh (baked texture or vertex colours),
expression shape keys and the animation, through Blender's own exporter, so that the file matches
``python -m portrait_core export`` (same morph target names, skinned mesh node at the scene root).

Blender's exporter writes a mesh that is parented to its armature as a child of the armature's node. glTF ignores
the parent transforms of a skinned mesh, and the Khronos validator warns about it (``NODE_SKINNED_MESH_NON_ROOT``),
so :func:`root_skinned_meshes` moves every skinned mesh node to the scene root afterwards (the file means the same).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

__all__ = ["export_gltf", "root_skinned_meshes"]

_GLB_MAGIC, _JSON, _BIN = 0x46546C67, 0x4E4F534A, 0x004E4942


def _read_glb(data: bytes) -> tuple[dict, bytes | None]:
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != 2 or length != len(data):
        raise ValueError("not a glTF 2.0 binary (.glb) file")
    offset, doc, blob = 12, None, None
    while offset < length:
        size, kind = struct.unpack_from("<II", data, offset)
        chunk = data[offset + 8:offset + 8 + size]
        if kind == _JSON:
            doc = json.loads(chunk.decode("utf-8"))
        elif kind == _BIN:
            blob = bytes(chunk)
        offset += 8 + size
    if doc is None:
        raise ValueError("the .glb has no JSON chunk")
    return doc, blob


def _write_glb(doc: dict, blob: bytes | None) -> bytes:
    js = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    js += b" " * ((-len(js)) % 4)
    out = [struct.pack("<II", len(js), _JSON), js]
    if blob is not None:
        blob = blob + b"\0" * ((-len(blob)) % 4)
        out += [struct.pack("<II", len(blob), _BIN), blob]
    body = b"".join(out)
    return struct.pack("<III", _GLB_MAGIC, 2, 12 + len(body)) + body


def root_skinned_meshes(path: str | os.PathLike) -> int:
    """Move every skinned mesh node of a .glb to the root of the scenes that contain it (atomically rewritten).
    Returns the number of nodes moved."""
    path = Path(path)
    doc, blob = _read_glb(path.read_bytes())
    nodes = doc.get("nodes", [])
    parent = {c: i for i, n in enumerate(nodes) for c in n.get("children", [])}
    moved = [i for i, n in enumerate(nodes) if "skin" in n and "mesh" in n and i in parent]
    if not moved:
        return 0

    def root_of(i: int) -> int:
        while i in parent:
            i = parent[i]
        return i

    roots = {i: root_of(i) for i in moved}
    for i in moved:
        p = nodes[parent[i]]
        p["children"] = [c for c in p["children"] if c != i]
        if not p["children"]:
            del p["children"]
    for scene in doc.get("scenes", []):
        top = scene.setdefault("nodes", [])
        for i in moved:
            if roots[i] in top and i not in top:
                top.append(i)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(_write_glb(doc, blob))
    os.replace(tmp, path)
    return len(moved)


def export_gltf(bpy, rig, mesh, path: str | os.PathLike, *, animations: bool = True,
                frame_range: bool = True) -> Path:
    """Export ``rig`` and its ``mesh`` (selected alone) with Blender's glTF exporter to a .glb: skin, shape keys
    (named like the CLI export's morph targets), their animation sampled per frame, the baked texture (or the
    vertex colours when the mesh has no texture), then :func:`root_skinned_meshes`."""
    path = Path(path)
    for o in bpy.context.view_layer.objects:
        o.select_set(o in (rig, mesh))
    bpy.context.view_layer.objects.active = rig
    textured = any(m is not None and m.node_tree is not None and any(n.type == "TEX_IMAGE" for n in m.node_tree.nodes)
                   for m in mesh.data.materials)
    r = bpy.ops.export_scene.gltf(
        filepath=str(path), export_format="GLB", use_selection=True, export_animations=animations,
        export_skins=True, export_morph=True, export_morph_animation=animations,
        export_vertex_color="NONE" if textured else "ACTIVE",  # glTF multiplies COLOR_0 into the texture
        export_cameras=False, export_lights=False, export_yup=True, export_apply=False,
        export_frame_range=frame_range, export_force_sampling=True)
    if r != {"FINISHED"} or not path.is_file():
        raise RuntimeError(f"glTF export returned {sorted(r)}")
    root_skinned_meshes(path)
    return path
