"""GLB writer: reload with pygltflib (joints, bind matrices, weights, morph names, animation), trimesh geometry,
.obj/.ply, alignment, and the Khronos validator when it is installed."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from portrait_core.conventions import POSE_JOINT_NAMES, SMPL_JOINT_NAMES, UPPER_BODY_CHAIN
from portrait_core.export.extract import EmptyFieldError, Mesh
from portrait_core.export.gltf import Animation, srgb_to_linear, write_glb, write_mesh
from portrait_core.export.rig import morph_basis, morph_weights


def _accessor(gltf, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    blob = gltf.binary_blob()
    dtype = {5126: np.float32, 5123: np.uint16, 5125: np.uint32}[acc.componentType]
    n = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[acc.type]
    data = np.frombuffer(blob, dtype=dtype, count=acc.count * n, offset=view.byteOffset + (acc.byteOffset or 0))
    return data.reshape(acc.count, n) if n > 1 else data


@pytest.fixture(scope="module")
def morphs(body_mesh):
    names, _ = morph_basis(["jaw_open", "smile", "blink"])
    v = body_mesh.vertices
    chin = (v[:, 1] > 0.05) & (v[:, 1] < 0.12) & (v[:, 2] > 0.05)
    out = {}
    for k, n in enumerate(names):
        d = np.zeros_like(v)
        d[chin, 1] = -0.004 * (k + 1)
        out[n] = d
    return out


@pytest.fixture(scope="module")
def animation():
    T = 6
    pose = np.zeros((T, 6, 3))
    pose[:, 3, 0] = np.linspace(0.0, 0.6, T)   # head nod
    pose[:, 0, 1] = np.linspace(0.0, -0.4, T)  # neck turn
    pose[:, 4, 2] = np.linspace(0.0, 0.5, T)   # left shoulder
    w = np.stack([np.linspace(0, 1, T), np.linspace(1, 0, T), np.zeros(T)], 1)
    return Animation(times=np.arange(T) / 10.0, pose=pose, morph_weights=w, name="test")


@pytest.fixture(scope="module")
def glb(tmp_path_factory, body_mesh, body_rig, morphs, animation):
    path = tmp_path_factory.mktemp("glb") / "avatar.glb"
    write_glb(path, body_mesh, body_rig, morphs, animation)
    return path


def test_glb_reloads_with_skin_morphs_and_animation(glb, body_mesh, body_rig, morphs):
    import pygltflib

    g = pygltflib.GLTF2().load(str(glb))
    assert len(g.meshes) == 1 and len(g.skins) == 1 and len(g.animations) == 1
    prim = g.meshes[0].primitives[0]
    V = body_mesh.num_vertices
    pos = _accessor(g, prim.attributes.POSITION)
    assert np.array_equal(pos, body_mesh.vertices)
    acc = g.accessors[prim.attributes.POSITION]
    assert isinstance(acc.min, list) and np.allclose(acc.min, body_mesh.vertices.min(0))
    assert np.array_equal(_accessor(g, prim.indices).reshape(-1, 3), body_mesh.faces)
    assert g.accessors[prim.indices].componentType == 5125
    col = _accessor(g, prim.attributes.COLOR_0)
    assert col.shape == (V, 4) and np.allclose(col[:, :3], srgb_to_linear(body_mesh.colors), atol=1e-6)
    J = _accessor(g, prim.attributes.JOINTS_0)
    W = _accessor(g, prim.attributes.WEIGHTS_0)
    assert g.accessors[prim.attributes.JOINTS_0].componentType == 5123
    assert np.allclose(W.sum(1), 1.0, atol=1e-6) and np.array_equal(J, body_rig.joints)
    # joints: SMPL names, hierarchy, local translations
    skin = g.skins[0]
    names = [g.nodes[i].name for i in skin.joints]
    assert names == [SMPL_JOINT_NAMES[j] for j in UPPER_BODY_CHAIN]
    node_of = dict(zip(names, skin.joints))
    assert node_of["head"] in g.nodes[node_of["neck"]].children
    assert np.allclose(g.nodes[node_of["head"]].translation,
                       body_rig.joint_positions[body_rig.index("head")] - body_rig.joint_positions[body_rig.index("neck")])
    # inverse bind matrices are column-major: translation in elements 12..14
    ibm = _accessor(g, skin.inverseBindMatrices).reshape(-1, 4, 4)
    assert np.allclose(ibm[:, 3, :3], -body_rig.joint_positions, atol=1e-6)
    # morph targets
    assert g.meshes[0].extras["targetNames"] == list(morphs)
    assert g.meshes[0].weights == [0.0] * len(morphs)
    for t, name in zip(prim.targets, morphs):
        pos = t["POSITION"] if isinstance(t, dict) else t.POSITION
        assert set(t if isinstance(t, dict) else ["POSITION"]) == {"POSITION"}
        assert np.allclose(_accessor(g, pos), morphs[name])
        assert isinstance(g.accessors[pos].max, list)
    # animation: 6 rotation tracks on the pose joints + 1 weights track on the mesh node
    ch = g.animations[0].channels
    rot = [g.nodes[c.target.node].name for c in ch if c.target.path == "rotation"]
    assert rot == list(POSE_JOINT_NAMES)
    assert [c.target.node for c in ch if c.target.path == "weights"] == [
        i for i, n in enumerate(g.nodes) if n.mesh == 0]
    for v in g.bufferViews:
        assert v.byteOffset % 4 == 0
    assert json.loads(json.dumps(g.extras))["busto"]["frame"].startswith("SMPL canonical")


def test_animation_keys_are_the_rig_rotations(glb, body_rig, animation):
    import pygltflib
    import torch

    from portrait_core.geometry.rotations import quaternion_to_matrix

    g = pygltflib.GLTF2().load(str(glb))
    a = g.animations[0]
    head = next(c for c in a.channels if g.nodes[c.target.node].name == "head")
    q = _accessor(g, a.samplers[head.sampler].output)  # (x, y, z, w)
    R = quaternion_to_matrix(torch.tensor(q[:, [3, 0, 1, 2]], dtype=torch.float64)).numpy()
    assert np.allclose(R, body_rig.local_rotations(animation.pose)[:, body_rig.index("head")], atol=1e-6)
    t = _accessor(g, a.samplers[head.sampler].input)
    assert np.allclose(t, animation.times) and g.accessors[a.samplers[head.sampler].input].max == [pytest.approx(0.5)]


def test_trimesh_reads_the_geometry(glb, body_mesh):
    import trimesh

    scene = trimesh.load(str(glb))
    m = next(iter(scene.geometry.values())) if hasattr(scene, "geometry") else scene
    assert len(m.faces) == body_mesh.num_faces
    assert np.allclose(np.sort(m.vertices[:, 1]), np.sort(body_mesh.vertices[:, 1]), atol=1e-6)


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_static_mesh_formats(tmp_path, body_mesh, suffix):
    import trimesh

    p = write_mesh(tmp_path / f"m{suffix}", body_mesh)
    m = trimesh.load(str(p), process=False)
    assert len(m.faces) == body_mesh.num_faces
    assert abs(m.volume - body_mesh.to_trimesh().volume) < 1e-6
    if suffix == ".ply":
        assert np.abs(m.visual.vertex_colors[:, :3] / 255.0 - body_mesh.colors).max() < 1 / 255 + 1e-6


def test_refuses_empty_and_inconsistent_inputs(tmp_path, body_mesh, body_rig, animation):
    empty = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32), np.zeros((0, 3), np.float32))
    with pytest.raises(EmptyFieldError):
        write_glb(tmp_path / "e.glb", empty)
    with pytest.raises(EmptyFieldError):
        write_mesh(tmp_path / "e.obj", empty)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="morph"):
        write_glb(tmp_path / "m.glb", body_mesh, body_rig, {"x": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="morph weight columns"):
        write_glb(tmp_path / "a.glb", body_mesh, body_rig, {}, animation)
    with pytest.raises(ValueError, match="unsupported"):
        write_mesh(tmp_path / "m.stl", body_mesh)
    with pytest.raises(ValueError, match="increasing"):
        Animation(times=[0.0, 0.0], pose=np.zeros((2, 6, 3)))


def test_morph_weights_follow_expressions():
    names, E = morph_basis(2, scale=2.0)
    expr = np.zeros((3, 64))
    expr[:, 0] = [0.0, 1.0, 2.0]
    w = morph_weights(expr, E)
    assert np.allclose(w[:, 0], [0.0, 0.5, 1.0]) and np.allclose(w[:, 1], 0.0)


def test_khronos_validator(glb, tmp_path):
    """Runs the Khronos glTF-Validator (npm package gltf-validator) when node can find it (NODE_PATH or the global
    npm root)."""
    import os

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    env = dict(os.environ)
    npm = shutil.which("npm")
    if npm:
        root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=30).stdout.strip()
        env["NODE_PATH"] = os.pathsep.join(p for p in (env.get("NODE_PATH", ""), root) if p)
    script = tmp_path / "v.js"
    script.write_text(
        "const v = require('gltf-validator'); const fs = require('fs');\n"
        "v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])))"
        ".then(r => { console.log(JSON.stringify(r.issues)); })"
        ".catch(e => { console.error(e); process.exit(3); });\n")
    probe = subprocess.run([node, "-e", "require.resolve('gltf-validator')"], capture_output=True, env=env)
    if probe.returncode != 0:
        pytest.skip("npm package gltf-validator is not installed (npm install gltf-validator)")
    r = subprocess.run([node, str(script), str(glb)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    issues = json.loads(r.stdout)
    print("validator:", {k: issues[k] for k in ("numErrors", "numWarnings", "numInfos", "numHints")})
    assert issues["numErrors"] == 0, issues["messages"][:5]
    assert issues["numWarnings"] == 0, issues["messages"][:5]
