"""Export of a generator Avatar (random-init 'tiny' preset): mesh, colours, rig from the avatar's body, morphs from
its expression deformation, posed meshes, keyframe animation, benchmark timings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from portrait_core.export import (
    EmptyFieldError,
    avatar_bounds,
    benchmark_export,
    export_avatar,
    expression_morphs,
    extract_mesh,
)

RES = 48


@pytest.fixture(scope="module")
def avatar():
    from portrait_core.generator import Generator, Latents, generator_config

    torch.manual_seed(0)
    G = Generator(generator_config("tiny")).eval()
    return G.make_avatar(Latents.sample(1, seed=3))


@pytest.fixture(scope="module")
def mesh(avatar):
    return extract_mesh(avatar, RES, level="auto")


def test_avatar_mesh_is_inside_the_box_and_coloured(avatar, mesh):
    lo, hi = (np.asarray(b) for b in avatar_bounds(avatar))
    assert mesh.num_faces > 500
    assert np.all(mesh.vertices >= lo - 1e-4) and np.all(mesh.vertices <= hi + 1e-4)
    assert mesh.colors.shape == (mesh.num_vertices, 3) and 0 <= mesh.colors.min() and mesh.colors.max() <= 1
    assert mesh.volume() > 0 and mesh.to_trimesh().is_watertight
    # the surface is the level set of the avatar's own field
    level = mesh.info["level"]
    inside = avatar.density_field(torch.from_numpy(mesh.vertices - 0.01 * mesh.normals))
    outside = avatar.density_field(torch.from_numpy(mesh.vertices + 0.01 * mesh.normals))
    assert (inside >= outside).float().mean() > 0.9 and float(outside.median()) <= level + 1e-6


def test_level_above_the_field_is_a_clear_error_and_writes_nothing(avatar, tmp_path):
    # occupancy never exceeds 1, so no surface exists at 1.5
    with pytest.raises(EmptyFieldError, match="no surface"):
        export_avatar(avatar, tmp_path / "a.glb", resolution=32, morphs=0, level=1.5)
    assert not list(tmp_path.iterdir())


def test_morphs_follow_the_expression_deformation(avatar, mesh):
    m = expression_morphs(avatar, mesh, ["jaw_open", "smile"], scale=2.0)
    assert list(m) == ["jaw_open", "smile"]
    e = torch.zeros(64)
    e[0] = 2.0
    d = m["jaw_open"]
    assert d.shape == (mesh.num_vertices, 3) and np.isfinite(d).all()
    # deformed points map back to the neutral ones through the generator's backward offsets
    y = torch.from_numpy(mesh.vertices + d)
    back = y + avatar.expression_deformation(y, e)
    assert np.abs(back.numpy() - mesh.vertices).max() < 2e-3 + 0.1 * np.abs(d).max()


def test_posed_mesh_lbs_and_field(avatar, mesh):
    pose = np.zeros((6, 3))
    pose[3] = (0.4, 0.3, 0.0)
    lbs = extract_mesh(avatar, RES, pose=pose, level=mesh.info["level"])
    assert lbs.num_vertices == mesh.num_vertices and np.array_equal(lbs.faces, mesh.faces)
    moved = np.linalg.norm(lbs.vertices - mesh.vertices, axis=1)
    assert moved.max() > 0.02
    field = extract_mesh(avatar, RES, pose=pose, level=mesh.info["level"], posed_from="field", colors=False)
    assert field.num_faces > 500
    # both describe the same posed surface: volumes agree
    assert abs(field.volume() - lbs.volume()) / lbs.volume() < 0.15


def test_export_glb_with_animation_and_benchmark(avatar, tmp_path, keyframes_dir):
    import pygltflib

    res = export_avatar(avatar, tmp_path / "a.glb", resolution=RES, level="auto", morphs=3,
                        keyframes=[keyframes_dir / "real_video_sample1"], key_interval=1, texture=None)
    g = pygltflib.GLTF2().load(str(res.path))
    assert g.meshes[0].extras["targetNames"] == ["jaw_open", "smile", "brow_raise"]
    assert [g.nodes[j].name for j in g.skins[0].joints][:5] == ["pelvis", "spine1", "spine2", "spine3", "neck"]
    assert len(g.animations) == 1 and len(g.animations[0].channels) == 7
    # the rig's joints are the avatar body's canonical joints
    J = avatar.generator.body.canonical(avatar.body_shape).joints[0].numpy()
    assert np.allclose(res.rig.joint_positions, J[list(res.rig.joint_ids)], atol=1e-6)
    t = benchmark_export(avatar, 32, morphs=1, level="auto", texture=None)
    assert {"field", "mcubes", "clean", "color", "rig", "morphs", "write", "total"} <= set(t)
    assert t["total"] >= t["extract"] > 0


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_export_static(avatar, tmp_path, suffix):
    res = export_avatar(avatar, tmp_path / f"a{suffix}", resolution=32, level="auto")
    assert res.path.stat().st_size > 1000 and res.rig is None
