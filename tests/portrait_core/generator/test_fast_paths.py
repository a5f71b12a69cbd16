"""The speed-ups of issue 23 equal their plain references: compositing, the fused FiLM-SIREN layer, and the
cheap shape-only generator build behind the checkpoint header check."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait_core.generator import Generator, Latents, generator_config
from portrait_core.generator import rendering as R
from portrait_core.generator.checkpoint import CheckpointError, _SkipRandomInit, load_generator, save_generator
from portrait_core.generator.fast_composite import composite_fast, layers_in_depth_order
from portrait_core.generator.networks import film_siren, film_siren_reference


def _layers(seed: int, presorted: bool, rays: int = 64, levels: int = 7, channels: int = 5):
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(2, rays, levels, generator=g) * 2 + 1
    valid = torch.rand(2, rays, levels, generator=g) > 0.3
    if presorted:  # valid layers first, increasing depth: nested shells entered from outside
        depth = depth.sort(-1).values
        valid = valid.sort(-1, descending=True).values
    rgb = torch.rand(2, rays, levels, 3, generator=g)
    alpha = torch.rand(2, rays, levels, generator=g)
    feats = torch.randn(2, rays, levels, channels, generator=g)
    return rgb, alpha, depth, valid, feats


def _assert_same(a: R.Composite, b: R.Composite) -> None:
    for x, y in zip(a, b):
        if x is None:
            assert y is None
        else:
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), presorted=st.booleans(), with_bg_depth=st.booleans())
def test_composite_fast_equals_reference(seed, presorted, with_bg_depth):
    rgb, alpha, depth, valid, feats = _layers(seed, presorted)
    bg_depth = torch.full((2, 1), 9.0) if with_bg_depth else None
    assert layers_in_depth_order(depth, valid) == presorted or not presorted
    with torch.no_grad():
        _assert_same(R.composite(rgb, alpha, depth, valid, 1.0, feats, bg_depth),
                     composite_fast(rgb, alpha, depth, valid, 1.0, feats, bg_depth))


def test_composite_fast_detects_order_and_matches_gradients():
    rgb, alpha, depth, valid, feats = _layers(3, presorted=True)
    assert layers_in_depth_order(depth, valid)
    assert not layers_in_depth_order(depth.flip(-1), valid.flip(-1))
    for presorted in (True, False):
        rgb, alpha, depth, valid, feats = _layers(5, presorted)
        grads = []
        for fn in (R.composite, composite_fast):
            a, c = alpha.clone().requires_grad_(), rgb.clone().requires_grad_()
            out = fn(c, a, depth, valid, 1.0, feats)
            (out.rgb.sum() + out.depth.sum() + out.features.square().sum()).backward()
            grads.append((a.grad, c.grad))
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch,style_batch", [(1, 1), (3, 3), (3, 1)])
def test_film_siren_equals_reference(batch, style_batch):
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 50, 8, generator=g)
    w, b = torch.randn(16, 8, generator=g) * 0.1, torch.randn(16, generator=g) * 0.1
    freq, phase = torch.randn(style_batch, 1, 16, generator=g) * 0.1, torch.randn(style_batch, 1, 16, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(film_siren(x, w, b, freq, phase), film_siren_reference(x, w, b, freq, phase),
                                   rtol=1e-5, atol=2e-5)
    grads = []
    for fn in (film_siren_reference, film_siren):
        ww = w.clone().requires_grad_()
        fn(x, ww, b, freq, phase).sum().backward()
        grads.append(ww.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-3)  # sums of 150 points x freq ~30


def test_shape_only_build_matches_the_real_generator():
    cfg = generator_config("tiny")
    with torch.device("meta"), _SkipRandomInit():
        meta = Generator(cfg)
    assert meta.body is None  # no synthetic body built for a shape check
    real = Generator(cfg)
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}


def test_bad_shape_refused_before_any_tensor_is_read(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    path = tmp_path / "g.safetensors"
    save_generator(path, Generator(generator_config("tiny")), info={})
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    key = next(k for k in tensors if k.endswith("weight"))
    tensors[key] = torch.zeros(*tensors[key].shape[:-1], tensors[key].shape[-1] + 1)
    save_file(tensors, str(path), metadata=metadata)

    import safetensors.torch

    def no_read(*args, **kwargs):
        raise AssertionError("tensors were read before the header check refused the file")

    monkeypatch.setattr(safetensors.torch, "load_file", no_read)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_generator(path)


def _fields(seed: int, rays: int, n: int, entered: bool, ties: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bumpy fields along rays (falling on average, with rises), depths, 7 decreasing levels; ``ties``: values
    snapped to a lattice that contains the levels, so that samples land exactly on them."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.linspace(0.6, -0.6, 7)
    s = 1.0 - torch.linspace(0, 2.2, n) + 0.35 * torch.randn(2, rays, n, generator=g)
    if ties:
        s = (s / 0.2).round() * 0.2
    if entered:
        s[..., 0] = s[..., 0].clamp_min(0.6)
    depth = torch.linspace(0.5, 1.5, n)[None, None].expand(2, rays, n)
    return s, depth, levels


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 30), entered=st.booleans(), ties=st.booleans())
def test_intersect_levels_equals_reference_bit_for_bit(seed, n, entered, ties):
    s, depth, levels = _fields(seed, 50, n, entered, ties)
    ref = R.intersect_levels_reference(s, depth, levels)
    out = R.intersect_levels(s, depth, levels)
    for a, b in zip(ref, out):
        assert torch.equal(a, b)
    if entered:  # the fast path itself (the dispatcher may have taken it or not)
        for a, b in zip(ref, R.intersect_levels_entered(s, depth, levels)):
            assert torch.equal(a, b)


def test_intersect_levels_fast_path_keeps_gradients_and_refuses_nothing():
    s, depth, levels = _fields(1, 40, 12, entered=True, ties=False)
    grads = []
    for fn in (R.intersect_levels_reference, R.intersect_levels_entered):
        x = s.clone().requires_grad_()
        fn(x, depth, levels).depth.sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0 and torch.equal(grads[0], grads[1])
    # a few rays that start inside a level take the reference, the others the fast path; gradients still agree
    s[0, 0, 0] = s[1, 7, 0] = -1.0
    grads = []
    for fn in (R.intersect_levels_reference, R.intersect_levels):
        x = s.clone().requires_grad_()
        out = fn(x, depth, levels)
        (out.depth.sum() + out.frac.sum()).backward()
        grads.append((out, x.grad))
    for a, b in zip(grads[0][0], grads[1][0]):
        assert torch.equal(a, b)
    assert torch.equal(grads[0][1], grads[1][1])
    # NaN samples take the reference
    s[0, 0, 0] = -1.0
    s[1, 3, 5] = float("nan")
    for a, b in zip(R.intersect_levels_reference(s, depth, levels), R.intersect_levels(s, depth, levels)):
        torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True)


def _superres_generator():
    """The tiny preset with expression shading and the face texture, their zero-initialised heads made live."""
    torch.manual_seed(0)
    G = Generator(generator_config("tiny", expression={"shading": True}, face_texture={"enabled": True})).eval()
    with torch.no_grad():
        for p in [*G.face_texture.parameters(), *G.expression_deform.shading_head.parameters(),
                  *G.expression_deform.head.parameters()]:
            p.normal_(0, 0.3)
        G.radiance.sigma_heads[0].bias.fill_(3.0)  # opaque enough that every level shows
    return G


def _reference_scene(scene):
    """The same scene without its plain super-resolved textures: ``render_scene`` takes the reference path."""
    from dataclasses import replace

    return replace(scene, textures_hr=None)


def test_superres_frame_equals_reference_for_avatars_and_training_scenes(monkeypatch):
    import portrait_core.generator.generator as GM
    from portrait_core.generator import Controls, Latents
    from portrait_core.geometry.camera import Camera

    # these frames are small: with several threads render_scene would take the reference for them too
    monkeypatch.setattr(GM, "SUPERRES_LEVEL_LOOP_PIXELS", 0)
    calls = []
    fast_frame = GM.superres_frame
    monkeypatch.setattr(GM, "superres_frame", lambda *a, **k: calls.append(1) or fast_frame(*a, **k))

    G = _superres_generator()
    latents = Latents.sample(2, seed=4)
    gen = torch.Generator().manual_seed(1)
    pose = torch.randn(2, 6, 3, generator=gen) * 0.6  # large enough that some rays cross levels out of order
    expression = torch.randn(2, 64, generator=gen)
    camera = Camera.portrait(batch=2)
    with torch.no_grad():
        avatar = G.make_avatar(latents.index(0))
        training = G.training_scene(latents, Controls(pose, expression, torch.zeros(2, 10)), super_resolve=True)
        for scene_, cam in ((avatar.scene(pose, expression), camera), (training, camera)):
            assert scene_.textures_hr is not None and scene_.face_detail is not None
            fast = G.render_scene(scene_, cam, 16, super_resolve=True)
            ref = G.render_scene(_reference_scene(scene_), cam, 16, super_resolve=True)
            for name in ("image", "alpha", "depth", "image_lr"):
                # the two upsample the hits in different calls (2e-7 m apart); the live random face texture's
                # slope makes that up to 2e-5 in a few pixels' colour
                tol = 5e-5 if name == "image" else 1e-5
                torch.testing.assert_close(getattr(fast, name), getattr(ref, name), rtol=1e-5, atol=tol, msg=name)
            assert fast.image.shape == (2, 3, 32, 32) and fast.alpha.amax() > 0.5
    assert len(calls) == 2  # the fast pass ran for both scenes (and not for their references)


def test_small_multithreaded_frames_take_the_reference_pass_unless_a_face_texture_is_on(monkeypatch):
    import portrait_core.generator.generator as GM
    from portrait_core.geometry.camera import Camera

    G = _superres_generator()
    calls = []
    fast_frame = GM.superres_frame
    monkeypatch.setattr(GM, "superres_frame", lambda *a, **k: calls.append(1) or fast_frame(*a, **k))
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            avatar = G.make_avatar(Latents.sample(1, seed=0))
            face_detail = avatar.face_detail
            for n, face, expected in ((2, False, 0), (1, False, 1), (2, True, 2)):
                torch.set_num_threads(n)
                avatar.face_detail = face_detail if face else None
                avatar.render(torch.zeros(6, 3), torch.zeros(64), Camera.portrait(), resolution=16)
                assert len(calls) == expected
    finally:
        torch.set_num_threads(threads)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), frames=st.integers(1, 2), shared=st.booleans(), shuffled=st.booleans(),
       per_pass=st.integers(1, 5))
def test_superres_frame_equals_reference_on_random_layers(seed, frames, shared, shuffled, per_pass):
    """Random crossings, some rays with their levels out of depth order (those pixels are composited sorted), 1-5
    levels per pass (of 4)."""
    from portrait_core.generator.fast_superres import superres_frame, superres_frame_reference

    g = torch.Generator().manual_seed(seed)
    h, w, n_levels, scale = 5, 6, 4, 2
    centre, half = torch.tensor([0.0, 0.1, 0.0]), 0.3
    hits = torch.rand(frames, h * w, n_levels, 3, generator=g) * 0.5 - 0.25
    depth = (torch.rand(frames, h * w, n_levels, generator=g) + torch.arange(n_levels)).sort(-1).values
    valid = (torch.rand(frames, h * w, n_levels, generator=g) > 0.2).sort(-1, descending=True).values
    if shuffled:
        rays = torch.rand(frames, h * w, generator=g) < 0.2
        depth = torch.where(rays[..., None], depth.flip(-1), depth)
    shading = torch.rand(frames, h * w, n_levels, 1, generator=g) * 2
    textures = torch.rand(1 if shared else frames, n_levels, 5, 8, 8, generator=g)
    far = torch.full((frames, 1), 9.0)
    from portrait_core.generator import rendering as R

    def radiance(x, v):
        texels = R.sample_textures(textures[:, :, :4], R.texture_coords(x, "frontal", centre, half), "frontal")
        return texels[..., :3], texels[..., 3] * v.to(texels.dtype), None

    def face_detail(x, rgb):  # any point-wise correction
        return (rgb + 0.3 * torch.sin(20 * x)).clamp(0, 1)

    for detail in (None, face_detail):
        for sh in (None, shading):
            ref = superres_frame_reference(hits, valid, depth, sh, (h, w), scale, radiance, 1.0, far, detail)
            fast = superres_frame(hits, valid, depth, sh, (h, w), scale, textures, centre, half, 1.0, far, detail,
                                  levels_per_pass=per_pass)
            for a, b in zip(ref, fast):
                assert a.shape == b.shape
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_channels_last_super_resolution_equals_the_default_layout():
    torch.manual_seed(0)
    G = Generator(generator_config("tiny")).eval()
    with torch.no_grad():
        for p in G.superres.parameters():  # a trained-looking SR: not the near-bilinear start
            p.add_(torch.randn_like(p) * 0.2)
        G.superres.residual_gain.fill_(1.0)
        latents = Latents.sample(2, seed=1)
        textures = G.bake_textures(G.radiance_styles(latents))
        styles = G.superres_styles(latents)
        plain = G.superres(textures, styles, channels_last=False)
        fast = G.superres(textures, styles, channels_last=True)
        default = G.superres(textures, styles)  # no grad on the CPU: channels-last
    assert plain.shape == fast.shape and plain.is_contiguous() and (plain - 0.5).abs().amax() > 0.05
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(default, fast, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["frontal", "360"])
def test_super_resolution_in_level_chunks_equals_one_pass(mode):
    torch.manual_seed(0)
    G = Generator(generator_config("tiny", render={"mode": mode})).eval()
    with torch.no_grad():
        for p in G.superres.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        latents = Latents.sample(2, seed=1)
        textures = G.bake_textures(G.radiance_styles(latents))
        styles = G.superres_styles(latents)
        whole = G.super_resolve_textures(textures, styles, level_chunk=0)
        for chunk in (1, 4, None):
            torch.testing.assert_close(G.super_resolve_textures(textures, styles, level_chunk=chunk), whole,
                                       rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.integers(2, 4), h=st.integers(1, 9), w=st.integers(1, 9),
       data=st.data())
def test_upsampling_a_window_equals_cropping_the_full_upsample(seed, scale, h, w, data):
    import torch.nn.functional as F

    from portrait_core.generator.fast_superres import _upsample_window

    r0 = data.draw(st.integers(0, h - 1))
    r1 = data.draw(st.integers(r0 + 1, h))
    c0 = data.draw(st.integers(0, w - 1))
    c1 = data.draw(st.integers(c0 + 1, w))
    low = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
    full = F.interpolate(low, scale_factor=scale, mode="bilinear", align_corners=False)
    window = _upsample_window(low, (r0, r1, c0, c1), scale)
    # the same source coordinates: equal up to float rounding of (i + 0.5) / scale at the window's offset
    torch.testing.assert_close(window, full[..., r0 * scale:r1 * scale, c0 * scale:c1 * scale], rtol=1e-5, atol=1e-5)


def test_near_face_windows_bound_the_weighted_rays_of_each_level():
    from portrait_core.generator.fast_superres import near_face_windows

    h, w = 10, 12
    weight = torch.zeros(2, h, w, 3)
    weight[0, 4, 5, 0] = 0.5  # level 0: one ray of frame 0 ...
    weight[1, 6, 2, 0] = 1e-4  # ... and one of frame 1: the window spans both
    weight[0, 0, 11, 2] = 0.3  # level 2: a corner ray, the window is cut to the image
    windows = near_face_windows(weight.reshape(2, h * w, 3), (h, w), margin=2)
    assert windows == [(2, 9, 0, 8), None, (0, 3, 9, 12)]


def test_face_correction_in_windows_equals_every_pixel_on_the_shipped_model():
    """The shipped model's face texture: super-resolved frames corrected only in the windows near the face equal
    frames corrected at every pixel (and the reference pass), while the windows are a fraction of the frame."""
    from dataclasses import replace

    import portrait_core.generator.fast_superres as FS
    from portrait_core.generator.checkpoint import load_generator
    from portrait_core.generator.loading import default_checkpoint_path, identity_for_seed, samplers_for
    from portrait_core.geometry.camera import Camera

    G = load_generator(default_checkpoint_path()).eval()
    assert G.face_texture is not None
    latents = identity_for_seed(G, 3, samplers_for(G))[0]
    gen = torch.Generator().manual_seed(2)
    pose, expression = torch.randn(2, 6, 3, generator=gen) * 0.3, torch.randn(2, 64, generator=gen)
    camera = Camera.portrait(batch=2)
    seen = []
    windows_fn = FS.near_face_windows

    def spy(weight, size, *a):
        out = windows_fn(weight, size, *a)
        seen.append(sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in filter(None, out)) / (size[0] * size[1] * len(out)))
        return out

    import portrait_core.generator.generator as GM

    fast_frame = GM.superres_frame
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(FS, "near_face_windows", spy)
        mp.setattr(GM, "SUPERRES_LEVEL_LOOP_PIXELS", 0)
        avatar = G.make_avatar(latents)
        scene = avatar.scene(pose, expression)
        windowed = G.render_scene(scene, camera, 48, super_resolve=True)
        every = FS.superres_frame  # the same pass, the face weights withheld: every pixel corrected
        mp.setattr(GM, "superres_frame", lambda *a: fast_frame(*a[:12]))
        everywhere = G.render_scene(scene, camera, 48, super_resolve=True)
        reference = G.render_scene(replace(scene, textures_hr=None), camera, 48, super_resolve=True)
        plain = G.render_scene(replace(scene, face_detail=None, textures_hr=None), camera, 48, super_resolve=True)
    assert every is not None and len(seen) == 1 and 0.02 < seen[0] < 0.5  # some levels near the face, in part
    for name in ("image", "alpha", "depth"):
        # pixels mixing two unweighted hits whose mix lands near the face are left out: 2e-6 here (margin 2)
        torch.testing.assert_close(getattr(windowed, name), getattr(everywhere, name), rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(getattr(windowed, name), getattr(reference, name), rtol=1e-5, atol=1e-5, msg=name)
    assert (windowed.image - plain.image).abs().amax() > 0.05  # the correction is there, and inside the windows


def test_a_super_resolved_render_without_the_low_resolution_image_is_the_same_frame():
    from portrait_core.geometry.camera import Camera

    G = _superres_generator()
    gen = torch.Generator().manual_seed(5)
    pose, expression = torch.randn(2, 6, 3, generator=gen) * 0.3, torch.randn(2, 64, generator=gen)
    with torch.no_grad():
        avatar = G.make_avatar(Latents.sample(1, seed=2))
        both = avatar.render(pose, expression, Camera.portrait(batch=2), resolution=16)
        final = avatar.render(pose, expression, Camera.portrait(batch=2), resolution=16, low_resolution=False)
    assert both.image_lr is not None and both.image_lr.shape == (2, 3, 16, 16) and "weights" in both.aux
    assert final.image_lr is None and final.alpha_lr is None and final.depth_lr is None and "weights" not in final.aux
    for name in ("image", "alpha", "depth"):
        torch.testing.assert_close(getattr(final, name), getattr(both, name), rtol=0, atol=1e-6, msg=name)
    assert both.alpha.amax() > 0.5


def test_face_detail_reads_near_the_face_only_and_equals_the_dense_read():
    """``FaceDetail.apply``/``weights`` read the volume only inside its support box and equal the dense
    ``coords``/``__call__`` everywhere; a point just outside the box reads exactly zero weight."""
    from portrait_core.generator.face_texture import weight_support_box

    G = _superres_generator()
    with torch.no_grad():
        latents = Latents.sample(1, seed=3)
        detail = G.face_detail_fn(latents, torch.zeros(1, 10), baked=True)
        lo, hi = detail.support
        box_lo, box_hi = G.head_box_centre - G.head_box_half, G.head_box_centre + G.head_box_half
        assert (lo > box_lo).any() or (hi < box_hi).any()  # the support is a part of the head box
        gen = torch.Generator().manual_seed(0)
        hits = box_lo + (box_hi - box_lo) * torch.rand(2, 300, 4, 3, generator=gen)  # 2 frames of one identity
        rgb = torch.rand(2, 300, 4, 3, generator=gen)
        corrected, weight = detail.apply(hits, rgb)
        torch.testing.assert_close(corrected, detail(hits, rgb), rtol=0, atol=1e-6)
        torch.testing.assert_close(weight, detail.coords(hits)[..., 2], rtol=0, atol=1e-7)
        torch.testing.assert_close(detail.weights(hits), weight, rtol=0, atol=0)
        assert (weight > 0).float().mean() > 0.05 and not torch.equal(corrected, rgb)
        # just outside every face of the support box, the dense read is exactly zero
        outside = torch.stack([torch.cat([lo[:i], lo[i:i + 1] - 1e-4, lo[i + 1:]]) for i in range(3)]
                              + [torch.cat([hi[:i], hi[i:i + 1] + 1e-4, hi[i + 1:]]) for i in range(3)])
        assert torch.equal(detail.coords(outside[None])[..., 2], torch.zeros(1, 6))
        # the box of a volume with one weighted node: that node's cell neighbours
        vol = torch.zeros(1, 3, 5, 5, 5)
        vol[0, 2, 1, 2, 3] = 0.5  # z index 1, y 2, x 3
        box = weight_support_box(vol, torch.zeros(3), torch.ones(3))
        torch.testing.assert_close(box, torch.tensor([[0.0, -0.5, -1.0], [1.0, 0.5, 0.0]]))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), threads=st.integers(1, 3), n=st.integers(1, 30_000),
       padding=st.sampled_from(["border", "zeros"]), channels=st.integers(1, 4))
def test_sample_grid_cut_over_threads_is_bit_identical(seed, threads, n, padding, channels):
    from portrait_core.generator.rendering import sample_grid, sample_grid_reference

    g = torch.Generator().manual_seed(seed)
    volume = torch.randn(1, channels, 5, 6, 7, generator=g)
    points = torch.rand(1, n, 2, 3, generator=g) * 1.4 - 0.7  # some outside the box
    points.requires_grad_()
    centre = torch.tensor([0.05, -0.02, 0.01])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        fast = sample_grid(volume, points, centre, 0.5, padding)
        ref = sample_grid_reference(volume, points, centre, 0.5, padding)
    finally:
        torch.set_num_threads(before)
    assert fast.shape == ref.shape == (1, n, 2, channels)
    assert torch.equal(fast, ref)
    grad_fast, = torch.autograd.grad(fast.sum(), points)
    grad_ref, = torch.autograd.grad(ref.sum(), points)
    torch.testing.assert_close(grad_fast, grad_ref)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), threads=st.integers(1, 3), rows=st.integers(1, 200), cols=st.integers(1, 200),
       padding=st.sampled_from(["border", "zeros"]), align=st.booleans())
def test_texture_lookup_cut_over_threads_is_bit_identical(seed, threads, rows, cols, padding, align):
    import torch.nn.functional as F

    from portrait_core.generator.rendering import sample_texture_2d

    g = torch.Generator().manual_seed(seed)
    texture = torch.randn(1, 4, 9, 11, generator=g)
    grid = torch.rand(1, rows, cols, 2, generator=g) * 2.4 - 1.2
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        fast = sample_texture_2d(texture, grid, padding, align)
    finally:
        torch.set_num_threads(before)
    ref = F.grid_sample(texture, grid, mode="bilinear", padding_mode=padding, align_corners=align)
    assert fast.shape == ref.shape == (1, 4, rows, cols) and torch.equal(fast, ref)


@pytest.mark.parametrize("per_pass", [2, 3, 4])
def test_levels_per_pass_keep_the_gradients_of_one_level_at_a_time(per_pass):
    """Training scenes render through :func:`superres_frame` with autograd: passes of several levels give the
    textures the gradients one level at a time gives (to rounding), with a face correction and shading."""
    from portrait_core.generator.fast_superres import superres_frame

    g = torch.Generator().manual_seed(per_pass)
    h, w, n_levels, scale = 5, 6, 5, 2
    hits = torch.rand(1, h * w, n_levels, 3, generator=g) * 0.5 - 0.25
    depth = (torch.rand(1, h * w, n_levels, generator=g) + torch.arange(n_levels)).sort(-1).values
    valid = torch.rand(1, h * w, n_levels, generator=g) > 0.2
    shading = torch.rand(1, h * w, n_levels, 1, generator=g) * 2
    weight = (torch.rand(1, h * w, n_levels, generator=g) > 0.7).float()

    def face_detail(x, rgb):
        return (rgb + 0.3 * torch.sin(20 * x)).clamp(0, 1)

    grads, images = [], []
    for k in (1, per_pass):
        textures = torch.rand(1, n_levels, 5, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
        image, alpha, _ = superres_frame(hits, valid, depth, shading, (h, w), scale, textures,
                                         torch.tensor([0.0, 0.1, 0.0]), 0.3, 1.0, torch.full((1, 1), 9.0), face_detail,
                                         weight, levels_per_pass=k)
        (image.square().sum() + alpha.sum()).backward()
        grads.append(textures.grad)
        images.append(image.detach())
    torch.testing.assert_close(images[1], images[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)
    assert grads[0].abs().sum() > 0


def test_inference_chunk_bounds_cpu_inference_only():
    from portrait_core.generator.networks import CPU_INFERENCE_ACTIVATIONS, inference_chunk

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with torch.no_grad():
        assert inference_chunk(82_000, 1, 128, cpu, 65_536) == CPU_INFERENCE_ACTIVATIONS // 128
        assert inference_chunk(82_000, 2, 64, cpu, 65_536) == CPU_INFERENCE_ACTIVATIONS // 128
        assert inference_chunk(100, 1, 128, cpu, 65_536) == 100  # never more than the points
        assert inference_chunk(82_000, 1, 128, cpu, 1_000) == 1_000  # nor the config's bound
        assert inference_chunk(82_000, 64, 4096, cpu, 65_536) == 256  # a floor for very wide networks
        assert inference_chunk(82_000, 1, 128, cuda, 65_536) == 65_536
    assert inference_chunk(82_000, 1, 128, cpu, 65_536) == 65_536  # autograd keeps every chunk anyway


@pytest.mark.parametrize("mode", ["frontal", "360"])
def test_chunked_bakes_equal_one_call(monkeypatch, mode):
    """The radiance and face-texture bakes run in cache-sized chunks on a CPU (``inference_chunk``); every point's
    computation is independent, so one call over all points gives the same textures."""
    import portrait_core.generator.networks as networks_module

    torch.manual_seed(0)
    G = Generator(generator_config("tiny", render={"mode": mode},
                                   face_texture={"enabled": True, "resolution": 48})).eval()
    latents = Latents.sample(2, seed=3)
    results = []
    with torch.no_grad():
        for p in G.face_texture.parameters():  # its last layer starts at zero
            p.add_(torch.randn_like(p) * 0.2)
        styles = G.radiance_styles(latents)
        bias = G.face_texture.latent_bias(torch.cat([latents.identity, latents.noise], -1))
        for activations in (1 << 13, 1 << 40):  # 256-point chunks, then one call
            monkeypatch.setattr(networks_module, "CPU_INFERENCE_ACTIVATIONS", activations)
            results.append((G.bake_textures(styles), G.face_texture.bake(bias)))
    for chunked, whole in zip(*results):
        assert whole.abs().amax() > 0.01
        torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-7)
