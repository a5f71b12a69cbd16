"""UV unwrap, texel rasterisation, projection baking with occlusion, the textured GLB (validator), skin weights on
split (UV-seam) meshes, unfolding skin weights, and the quality metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait_core.export.extract import vertex_normals
from portrait_core.export.gltf import write_glb
from portrait_core.export.quality import flipped_faces, overlap_psnr, surface_metrics
from portrait_core.export.rig import fold_test_poses, folded_faces, unfold_weights
from portrait_core.export.texture import bake_views, rasterize_uv, srgb_decode, srgb_encode, unwrap


def _sphere(subdivisions: int = 3, radius: float = 0.1):
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(s.vertices, np.float32), np.asarray(s.faces, np.uint32)


@settings(max_examples=30, deadline=None)
@given(st.integers(8, 64))
def test_rasterize_uv_covers_a_square_and_reproduces_texel_centres(size):
    uvs = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
    face_of, bary = rasterize_uv(uvs, faces, size)
    assert (face_of >= 0).all()
    i, j = np.mgrid[0:size, 0:size]
    uv = np.einsum("ijk,ijkc->ijc", bary, uvs[faces.astype(int)][face_of])
    assert np.allclose(uv[..., 0], (j + 0.5) / size, atol=1e-5) and np.allclose(uv[..., 1], (i + 0.5) / size, atol=1e-5)
    assert np.allclose(bary.sum(-1), 1.0, atol=1e-5) and (bary >= -1e-5).all()


def test_unwrap_keeps_every_triangle_and_splits_only_at_seams():
    v, f = _sphere(3)
    layout = unwrap(v, f, size=256, piece_faces=300)  # several pieces, one atlas
    assert len(layout.faces) == len(f)
    # same triangles, same corner order: split vertices copy their source vertex
    assert np.array_equal(layout.vmap[layout.faces.astype(np.int64)], f.astype(np.int64))
    assert layout.uvs.min() >= 0.0 and layout.uvs.max() <= 1.0
    assert len(v) <= len(layout.vmap) < 3 * len(v)
    # charts do not overlap: the texels of different faces are disjoint, and most faces own texels
    face_of, _ = rasterize_uv(layout.uvs, layout.faces, layout.size)
    assert len(np.unique(face_of[face_of >= 0])) > 0.9 * len(f)


def test_split_mesh_welds_normals_and_skin_weights(body_mesh, body):
    from portrait_core.export.rig import build_rig

    layout = unwrap(body_mesh.vertices, body_mesh.faces, size=256)
    tex = np.zeros((256, 256, 3), np.uint8)
    split = body_mesh.split(layout.vmap, layout.faces, layout.uvs, tex)
    assert split.num_vertices > body_mesh.num_vertices  # seams
    assert np.allclose(split.with_vertices(split.vertices).normals,
                       vertex_normals(body_mesh.vertices, body_mesh.faces)[layout.vmap], atol=1e-5)
    welded_rig = build_rig(body_mesh, body)
    rig = build_rig(split, body)
    assert np.array_equal(rig.joints, welded_rig.joints[layout.vmap])
    assert np.allclose(rig.weights, welded_rig.weights[layout.vmap])
    mesh, loop_uvs = split.unsplit()
    assert np.array_equal(mesh.faces, body_mesh.faces) and loop_uvs.shape == (len(body_mesh.faces), 3, 2)


def _plane(z: float, half: float, n: int = 40):
    xs = np.linspace(-half, half, n)
    x, y = np.meshgrid(xs, xs)
    return np.stack([x.ravel(), y.ravel(), np.full(x.size, z)], 1)


def test_bake_views_takes_the_visible_colour_and_skips_occluded_points():
    from portrait_core.geometry.camera import Camera

    cam = Camera.orbit(np.pi / 2, np.pi / 2, 1.0, (0.0, 0.0, 0.0), 20.0)  # on +Z looking at the origin
    h = w = 128
    cols = (np.arange(w) + 0.5) / w
    rgb = np.broadcast_to(np.stack([cols, 1 - cols, np.full(w, 0.25)], -1)[None], (h, w, 3)).astype(np.float32)
    alpha = np.ones((h, w), np.float32)
    view = {"rgb": rgb, "alpha": alpha, "cam2world": cam.cam2world[0].double().numpy(),
            "intrinsics": cam.intrinsics[0].double().numpy()}
    front = _plane(0.05, 0.03)  # a small square in front of a bigger one
    back = _plane(0.0, 0.1, 120)
    pts = np.concatenate([front, back])
    normals = np.tile([0.0, 0.0, 1.0], (len(pts), 1))
    lin, weight = bake_views(pts, normals, [view], depth_tolerance=0.01)
    hidden = (np.abs(back[:, 0]) < 0.02) & (np.abs(back[:, 1]) < 0.02)
    assert (weight[:len(front)] > 0).all()
    assert (weight[len(front):][hidden] == 0).all()
    clear = np.maximum(np.abs(back[:, 0]), np.abs(back[:, 1])) > 0.045  # outside the square's shadow
    assert (weight[len(front):][clear] > 0).all()
    # the colour is the image's at the projection: red grows with the column (x to the right in the image)
    K, M = view["intrinsics"], view["cam2world"]
    c = (front - M[:3, 3]) @ M[:3, :3]
    col = K[0, 0] * c[:, 0] / c[:, 2] + K[0, 2]
    assert np.allclose(srgb_encode(lin[:len(front)])[:, 0], col, atol=0.02)
    assert np.allclose(srgb_encode(lin[:len(front)])[:, 2], 0.25, atol=0.01)
    # a back-facing point is never coloured
    _, w_back = bake_views(front, -normals[:len(front)], [view])
    assert (w_back == 0).all()


def test_srgb_round_trip():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    assert np.allclose(srgb_encode(srgb_decode(x)), x, atol=1e-5)


@pytest.fixture(scope="module")
def textured_glb(tmp_path_factory, body_mesh, body_rig):
    layout = unwrap(body_mesh.vertices, body_mesh.faces, size=128)
    tex = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)
    mesh = body_mesh.split(layout.vmap, layout.faces, layout.uvs, tex)
    from portrait_core.body.model import BodyModel
    from portrait_core.export.rig import build_rig

    rig = build_rig(mesh, BodyModel.synthetic())
    morphs = {"jaw_open": np.zeros((mesh.num_vertices, 3), np.float32)}
    morphs["jaw_open"][:, 1] = -0.01 * (mesh.vertices[:, 1] > 0.05)
    path = tmp_path_factory.mktemp("tex") / "textured.glb"
    write_glb(path, mesh, rig, morphs)
    return path, mesh, tex


def test_textured_glb_carries_uvs_and_the_png(textured_glb):
    import io

    import pygltflib
    from PIL import Image

    path, mesh, tex = textured_glb
    g = pygltflib.GLTF2().load_binary(str(path))
    prim = g.meshes[0].primitives[0]
    assert prim.attributes.TEXCOORD_0 is not None and prim.attributes.COLOR_0 is None
    info = g.materials[0].pbrMetallicRoughness.baseColorTexture
    assert info is not None and g.textures[info.index].source == 0 and g.images[0].mimeType == "image/png"
    view = g.bufferViews[g.images[0].bufferView]
    png = g.binary_blob()[view.byteOffset:view.byteOffset + view.byteLength]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), tex)
    acc = g.accessors[prim.attributes.TEXCOORD_0]
    bv = g.bufferViews[acc.bufferView]
    uv = np.frombuffer(g.binary_blob(), np.float32, acc.count * 2, bv.byteOffset).reshape(-1, 2)
    assert np.allclose(uv, mesh.uvs)


def _validator_issues(path, tmp_path) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    env = dict(os.environ)
    npm = shutil.which("npm")
    if npm:
        root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=30).stdout.strip()
        env["NODE_PATH"] = os.pathsep.join(p for p in (env.get("NODE_PATH", ""), root) if p)
    if subprocess.run([node, "-e", "require.resolve('gltf-validator')"], capture_output=True, env=env).returncode:
        pytest.skip("npm package gltf-validator is not installed (npm install -g gltf-validator@2.0.0-dev.3.10)")
    script = tmp_path / "v.js"
    script.write_text("const v = require('gltf-validator'); const fs = require('fs');\n"
                      "v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])))"
                      ".then(r => console.log(JSON.stringify(r.issues))).catch(e => { console.error(e); process.exit(3); });\n")
    r = subprocess.run([node, str(script), str(path)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_textured_glb_is_validator_clean(textured_glb, tmp_path):
    issues = _validator_issues(textured_glb[0], tmp_path)
    assert (issues["numErrors"], issues["numWarnings"], issues["numInfos"]) == (0, 0, 0), issues["messages"][:5]


def test_unfold_weights_removes_a_fold(body_rig):
    """A strip behind the neck whose weights jump from neck to head in one row folds when the head tilts back;
    smoothing the weights there removes the fold, and the rest of the strip keeps its weights."""
    ys, xs = np.linspace(-0.02, 0.16, 37), np.linspace(-0.03, 0.03, 7)
    y, x = np.meshgrid(ys, xs, indexing="ij")
    v = np.stack([x.ravel(), y.ravel(), np.full(x.size, -0.07)], 1).astype(np.float32)
    faces = []
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            a, b, c, d = i * 7 + j, i * 7 + j + 1, (i + 1) * 7 + j, (i + 1) * 7 + j + 1
            faces += [[a, c, b], [b, c, d]]  # facing -Z (backwards)
    faces = np.array(faces, np.uint32)
    head, neck = body_rig.index("head"), body_rig.index("neck")
    joints = np.zeros((len(v), 4), np.uint16)
    weights = np.zeros((len(v), 4), np.float32)
    joints[:, 0] = np.where(v[:, 1] > 0.065, head, neck)
    weights[:, 0] = 1.0
    from dataclasses import replace

    rig = replace(body_rig, joints=joints, weights=weights)
    before = sum(folded_faces(rig, v, faces, p).sum() for p in fold_test_poses())
    assert before > 0
    fixed, left = unfold_weights(rig, v, faces, fold_test_poses())
    assert left == 0 and all(not folded_faces(fixed, v, faces, p).any() for p in fold_test_poses())
    far = (v[:, 1] < 0.0) | (v[:, 1] > 0.15)
    assert np.array_equal(fixed.joints[far, 0], joints[far, 0]) and fixed.weights[far, 0].min() > 0.99


def test_surface_metrics_and_psnr():
    v, f = _sphere(4, 0.1)
    everywhere = np.ones(len(f), bool)
    smooth = surface_metrics(v, f, everywhere)
    noisy_v = v * (1 + 0.05 * np.random.default_rng(1).standard_normal((len(v), 1))).astype(np.float32)
    noisy = surface_metrics(noisy_v, f, everywhere)
    assert smooth["crease_share"] == 0.0 and noisy["crease_share"] > 0.05
    assert smooth["normal_noise_deg"] < 3.0 < noisy["normal_noise_deg"]
    assert flipped_faces(v, v * 1.5, f) == 0.0 and flipped_faces(v, -v, f[:, ::-1]) == 0.0
    tri = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0]], np.float32)
    two = np.array([[0, 1, 2], [1, 3, 2]], np.uint32)
    assert flipped_faces(tri, tri[:, [1, 0, 2]], two) == 1.0  # mirrored across x = y: both faces turn over
    a = np.full((4, 4, 3), 0.5)
    b = a + 0.1
    m = np.ones((4, 4), bool)
    assert overlap_psnr(a, m, b, m) == pytest.approx(20.0)
    b[0, 0] = 0.0
    mm = m.copy()
    mm[0, 0] = False
    assert overlap_psnr(a, mm, b, m) == pytest.approx(20.0)  # only the overlap counts
