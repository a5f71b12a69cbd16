"""The face texture (``face_texture`` config): mean-face coordinates, the zero start, the masked fast path."""

from __future__ import annotations

import pytest
import torch

from portrait_core import conventions as C
from portrait_core.generator import Controls, Generator, Latents, generator_config, load_generator, save_generator
from portrait_core.generator.checkpoint import replaced_keys, transfer_weights
from portrait_core.generator.config import FaceTextureConfig
from portrait_core.generator.face_texture import FaceTexture, face_coordinates

FT = {"enabled": True, "resolution": 32, "grid": 16}


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return Generator(generator_config("tiny", face_texture=FT)).eval()


def _canonical_vertices(g: Generator, identity, body_shape):
    verts = g.face.neutral_vertices(identity)
    T = g.body.face_transform(body_shape)
    return verts @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]


def test_each_identity_vertex_lands_on_its_mean_face_texel(generator):
    g, cfg = generator, generator.cfg.face_texture
    gen = torch.Generator().manual_seed(1)
    identity, betas = torch.randn(2, C.IDENTITY_DIM, generator=gen), torch.randn(2, 10, generator=gen) * 0.5
    idx = torch.randperm(g.face.num_vertices, generator=gen)[:300]
    points = _canonical_vertices(g, identity, betas)[:, idx]
    mean = g.face.neutral_vertices(torch.zeros(1, C.IDENTITY_DIM))[0]
    coords = face_coordinates(points, g.face.neutral_vertices(identity), mean, g.body.face_transform(betas), cfg)
    x0, x1, y0, y1 = cfg.extent
    expected_u = (mean[idx, 0] - x0) / (x1 - x0) * 2 - 1
    expected_v = (mean[idx, 1] - y0) / (y1 - y0) * 2 - 1
    torch.testing.assert_close(coords[..., 0], expected_u.expand(2, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(coords[..., 1], expected_v.expand(2, -1), atol=1e-4, rtol=0)
    assert coords[..., 2].min() > 0.999  # on the surface


def test_weight_falls_off_with_distance_and_is_zero_beyond_three_reach(generator):
    g, cfg = generator, generator.cfg.face_texture
    identity, betas = torch.zeros(1, C.IDENTITY_DIM), torch.zeros(1, 10)
    tip = _canonical_vertices(g, identity, betas)[0].max(0)  # the most forward vertex (+z is forward)
    front = tip.values[2]
    point = _canonical_vertices(g, identity, betas)[0, tip.indices[2]]
    steps = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0]) * cfg.reach
    points = point[None, None, :].repeat(1, len(steps), 1)
    points[0, :, 2] = front + steps
    w = face_coordinates(points, g.face.neutral_vertices(identity), g.face.neutral_vertices(identity)[0],
                         g.body.face_transform(betas), cfg)[0, :, 2]
    assert w[0] > 0.999 and (w[1:] < w[:-1]).all()
    assert abs(w[2].item() - torch.exp(torch.tensor(-1.0)).item()) < 0.02
    assert w[-1] == 0.0


def test_enabling_the_face_texture_changes_no_pixel_until_it_trains():
    torch.manual_seed(0)
    plain = Generator(generator_config("tiny")).eval()
    cfg = generator_config(plain.cfg, face_texture=FT)
    textured = Generator(cfg).eval()
    fresh = transfer_weights(textured, plain.state_dict(), "test", replaced_keys(plain.cfg, cfg))
    assert fresh and all(k.startswith("face_texture.") for k in fresh)
    latents = Latents.sample(1, seed=2)
    controls = Controls(torch.zeros(1, *C.POSE_SHAPE), torch.zeros(1, 64), torch.zeros(1, 10))
    cam = plain.face_camera(controls)
    with torch.no_grad():
        a = plain(latents, controls, cam).image
        b = textured(latents, controls, cam).image
    torch.testing.assert_close(a, b)


def test_masked_correction_equals_the_dense_reference():
    torch.manual_seed(4)
    tex = FaceTexture(FaceTextureConfig(enabled=True, resolution=16, channels=4, hidden=8), latent_dim=6)
    torch.nn.init.normal_(tex.rgb.weight, 0, 0.5)
    coords = torch.rand(2, 50, 3) * 2 - 1
    coords[..., 2] = torch.rand(2, 50) * (torch.rand(2, 50) > 0.6)  # most points carry no weight
    coords[1, :, 2] = 0.0  # a frame without any face point
    coords[1, 3, 2] = 0.7
    rgb = torch.rand(2, 50, 3)
    bias = tex.latent_bias(torch.randn(2, 6))
    fast = tex.correct(rgb, coords, bias, min_weight=0.0)
    reference = (rgb + tex.correction(coords, bias)).clamp(0, 1)
    torch.testing.assert_close(fast, reference)


def test_gradients_reach_the_texture_through_a_render(generator):
    g = generator
    with torch.no_grad():
        g.face_texture.rgb.weight.normal_(0, 0.3)
    g.zero_grad()
    latents = Latents.sample(1, seed=3)
    controls = Controls(torch.zeros(1, *C.POSE_SHAPE), torch.zeros(1, 64), torch.zeros(1, 10))
    g(latents, controls, g.face_camera(controls)).image.mean().backward()
    assert g.face_texture.texture.grad.abs().sum() > 0
    assert g.face_texture.latent_proj.weight.grad.abs().sum() > 0


def test_checkpoint_round_trip_and_avatar_render_agree(generator, tmp_path):
    g = generator
    with torch.no_grad():
        g.face_texture.rgb.weight.normal_(0, 0.3)
    path = save_generator(tmp_path / "ft.safetensors", g)
    loaded = load_generator(path)
    assert loaded.cfg.face_texture == g.cfg.face_texture
    latents = Latents.sample(1, seed=5)
    controls = Controls(torch.zeros(1, *C.POSE_SHAPE), torch.zeros(1, 64), torch.zeros(1, 10))
    cam = g.face_camera(controls)
    with torch.no_grad():
        direct = g(latents, controls, cam, truncation=1.0).image
    avatar = loaded.make_avatar(latents, truncation=1.0, super_resolve=False)
    frame = avatar.render(controls.pose, controls.expression, cam).image
    assert (frame - direct).abs().mean() < 0.05  # the avatar path reads baked textures; the correction is the same


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="face_texture.extent"):
        generator_config("tiny", face_texture={"extent": (0.1, -0.1, -0.1, 0.1)})
    with pytest.raises(ValueError, match="face_texture.reach"):
        generator_config("tiny", face_texture={"reach": 0.0})
    with pytest.raises(ValueError, match="face_texture.resolution"):
        generator_config("tiny", face_texture={"resolution": 100000})


def test_the_baked_correction_matches_the_network_and_serves_a_batch_of_frames(generator):
    """Avatars read the correction from a per-identity colour texture (no network per hit): close to the network
    evaluated per point, and one avatar renders a batch of frames."""
    g = generator
    with torch.no_grad():
        g.face_texture.rgb.weight.normal_(0, 0.3)
        g.face_texture.texture.copy_(torch.nn.functional.avg_pool2d(g.face_texture.texture, 5, 1, 2))  # smooth
    latents = Latents.sample(1, seed=6)
    betas = torch.zeros(1, 10)
    exact = g.face_detail_fn(latents, betas)
    baked = g.face_detail_fn(latents, betas, baked=True)
    points = _canonical_vertices(g, latents.identity, betas)[:, ::40][:, None]  # on the face: weight 1
    rgb = torch.full_like(points, 0.5)
    with torch.no_grad():
        a, b = exact(points, rgb), baked(points, rgb)
    assert (a - rgb).abs().mean() > 1e-3  # the correction acts
    assert (a - b).abs().mean() < 0.1 * (a - rgb).abs().mean()
    avatar = g.make_avatar(latents, truncation=1.0, super_resolve=False)
    controls = Controls(torch.zeros(2, *C.POSE_SHAPE), torch.zeros(2, 64), torch.zeros(2, 10))
    controls.expression[1, 0] = 2.0
    frames = avatar.render(controls.pose, controls.expression, g.face_camera(controls))
    assert frames.image.shape[0] == 2 and torch.isfinite(frames.image).all()


def test_with_face_texture_adds_a_fresh_texture_that_changes_no_pixel():
    from portrait_core.generator.loading import with_face_texture

    torch.manual_seed(0)
    plain = Generator(generator_config("tiny")).eval()
    plain.checkpoint_info, plain.checkpoint_path = {"note": "x"}, "p.safetensors"
    textured = with_face_texture(plain, seed=3)
    assert textured.face_texture is not None and plain.face_texture is None
    assert textured.checkpoint_info == {"note": "x"} and textured.checkpoint_path == "p.safetensors"
    assert not textured.training and with_face_texture(textured) is textured
    own = textured.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in plain.state_dict().items())
    latents = Latents.sample(1, seed=2)
    controls = Controls(torch.zeros(1, *C.POSE_SHAPE), torch.zeros(1, 64), torch.zeros(1, 10))
    cam = plain.face_camera(controls)
    with torch.no_grad():
        torch.testing.assert_close(plain(latents, controls, cam).image, textured(latents, controls, cam).image)
        textured.face_texture.rgb.bias.fill_(0.1)  # once it has learned something, the face changes
        assert not torch.allclose(plain(latents, controls, cam).image, textured(latents, controls, cam).image)
