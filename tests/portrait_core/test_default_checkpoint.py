"""The shipped default model (portrait_core/assets): it loads with portrait_core alone, is small enough to ship,
renders finite frames and its samplers produce valid generator inputs."""

from __future__ import annotations

import json

import pytest
import torch

from portrait_core import conventions as C
from portrait_core.assets import (
    DefaultSamplers,
    SamplerError,
    default_checkpoint_path,
    default_samplers_path,
    load_default,
)
from portrait_core.assets.appearance import APPEARANCE_DIM, USED_DIMS, describe_appearance
from portrait_core.generator import Controls, load_generator
from portrait_core.generator.checkpoint import read_metadata

MAX_BYTES = 25 * 2 ** 20


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_default()


def test_files_exist_and_are_small():
    ckpt, samplers = default_checkpoint_path(), default_samplers_path()
    assert ckpt.is_file(), f"{ckpt} is missing"
    assert samplers.is_file(), f"{samplers} is missing"
    assert ckpt.stat().st_size + samplers.stat().st_size < MAX_BYTES
    meta = read_metadata(ckpt)
    info = json.loads(meta["info"])
    assert info["method"] == "busto-supervised-warm-start"
    assert info["noise_latent"]["kind"] == "appearance_code"
    trained_steps = info["step"] + sum(run["step"] for run in info.get("lineage", []))
    assert trained_steps > 0 and info["heldout"]


def test_loads_and_renders_a_finite_frame(model):
    G, samplers = model
    assert G.cfg.name == "small"
    latents, betas = samplers.identities(2, seed=0)
    camera, pose = samplers.views(2, seed=1)
    expression = samplers.expressions(2, seed=2)
    with torch.no_grad():
        out = G(latents, Controls(pose, expression, betas), camera, resolution=64)
    assert out.image.shape == (2, 3, 64, 64)
    assert torch.isfinite(out.image).all() and torch.isfinite(out.alpha).all() and torch.isfinite(out.depth).all()
    assert out.image.min() >= -1 and out.image.max() <= 1
    # a trained model covers the subject: some opaque pixels, and not a uniform image
    assert (out.alpha > 0.5).float().mean() > 0.1
    assert out.image.std() > 0.05


def test_avatar_path_renders(model):
    G, samplers = model
    latents, betas = samplers.identities(1, seed=3)
    av = G.make_avatar(latents, betas, truncation=1.0)
    from portrait_core.geometry.camera import Camera

    out = av.render(torch.zeros(1, *C.POSE_SHAPE), torch.zeros(1, C.EXPRESSION_DIM), Camera.portrait(batch=1),
                    resolution=32)
    assert torch.isfinite(out.image).all()
    assert out.image.shape[-1] == 32 * G.cfg.superres.scale


def test_samplers_produce_valid_inputs(model):
    _, s = model
    latents, betas = s.identities(16, seed=0)
    latents.validate()
    assert betas.shape == (16, C.BODY_SHAPE_DIM) and torch.isfinite(betas).all()
    camera, pose = s.views(16, seed=0)
    camera.validate()
    expression = s.expressions(16, seed=0)
    Controls(pose, expression, betas).validate()
    # deterministic in the seed, different across seeds
    again, _ = s.identities(16, seed=0)
    torch.testing.assert_close(again.identity, latents.identity)
    other, _ = s.identities(16, seed=1)
    assert not torch.equal(other.identity, latents.identity)
    # appearance codes decode to the documented vocabulary, padding is zero
    assert latents.noise.shape[1] == APPEARANCE_DIM
    assert torch.all(latents.noise[:, USED_DIMS:] == 0)
    desc = describe_appearance(latents.noise[0].tolist())
    assert desc["hair_style"] in ("buzz", "short", "bob", "long")
    # the portrait cameras look at the subject from the portrait radius
    r = (camera.origin - camera.origin.new_tensor(C.PORTRAIT_LOOK_AT)).norm(dim=-1)
    torch.testing.assert_close(r, torch.full_like(r, C.PORTRAIT_RADIUS), atol=0.02, rtol=0)


def test_corrupt_sampler_file_is_reported(tmp_path):
    bad = tmp_path / "s.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(SamplerError, match="s.safetensors"):
        DefaultSamplers.load(bad)
    with pytest.raises(SamplerError, match="no such sampler file"):
        DefaultSamplers.load(tmp_path / "missing.safetensors")
    s = DefaultSamplers.load()
    tensors = {k: getattr(s, k) for k in ("identity", "body_shape", "appearance", "camera", "pose", "expression")}
    tensors["pose"] = tensors["pose"][:, :5]
    with pytest.raises(SamplerError, match="'pose' has shape"):
        DefaultSamplers.from_tensors(tensors)


def test_load_generator_accepts_the_default_path():
    G = load_generator(default_checkpoint_path())
    assert G.checkpoint_info["data"]["images"] > 0


def test_pose_and_expression_controls_change_the_picture(model, tmp_path):
    """The shipped model's controls respond (mean |pixel change| 0-255 between a sweep's neutral tile and its
    extreme, as printed by the contact sheet). Measured for this model: head turn 4.74, nod 4.70, jaw_open 1.80 (a
    dark open mouth, from the expression shading), smile 0.67; the first CPU model's jaw_open was 0.43 (its expression
    deformation had not trained), the model before expression shading had 1.35 (the lips stretched, no interior)."""
    from portrait_core.assets.contact_sheet import contact_sheet

    G, samplers = model
    responses: dict[str, float] = {}
    path = contact_sheet(G, samplers, tmp_path / "sheet.png", avatars=1, columns=3, responses=responses)
    assert path.is_file()
    by_name = {next(k for k in ("turn", "nod", "jaw_open", "smile") if k in label): v for label, v in responses.items()}
    assert by_name["turn"] > 2.5 and by_name["nod"] > 2.5, by_name
    assert by_name["jaw_open"] > 1.5 and by_name["smile"] > 0.5, by_name


def test_extracted_head_has_no_level_terraces(model):
    """The mesh follows the rendered surface smoothly across the nested levels: with each level counted fully as
    soon as a point is inside it, 4.5 % of the head's edges at this grid were creases over 30 degrees (the level
    patches' steps); the level-slab occupancy leaves 0.8 %."""
    import numpy as np
    import trimesh

    from portrait_core.export import extract_mesh

    G, samplers = model
    latents, betas = samplers.identities(1, seed=7)
    mesh = extract_mesh(G.make_avatar(latents, betas, truncation=1.0), resolution=96)
    t = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    head = t.vertices[t.face_adjacency_edges[:, 0], 1] > 0.05  # above the neck joint + 5 cm
    creases = float((np.degrees(t.face_adjacency_angles[head]) > 30).mean())
    assert head.sum() > 1000 and creases < 0.02, f"{creases:.2%} of the head's edges are creases over 30 degrees"
