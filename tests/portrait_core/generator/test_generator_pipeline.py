"""The generator pipeline and the avatar cache on the tiny preset."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from portrait_core import conventions as C
from portrait_core.generator import Controls, Generator, Latents, generator_config
from portrait_core.generator import rendering as R
from portrait_core.generator.config import config_from_json, config_to_json
from portrait_core.geometry.camera import Camera

from .conftest import randomise_zero_inits


@pytest.fixture(scope="module")
def trained_like():
    """A tiny generator whose zero-initialised layers are randomised (non-trivial manifold and expression)."""
    torch.manual_seed(3)
    g = Generator(generator_config("tiny")).eval()
    randomise_zero_inits(g)
    return g


def _controls(batch: int, seed: int = 0, pose_scale: float = 0.3) -> Controls:
    gen = torch.Generator().manual_seed(seed)
    return Controls(torch.randn(batch, 6, 3, generator=gen) * pose_scale, torch.randn(batch, 64, generator=gen),
                    torch.zeros(batch, 10))


def test_zero_pose_and_zero_expression_give_the_identity_deformation(trained_like):
    g = trained_like
    betas = torch.zeros(1, 10)
    with torch.no_grad():
        volume = g.pose_volume(g.body.posed(betas, torch.zeros(1, 6, 3)))
        assert volume.abs().max() < 1e-5  # metres
        pts = g.head_box_centre + (torch.rand(1, 200, 3) * 2 - 1) * g.head_box_half
        identity = torch.randn(1, 80)
        delta0 = g.expression_deformation(pts, identity, torch.zeros(1, 64))
        assert delta0.abs().max() == 0.0
        delta = g.expression_deformation(pts, identity, torch.randn(1, 64))
        assert delta.abs().max() > 1e-4  # a non-neutral expression does move points in the head box
        far = pts + torch.tensor([0.0, -0.5, 0.0])  # below the head box (torso)
        assert g.expression_deformation(far, identity, torch.randn(1, 64)).abs().max() == 0.0


def test_a_head_turn_maps_observed_head_points_back_to_canonical(trained_like):
    g = trained_like
    betas = torch.zeros(1, 10)
    pose = torch.zeros(1, 6, 3)
    pose[0, 3, 1] = 0.4  # head (joint 15) yaw
    with torch.no_grad():
        state = g.body.posed(betas, pose)
        canonical_face = g.body.face_centre(betas)  # [1, 3]
        observed_face = g.body.face_centre(betas, pose)
        assert (observed_face - canonical_face).norm() > 0.02  # the turn really moves the face
        back = g.pose_deformation(g.pose_volume(state), observed_face[None])
        # smoothing over a coarse grid blurs the head and neck transforms: a few cm at most
        assert (back[0] - canonical_face).norm() < 0.5 * (observed_face - canonical_face).norm()


def test_backward_reaches_every_parameter_group():
    torch.manual_seed(0)
    g = Generator(generator_config("tiny")).train()
    controls = _controls(2)
    out = g(Latents.sample(2, seed=1), controls, Camera.portrait(batch=2), super_resolve=True)
    loss = out.image.square().mean() + out.image_lr.square().mean() + out.features.square().mean()
    loss.backward()
    groups = g.param_groups()
    assert set(groups) == {"mapping", "manifold", "radiance", "deform", "smoother", "superres", "superres_mapping"}
    for name, params in groups.items():
        assert params, name
        reached = [p.grad is not None and p.grad.abs().sum() > 0 for p in params]
        assert any(reached), f"no gradient reaches parameter group {name!r}"
    n_params = sum(p.numel() for ps in groups.values() for p in ps)
    assert n_params == sum(p.numel() for p in g.parameters())  # the groups cover everything exactly once


def test_the_rendered_image_gives_gradients_to_the_pose_code():
    """360-degree pose self-learning trains a pose branch through the render: the pose deformation must carry
    gradients to the pose code (the nearest-vertex choice is discrete, the chosen transforms are not)."""
    torch.manual_seed(0)
    g = Generator(generator_config("tiny")).train()
    controls = _controls(1)
    pose = (controls.pose + 0.1).requires_grad_(True)
    controls = Controls(pose=pose, expression=controls.expression, body_shape=controls.body_shape)
    out = g(Latents.sample(1, seed=1), controls, Camera.portrait(batch=1))
    out.image.mean().backward()
    assert pose.grad is not None and torch.isfinite(pose.grad).all()
    assert pose.grad.abs().sum() > 0


def test_forward_output_shapes_and_ranges(tiny_generator):
    g = tiny_generator
    with torch.no_grad():
        out = g(Latents.sample(2, seed=0), _controls(2), Camera.portrait(batch=2), super_resolve=True)
    r, s, levels = g.cfg.render.resolution, g.cfg.superres.scale, g.cfg.manifold.levels
    assert out.image.shape == (2, 3, r * s, r * s) and out.image_lr.shape == (2, 3, r, r)
    assert out.alpha.shape == (2, 1, r * s, r * s) and out.depth.shape == (2, 1, r * s, r * s)
    assert out.features.shape == (2, g.cfg.radiance.feature_dim, r, r)
    assert out.aux["valid"].shape == (2, levels, r, r) and out.aux["valid"].dtype == torch.bool
    assert out.image.min() >= -1 and out.image.max() <= 1
    assert ((out.alpha >= 0) & (out.alpha <= 1)).all()
    cam = Camera.portrait()
    assert (out.depth >= cam.near - 1e-4).all() and (out.depth <= cam.far + 1e-4).all()


def test_cached_avatar_frames_match_the_uncached_training_path(trained_like):
    """"Uncached" = Generator.forward (networks; manifold evaluated directly; textures baked inside the call)
    at the same truncation. With super-resolution both read the same baked textures, so the only difference is
    the avatar's baked manifold grid (trilinear); the LR image additionally differs by texture vs direct radiance
    evaluation (bilinear texels, crossings found on bake rays instead of camera rays)."""
    g = trained_like
    latents = Latents.sample(1, seed=7)
    controls = _controls(2, seed=2, pose_scale=0.15)
    camera = Camera.portrait(yaw=torch.tensor([math.pi / 2, math.pi / 2 + 0.3]))
    with torch.no_grad():
        avatar = g.make_avatar(latents, controls.body_shape[:1], truncation=0.7)
        cached = avatar.render(controls.pose, controls.expression, camera)
        both = Latents(latents.identity.expand(2, -1), latents.noise.expand(2, -1))
        direct = g(both, controls, camera, truncation=0.7, super_resolve=True)
    hr_err = (cached.image - direct.image).abs()
    lr_err = (cached.image_lr - direct.image_lr).abs()
    # measured on this setup: HR mean 4e-4, isolated pixels differ by up to ~0.25 where a ray's crossing of a
    # level flips validity between the baked and the direct manifold field; LR mean 0.012 (32^2 texels of
    # ~2 cm vs exact radiance at the crossings)
    assert hr_err.mean() < 2e-3 and (hr_err > 0.05).float().mean() < 0.01, (hr_err.mean(), hr_err.max())
    assert lr_err.mean() < 0.025 and (lr_err > 0.1).float().mean() < 0.05, (lr_err.mean(), lr_err.max())
    assert (cached.aux["valid"] != direct.aux["valid"]).float().mean() < 0.02


def test_a_reused_avatar_equals_a_fresh_one(trained_like):
    g = trained_like
    latents = Latents.sample(1, seed=11)
    c1, c2 = _controls(1, seed=4), _controls(1, seed=5)
    camera = Camera.portrait(yaw=2.0)
    reused = g.make_avatar(latents)
    reused.render(c1.pose, c1.expression, camera)
    reused.render(c2.pose, c2.expression, camera)  # fills the per-frame caches with other inputs
    again = reused.render(c1.pose, c1.expression, camera)
    fresh = g.make_avatar(latents).render(c1.pose, c1.expression, camera)
    assert torch.equal(again.image, fresh.image) and torch.equal(again.depth, fresh.depth)
    assert torch.equal(again.image_lr, fresh.image_lr)


def test_avatar_batches_frames_consistently(trained_like):
    avatar = trained_like.make_avatar(Latents.sample(1, seed=12))
    c = _controls(3, seed=6)
    camera = Camera.portrait(yaw=torch.tensor([1.2, 1.5, 1.9]))
    batched = avatar.render(c.pose, c.expression, camera)
    single = avatar.render(c.pose[1:2], c.expression[1:2], camera[1])
    assert torch.allclose(batched.image[1:2], single.image, atol=1e-5)
    views = avatar.render(c.pose[1], c.expression[1], camera)  # one pose, three cameras
    assert views.image.shape[0] == 3 and torch.allclose(views.image[1:2], single.image, atol=1e-5)


def test_back_views_in_360_mode_intersect_the_closed_shells(tiny_generator_360):
    g = tiny_generator_360
    avatar = g.make_avatar(Latents.sample(1, seed=0))
    yaws = torch.tensor([math.pi / 2, 3 * math.pi / 2, math.pi])  # front, back, side
    out = avatar.render(torch.zeros(3, 6, 3), torch.zeros(3, 64), Camera.portrait(yaw=yaws), super_resolve=False)
    valid = out.aux["valid"]  # [3, L, h, w]
    # the shells whose largest semi-axis is below the near-plane distance from the orbit centre (the shell
    # centre) lie fully inside the near/far range from every direction
    radii = torch.linspace(g.cfg.manifold.radius_max, g.cfg.manifold.radius_min, g.cfg.manifold.levels)
    inner = valid[:, radii * max(g.cfg.manifold.axes) < 0.24]
    assert inner.shape[1] >= 1
    r = valid.shape[-1]
    centre = inner[..., r // 2 - 2: r // 2 + 2, r // 2 - 2: r // 2 + 2]
    assert centre.all(), "every view's central rays must cross the inner shells"
    frac = inner.float().mean(dim=(1, 2, 3))
    # shells centred on the orbit centre and symmetric front/back: the back view crosses them like the front
    assert torch.allclose(frac[1], frac[0], atol=0.02) and frac[2] > 0.05
    assert (out.alpha_lr[:, :, r // 2, r // 2] > 0).all()
    # the baked spherical textures are valid all around (no texel misses an inner level)
    _, bake_valid = g.bake_intersections()
    assert bake_valid.all()


def test_same_seed_gives_the_same_image():
    images = []
    for _ in range(2):
        torch.manual_seed(123)
        g = Generator(generator_config("tiny")).eval()
        with torch.no_grad():
            images.append(g.make_avatar(Latents.sample(1, seed=5)).render(
                torch.zeros(1, 6, 3), torch.zeros(1, 64), Camera.portrait()).image)
    assert torch.equal(images[0], images[1])
    assert torch.equal(Latents.sample(2, seed=9).identity, Latents.sample(2, seed=9).identity)
    assert not torch.equal(Latents.sample(1, seed=9).identity, Latents.sample(1, seed=10).identity)


def test_truncation_pulls_styles_to_the_tracked_average(tiny_generator):
    g = tiny_generator
    lat = Latents.sample(4, seed=0)
    with torch.no_grad():
        full, none = g.radiance_styles(lat, 1.0), g.radiance_styles(lat, 0.0)
        half = g.radiance_styles(lat, 0.5)
    assert torch.allclose(none, g.radiance_style_avg.expand_as(none))
    assert torch.allclose(half, 0.5 * (full + none), atol=1e-6)
    before = g.radiance_style_avg.clone()
    g.update_w_avg(n=256, seed=1)
    assert not torch.equal(before, g.radiance_style_avg)
    g.update_w_avg(n=1024, seed=0)  # back to the construction-time average
    assert torch.allclose(before, g.radiance_style_avg)


def test_bad_inputs_raise_clear_errors(tiny_generator):
    g = tiny_generator
    lat, cam = Latents.sample(1, seed=0), Camera.portrait()
    good = Controls.neutral(1)
    with pytest.raises(ValueError, match="pose must have shape"):
        g(lat, Controls(torch.zeros(1, 5, 3), good.expression, good.body_shape), cam)
    bad_expr = good.expression.clone()
    bad_expr[0, 3] = float("nan")
    with pytest.raises(ValueError, match="expression contains NaN"):
        g(lat, Controls(good.pose, bad_expr, good.body_shape), cam)
    with pytest.raises(ValueError, match="latents batch 1 != controls batch 2"):
        g(lat, Controls.neutral(2), cam)
    with pytest.raises(ValueError, match="camera batch 3 must be 1 or 1"):
        g(lat, good, Camera.portrait(batch=3))
    with pytest.raises(TypeError, match="identity must be a torch.Tensor"):
        g(Latents([0.0] * 80, lat.noise), good, cam)
    avatar = g.make_avatar(lat)
    with pytest.raises(ValueError, match="expression must have shape"):
        avatar.render(torch.zeros(1, 6, 3), torch.zeros(1, 63), cam)
    with pytest.raises(ValueError, match="an avatar is one identity"):
        g.make_avatar(Latents.sample(2, seed=0))
    with pytest.raises(ValueError, match="unknown generator preset 'huge'; available presets: paper, small, small-cnn, tiny"):
        generator_config("huge")
    with pytest.raises(ValueError, match="unknown field 'mdoe'"):
        generator_config("tiny", render={"mdoe": "360"})
    with pytest.raises(ValueError, match="render.mode must be"):
        generator_config("tiny", render={"mode": "sideways"})


def test_config_json_round_trip_and_presets():
    for name in ("paper", "small", "tiny"):
        cfg = generator_config(name, render={"mode": "360"})
        assert config_from_json(config_to_json(cfg)) == cfg
    paper = generator_config("paper")
    assert (paper.radiance.width, paper.radiance.depth, paper.manifold.levels) == (256, 8, 24)
    assert (paper.render.resolution, paper.output_resolution, paper.render.texture_resolution) == (128, 512, 128)
    with pytest.raises(ValueError, match="unknown keys"):
        config_from_json('{"radiance": {"width": 3, "colour": 1}}')


def test_export_fields(trained_like):
    g = trained_like
    avatar = g.make_avatar(Latents.sample(1, seed=1))
    centre = g.shell_centre
    radial = torch.linspace(0.0, 0.4, 50)[:, None] * torch.tensor([0.0, 0.0, 1.0]) + centre
    occ = avatar.density_field(radial)
    assert occ.shape == (50,) and ((occ >= 0) & (occ <= 1)).all()
    assert occ[0] >= occ[-1]  # opacity accumulates inwards
    assert avatar.density_field(radial + torch.tensor([0, 0, 1.0])).max() == 0  # outside every shell
    cols = avatar.color_field(radial[:10], torch.tensor([[0.0, 0.0, 1.0]]).expand(10, 3))
    assert cols.shape == (10, 3) and ((cols >= 0) & (cols <= 1)).all()
    pose = torch.zeros(6, 3)
    pose[3, 1] = 0.3
    occ_posed = avatar.density_field(radial, pose=pose, expression=torch.randn(64))
    assert occ_posed.shape == (50,)
    # blendshape displacements: a gentle deformation (|grad Delta| < 1, as trained ones are) so the fixed-point
    # inversion converges
    smooth = copy.deepcopy(g)
    with torch.no_grad():
        smooth.expression_deform.head.weight.mul_(0.05)
        smooth.expression_deform.head.bias.mul_(0.05)
    avatar = smooth.make_avatar(Latents.sample(1, seed=1))
    pts = g.head_box_centre + torch.randn(20, 3) * 0.03
    expr = torch.randn(64)
    delta = avatar.expression_deformation(pts, expr)
    assert delta.abs().max() > 1e-4
    disp = avatar.expression_displacement(pts, expr)
    moved = pts + disp
    # the forward displacement inverts the backward offsets: moved + Delta(moved) = pts
    assert torch.allclose(moved + avatar.expression_deformation(moved, expr), pts, atol=1e-4)
    assert delta.shape == (20, 3)


TINY_CNN = {"kind": "cnn", "cnn_channels": (16, 16, 8, 8)}  # 32^2 textures, the tiny preset's


@pytest.mark.parametrize("shading,kind", [(False, "siren"), (True, "siren"), (True, "cnn")])
def test_grid_and_texture_training_path_is_the_avatar_computation(shading, kind):
    torch.manual_seed(8)
    g = Generator(generator_config("tiny", render={"train_manifold": "grid", "train_radiance": "textures"},
                                   expression={"shading": shading}, radiance=TINY_CNN if kind == "cnn" else {}))
    randomise_zero_inits(g)
    latents = Latents.sample(1, seed=3)
    controls = _controls(1, seed=9, pose_scale=0.2)
    camera = Camera.portrait(yaw=1.3)
    out = g(latents, controls, camera, truncation=0.7, super_resolve=True)
    with torch.no_grad():
        cached = g.make_avatar(latents, truncation=0.7).render(controls.pose, controls.expression, camera)
    assert torch.allclose(out.image, cached.image, atol=1e-5)
    assert torch.allclose(out.image_lr, cached.image_lr, atol=1e-5)
    (out.image.square().mean() + out.image_lr.square().mean()).backward()
    for name in ("manifold", "radiance", "deform", "smoother", "mapping"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g.param_groups()[name]), name
    if shading:
        assert g.expression_deform.shading_head.weight.grad.abs().sum() > 0


def test_expression_shading_multiplies_the_colours_and_is_exact_at_neutral(trained_like):
    """The shading channel scales every hit's colour by 2 sigmoid(-logit): a huge logit leaves only the white
    background showing through the translucent parts (image = 1 - alpha), a zero logit is no shading; and a
    generator with a randomised shading head renders the neutral expression exactly as one without it."""
    from portrait_core.generator.generator import SceneFields
    from portrait_core.generator.rendering import expression_shading_factor

    assert expression_shading_factor(torch.tensor(0.0)) == 1.0
    assert expression_shading_factor(torch.tensor(30.0)) < 1e-12 and expression_shading_factor(torch.tensor(-30.0)) == 2.0
    g = trained_like
    latents = Latents.sample(1, seed=4)
    controls = _controls(1, seed=5, pose_scale=0.1)
    camera = Camera.portrait()
    with torch.no_grad():
        avatar = g.make_avatar(latents, truncation=0.7)
        plain = avatar.render(controls.pose, controls.expression, camera)
        offsets = g.expression_offsets_fn(latents.identity, controls.expression)

        def scene(logit: float) -> SceneFields:
            fields = lambda p: torch.cat([offsets(p), torch.full_like(p[..., :1], logit)], -1)  # noqa: E731
            return SceneFields(avatar._pose_volume(controls.pose), fields, avatar.manifold,
                               g.texture_radiance_fn(avatar.textures), g.texture_radiance_fn(avatar.textures_hr))

        same = g.render_scene(scene(0.0), camera, super_resolve=True)
        dark = g.render_scene(scene(40.0), camera, super_resolve=True)
    torch.testing.assert_close(same.image, plain.image, atol=1e-6, rtol=0)
    torch.testing.assert_close(same.image_lr, plain.image_lr, atol=1e-6, rtol=0)
    for image, alpha in ((dark.image, dark.alpha), (dark.image_lr, dark.alpha_lr)):
        torch.testing.assert_close((image + 1) / 2, (1 - alpha).expand_as(image), atol=1e-5, rtol=0)
    assert plain.alpha.mean() > 0.1  # there is something to darken

    torch.manual_seed(11)
    shaded = Generator(generator_config("tiny", expression={"shading": True})).eval()
    randomise_zero_inits(shaded, seed=2)
    unshaded = Generator(generator_config("tiny")).eval()
    unshaded.load_state_dict({k: v for k, v in shaded.state_dict().items() if "shading_head" not in k})
    neutral = Controls(controls.pose, torch.zeros(1, 64), controls.body_shape)
    with torch.no_grad():
        a = shaded(latents, neutral, camera, super_resolve=True)
        b = unshaded(latents, neutral, camera, super_resolve=True)
        c = shaded(latents, controls, camera, super_resolve=True)
        d = unshaded(latents, controls, camera, super_resolve=True)
    assert torch.equal(a.image, b.image)
    assert (c.image - d.image).abs().mean() > 1e-3  # an expression does shade


def test_face_camera_follows_the_head_and_renders(tiny_generator):
    g = tiny_generator
    controls = Controls.neutral(2)
    controls.pose[1, 3, 1] = 0.5  # head turn on the second sample
    cam = g.face_camera(controls)
    canonical_centre = g.body.face_centre(controls.body_shape[:1])[0]
    look = cam.origin + cam.forward * C.FACE_RADIUS
    assert torch.allclose(look[0], canonical_centre, atol=1e-4)  # neutral: aimed at the canonical face centre
    assert not torch.allclose(cam.forward[0], cam.forward[1], atol=1e-3)  # turned with the head
    with torch.no_grad():
        out = g(Latents.sample(2, seed=0), controls, cam, resolution=16)
    assert out.image.shape == (2, 3, 16, 16) and torch.isfinite(out.image).all()


def test_convolutional_textures_land_on_their_level_and_texel():
    """bake_textures lays the texture CNN's [G, L, c, T, T] output out exactly as it lays out the field's bake:
    level l, texel (i, j) keeps its colour and features, and alpha comes from its sigma plus the body prior."""
    torch.manual_seed(2)
    g = Generator(generator_config("tiny", radiance=TINY_CNN, render={"train_radiance": "textures"}))
    levels, t, c = g.cfg.manifold.levels, g.cfg.render.texture_resolution, g.cfg.radiance.feature_dim
    level = torch.arange(levels, dtype=torch.float32)[:, None, None]
    row = torch.arange(t, dtype=torch.float32)[None, :, None].expand(levels, t, t)
    col = torch.arange(t, dtype=torch.float32)[None, None, :].expand(levels, t, t)
    rgb = torch.stack([(level / levels).expand(levels, t, t), row / t, col / t], 1)[None]  # [1, L, 3, T, T]
    sigma = torch.zeros(1, levels, 1, t, t)
    feats = (level + 100 * row + 10000 * col)[None, :, None].expand(1, levels, c, t, t)
    g.radiance.forward = lambda styles: (rgb.expand(styles.shape[0], -1, -1, -1, -1), sigma.expand(
        styles.shape[0], -1, -1, -1, -1), feats.expand(styles.shape[0], -1, -1, -1, -1))
    with torch.no_grad():
        textures = g.bake_textures(g.radiance_styles(Latents.sample(2, seed=0)))
        hits, valid = g.bake_intersections()
    assert textures.shape == (2, levels, 4 + c, t, t)
    assert torch.equal(textures[:, :, :3], rgb.expand(2, -1, -1, -1, -1))
    assert torch.equal(textures[:, :, 4:], feats.expand(2, -1, -1, -1, -1))
    prior = g._with_body_prior(torch.zeros(1, hits.numel() // 3, 1), hits.reshape(1, -1, 3))
    expected_alpha = R.alpha_from_sigma(prior[..., 0], valid.reshape(1, -1), g.cfg.render.alpha_delta)
    assert torch.allclose(textures[0, :, 3], expected_alpha.reshape(t, t, levels).permute(2, 0, 1))
    assert textures[0, :, 3].max() > 0.3  # the body prior makes an untrained texture partly opaque


def test_convolutional_textures_depend_on_the_identity_and_config_errors_name_the_fix():
    torch.manual_seed(3)
    g = Generator(generator_config("tiny", radiance=TINY_CNN, render={"train_radiance": "textures"}))
    with torch.no_grad():
        textures = g.bake_textures(g.radiance_styles(Latents.sample(2, seed=1)))
    assert (textures[0, :, :3] - textures[1, :, :3]).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="canonical_radiance needs a field"):
        g.canonical_radiance(torch.zeros(1, 4, 3), g.radiance_style_avg[None])
    with pytest.raises(ValueError, match="makes 32x32 textures, but render.texture_resolution is 64"):
        generator_config("tiny", radiance=TINY_CNN, render={"train_radiance": "textures", "texture_resolution": 64})
    with pytest.raises(ValueError, match="needs render.train_radiance='textures'"):
        generator_config("tiny", radiance=TINY_CNN)
