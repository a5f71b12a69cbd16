"""The add-on's export path: an extracted avatar mesh carries the baked texture and UVs, its shape keys are named like
the CLI export's morph targets, and ``blender_addon.export.export_gltf`` writes a .glb the Khronos validator passes
without warnings (skinned mesh node at the scene root) whose morph target names equal the CLI export's."""

from __future__ import annotations

import numpy as np
import pygltflib
import pytest

from blender_addon.export import root_skinned_meshes

pytestmark = pytest.mark.blender


def _target_names(path) -> list[str]:
    g = pygltflib.GLTF2().load_binary(str(path))
    m = next(m for m in g.meshes if m.primitives[0].targets)
    return list((m.extras or {}).get("targetNames", []))


def test_addon_and_cli_exports_agree(addon, bpy_module, tiny_checkpoint, tmp_path):
    import torch

    from portrait_core.export import export_avatar
    from portrait_core.generator.loading import identity_for_seed, load_generator
    from tests.portrait_core.export.test_texture import _validator_issues

    bpy = bpy_module
    sp = bpy.context.scene.busto
    sp.new_seed = 3
    assert bpy.ops.busto.sample_avatar(new_avatar=True) == {"FINISHED"}
    rig = bpy.context.view_layer.objects.active
    sp.mesh_resolution, sp.mesh_auto_level, sp.mesh_morphs = 32, True, 4
    assert bpy.ops.busto.extract_mesh() == {"FINISHED"}
    mesh = rig.busto.mesh
    keys = [k.name for k in mesh.data.shape_keys.key_blocks][1:]
    assert keys == ["jaw_open", "smile", "brow_raise", "blink"]
    assert len(mesh.data.uv_layers) == 1
    images = [n.image for m in mesh.data.materials for n in m.node_tree.nodes if n.type == "TEX_IMAGE"]
    assert len(images) == 1 and images[0].size[:] == (1024, 1024) and images[0].packed_file is not None
    px = np.empty(1024 * 1024 * 4, np.float32)
    images[0].pixels.foreach_get(px)
    assert px.reshape(-1, 4)[:, :3].std() > 1e-3  # a baked image (of a random-init model: faint), not a flat fill

    from blender_addon.export import export_gltf

    addon_glb = export_gltf(bpy, rig, mesh, tmp_path / "addon.glb", animations=False)
    issues = _validator_issues(addon_glb, tmp_path)
    assert (issues["numErrors"], issues["numWarnings"]) == (0, 0), issues["messages"][:5]
    g = pygltflib.GLTF2().load_binary(str(addon_glb))
    skinned = [i for i, n in enumerate(g.nodes) if n.skin is not None]
    assert skinned and all(i in g.scenes[0].nodes for i in skinned)
    prim = g.meshes[g.nodes[skinned[0]].mesh].primitives[0]
    assert prim.attributes.TEXCOORD_0 is not None and prim.attributes.COLOR_0 is None and g.images

    gen = load_generator(tiny_checkpoint)
    latents, _ = identity_for_seed(gen, 3)
    with torch.no_grad():
        avatar = gen.make_avatar(latents, truncation=0.7)
    cli = export_avatar(avatar, tmp_path / "cli.glb", resolution=32, morphs=4, level="auto", texture=None)
    assert _target_names(addon_glb) == _target_names(cli.path) == keys


def test_root_skinned_meshes_moves_the_node_and_keeps_the_rest(tmp_path):
    """A skinned mesh node under the armature node moves to the scene root; nodes, buffers and scenes are otherwise
    unchanged; a second pass moves nothing."""
    import pygltflib as g

    doc = g.GLTF2(
        scene=0, scenes=[g.Scene(nodes=[0])],
        nodes=[g.Node(name="arm", children=[1, 2]), g.Node(name="bone"), g.Node(name="mesh", mesh=0, skin=0)],
        meshes=[g.Mesh(primitives=[g.Primitive(attributes=g.Attributes(POSITION=0))])],
        skins=[g.Skin(joints=[1])],
        accessors=[g.Accessor(bufferView=0, componentType=5126, count=3, type="VEC3", min=[0, 0, 0], max=[1, 1, 0])],
        bufferViews=[g.BufferView(buffer=0, byteOffset=0, byteLength=36)],
        buffers=[g.Buffer(byteLength=36)],
    )
    blob = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32).tobytes()
    doc.set_binary_blob(blob)
    path = tmp_path / "a.glb"
    doc.save_binary(str(path))
    assert root_skinned_meshes(path) == 1
    out = g.GLTF2().load_binary(str(path))
    assert out.nodes[0].children == [1] and out.scenes[0].nodes == [0, 2]
    assert out.binary_blob()[:36] == blob and [n.name for n in out.nodes] == ["arm", "bone", "mesh"]
    assert root_skinned_meshes(path) == 0
