"""Tests for portrait_core.geometry.camera (conventions in docs/cameras-and-keyframes.md)."""

from __future__ import annotations

import math

import pytest
import torch

from portrait_core import conventions as C
from portrait_core.geometry.camera import Camera, focal_to_fov, fov_to_focal
from portrait_core.geometry.rotations import axis_angle_to_matrix, rigid_transform, transform_points

YAWS = [math.pi / 2, 0.0, math.pi, -math.pi / 2, 3 * math.pi / 2, 0.3, 2.5, -2.9]
PITCHES = [math.pi / 2, 1.2, 1.9, 0.4, 2.8]


def _grid(dtype=torch.float64):
    y, p = torch.meshgrid(torch.tensor(YAWS, dtype=dtype), torch.tensor(PITCHES, dtype=dtype), indexing="ij")
    return y.reshape(-1), p.reshape(-1)


def _point_ray_distance(o, d, p):
    v = p - o
    return (v - (v * d).sum(-1, keepdim=True) * d).norm(dim=-1)


def test_frontal_camera_sits_on_plus_z_looking_down_minus_z():
    cam = Camera.orbit(math.pi / 2, math.pi / 2, 2.0, [0.0, 0.0, 0.0], 12.0)
    c2w = cam.cam2world[0]
    torch.testing.assert_close(cam.origin[0], torch.tensor([0.0, 0.0, 2.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(c2w[:3, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)  # right = +X
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6, rtol=0)  # down = -Y
    torch.testing.assert_close(c2w[:3, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)  # forward = -Z
    # the subject's left (+X) appears on the image's right, +Y (up) at the top
    px, _ = cam.project(torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.1, 0.0]]), 64, 64)
    assert px[0, 0, 0] > 31.5 and abs(px[0, 0, 1] - 31.5) < 1e-4
    assert px[0, 1, 1] < 31.5 and abs(px[0, 1, 0] - 31.5) < 1e-4


def test_orbit_origin_formula_and_rotation_is_proper():
    yaw, pitch = _grid()
    r = torch.linspace(0.5, 3.0, yaw.numel(), dtype=torch.float64)
    look = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    cam = Camera.orbit(yaw, pitch, r, look, 15.0)
    expect = look + r[:, None] * torch.stack(
        [torch.sin(pitch) * torch.cos(yaw), torch.cos(pitch), torch.sin(pitch) * torch.sin(yaw)], -1)
    torch.testing.assert_close(cam.origin, expect)
    R = cam.rotation
    torch.testing.assert_close(R.transpose(-1, -2) @ R, torch.eye(3, dtype=torch.float64).expand_as(R))
    torch.testing.assert_close(torch.det(R), torch.ones(R.shape[0], dtype=torch.float64))
    # upright: the image x axis is horizontal and the down axis points downwards in the world
    assert R[:, 1, 0].abs().max() < 1e-12
    assert (R[:, 1, 1] < 0).all()


def test_centre_ray_passes_through_look_at():
    yaw, pitch = _grid()
    look = torch.tensor([0.0, 0.129, 0.02], dtype=torch.float64)
    cam = Camera.orbit(yaw, pitch, 2.2, look, 12.0)
    o, d = cam.rays_at(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    dist = _point_ray_distance(o[:, 0], d[:, 0], look)
    assert dist.max() < 1e-9, dist.max()
    # and it points towards it (not away)
    assert ((look - o[:, 0]) * d[:, 0]).sum(-1).min() > 0
    # for an even image the look-at point projects to the centre between the four middle pixels
    px, depth = cam.project(look.expand(len(cam), 1, 3), 64, 48)
    torch.testing.assert_close(px[:, 0], torch.tensor([23.5, 31.5], dtype=torch.float64).expand(len(cam), 2))
    torch.testing.assert_close(depth[:, 0], torch.full((len(cam),), 2.2, dtype=torch.float64))


def test_portrait_camera_constants_and_float32_look_at_error():
    yaw = torch.tensor(YAWS)
    cam = Camera.portrait(yaw=yaw)
    assert len(cam) == len(YAWS) and cam.dtype == torch.float32
    look = torch.tensor(C.PORTRAIT_LOOK_AT)
    o, d = cam.rays_at(torch.tensor([[0.5, 0.5]]))
    assert _point_ray_distance(o[:, 0], d[:, 0], look).max() < 1e-5  # float32: well under 0.01 mm
    pitch, yaw_back, radius = cam.orbit_params(C.PORTRAIT_LOOK_AT)
    torch.testing.assert_close(radius, torch.full_like(radius, C.PORTRAIT_RADIUS))
    torch.testing.assert_close(cam.near, torch.full_like(radius, C.PORTRAIT_RADIUS - C.PORTRAIT_DEPTH_HALF_RANGE))
    torch.testing.assert_close(cam.far, torch.full_like(radius, C.PORTRAIT_RADIUS + C.PORTRAIT_DEPTH_HALF_RANGE))
    torch.testing.assert_close(cam.fov_deg, torch.full_like(radius, C.PORTRAIT_FOV_DEG))
    assert len(Camera.portrait(batch=5)) == 5
    with pytest.raises(ValueError, match="batch"):
        Camera.portrait(yaw=torch.zeros(3), batch=5)


def test_rays_pixel_centres_row_major_and_unit():
    cam = Camera.orbit(torch.tensor([0.7, 2.0]), torch.tensor([1.4, 1.7]), 2.0, [0.0, 0.1, 0.0], 20.0)
    H, W = 5, 7
    o, d = cam.rays(H, W)
    assert o.shape == (2, H * W, 3) and d.shape == (2, H * W, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2, H * W))
    torch.testing.assert_close(o, cam.origin[:, None].expand(2, H * W, 3))
    # project the rays' points back: pixel (i, j) -> (x, y) = (j, i)
    pts = o + 3.0 * d
    px, depth = cam.project(pts, H, W)
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    expect = torch.stack([jj.reshape(-1), ii.reshape(-1)], -1).float().expand(2, H * W, 2)
    torch.testing.assert_close(px, expect, atol=2e-4, rtol=0)
    assert (depth > 0).all()
    # rays at the same uv as rays()
    o2, d2 = cam.rays_at(cam.pixel_uv(H, W))
    torch.testing.assert_close(d2, d)


def test_project_rays_consistency_with_skew_and_off_centre_principal_point():
    cam = Camera.orbit(torch.tensor([1.0, 4.0]), torch.tensor([1.3, 2.0]), 1.5, [0.0, 0.0, 0.0], 30.0)
    K = cam.intrinsics.clone()
    K[:, 0, 1] = 0.05
    K[:, 0, 2] = 0.45
    K[:, 1, 2] = 0.55
    K[:, 1, 1] = K[:, 1, 1] * 1.2
    cam = Camera(cam.cam2world, K, cam.near, cam.far)
    g = torch.Generator().manual_seed(0)
    uv = torch.rand(2, 50, 2, generator=g)
    o, d = cam.rays_at(uv)
    uv_back, depth = cam.project_normalised(o + d * torch.rand(2, 50, 1, generator=g) * 3 + 0.1 * d)
    torch.testing.assert_close(uv_back, uv, atol=1e-5, rtol=0)
    # depth is the camera z: equals dot(p - o, forward)
    p = o + 2.0 * d
    _, depth = cam.project_normalised(p)
    torch.testing.assert_close(depth, ((p - o) * cam.forward[:, None]).sum(-1))


def test_label25_round_trip_and_layout():
    yaw, pitch = _grid(torch.float32)
    cam = Camera.orbit(yaw, pitch, 2.7, [0.0, 0.0649, 0.0], 8.8)
    lab = cam.to_label25()
    assert lab.shape == (len(cam), 25)
    torch.testing.assert_close(lab[:, :16].reshape(-1, 4, 4), cam.cam2world)
    torch.testing.assert_close(lab[:, 16:].reshape(-1, 3, 3), cam.intrinsics)
    back = Camera.from_label25(lab, near=cam.near, far=cam.far)
    torch.testing.assert_close(back.cam2world, cam.cam2world)
    torch.testing.assert_close(back.intrinsics, cam.intrinsics)
    torch.testing.assert_close(back.to_label25(), lab)
    # default near/far from the distance to the look-at
    back2 = Camera.from_label25(lab, look_at=[0.0, 0.0649, 0.0])
    torch.testing.assert_close(back2.near, cam.near)
    # 360PHQ intrinsics: 6.5104 normalised focal -> about 8.8 degrees
    assert abs(float(focal_to_fov(6.5104)) - 8.789) < 0.01
    assert abs(float(fov_to_focal(focal_to_fov(6.5104))) - 6.5104) < 1e-4


def test_from_label25_rejects_bad_labels():
    lab = Camera.portrait().to_label25()
    with pytest.raises(ValueError, match=r"\[B, 25\]"):
        Camera.from_label25(lab[:, :24])
    bad = lab.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Camera.from_label25(bad)
    bad = lab.clone()
    bad[0, 0] = 2.0
    with pytest.raises(ValueError, match="orthonormal"):
        Camera.from_label25(bad)
    bad = lab.clone()
    bad[0, 15] = 0.0
    with pytest.raises(ValueError, match="last cam2world row"):
        Camera.from_label25(bad)


def test_orbit_params_round_trip_including_back_views():
    yaw, pitch = _grid()
    r = torch.linspace(0.3, 4.0, yaw.numel(), dtype=torch.float64)
    look = torch.tensor([0.05, 0.13, -0.02], dtype=torch.float64)
    cam = Camera.orbit(yaw, pitch, r, look, 12.0)
    p2, y2, r2 = cam.orbit_params(look)
    torch.testing.assert_close(p2, pitch)
    torch.testing.assert_close(r2, r)
    # yaw comes back wrapped to (-pi, pi]
    wrapped = torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi
    dy = torch.remainder(y2 - wrapped + math.pi, 2 * math.pi) - math.pi
    assert dy.abs().max() < 1e-9
    assert (y2 > -math.pi - 1e-12).all() and (y2 <= math.pi + 1e-12).all()
    # rebuilding from the recovered angles gives the same camera
    cam2 = Camera.orbit(y2, p2, r2, look, 12.0)
    torch.testing.assert_close(cam2.cam2world, cam.cam2world)
    assert cam.pitch_yaw_radius(look).shape == (len(cam), 3)


def test_mirror_is_the_flip_rule_and_reflects_the_scene():
    yaw, pitch = _grid()
    cam = Camera.orbit(yaw, pitch, 2.0, torch.tensor([0.0, 0.1, 0.05], dtype=torch.float64), 14.0)
    m = cam.mirror()
    # the 3DPortraitGAN flip rule on the 4x4
    expect = cam.cam2world.clone()
    for i, j in [(0, 1), (0, 2), (1, 0), (2, 0), (0, 3)]:
        expect[:, i, j] = -expect[:, i, j]
    torch.testing.assert_close(m.cam2world, expect)
    torch.testing.assert_close(m.to_label25()[:, 16:], cam.to_label25()[:, 16:])
    # twice = identity
    torch.testing.assert_close(m.mirror().cam2world, cam.cam2world)
    # still a proper, upright camera: mirroring an orbit camera = orbit camera at yaw pi - yaw
    torch.testing.assert_close(torch.det(m.rotation), torch.ones(len(cam), dtype=torch.float64))
    torch.testing.assert_close(m.cam2world, Camera.orbit(math.pi - yaw, pitch, 2.0, [0.0, 0.1, 0.05], 14.0).cam2world)
    # the mirrored camera sees the x-reflected points at the horizontally flipped pixels
    g = torch.Generator().manual_seed(1)
    pts = (torch.rand(len(cam), 30, 3, generator=g, dtype=torch.float64) - 0.5) * 0.3
    H, W = 32, 48
    px, d = cam.project(pts, H, W)
    pts_m = pts * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    px_m, d_m = m.project(pts_m, H, W)
    torch.testing.assert_close(px_m[..., 0], W - 1 - px[..., 0])
    torch.testing.assert_close(px_m[..., 1], px[..., 1])
    torch.testing.assert_close(d_m, d)


def test_mirror_off_centre_intrinsics():
    cam = Camera.orbit(1.0, 1.4, 2.0, [0.0, 0.0, 0.0], 20.0)
    K = cam.intrinsics.clone()
    K[:, 0, 2] = 0.4
    K[:, 0, 1] = 0.03
    cam = Camera(cam.cam2world, K, cam.near, cam.far)
    pts = torch.tensor([[[0.1, 0.05, -0.02], [-0.1, 0.0, 0.1]]])
    px, _ = cam.project(pts, 40, 40)
    px_m, _ = cam.mirror().project(pts * torch.tensor([-1.0, 1.0, 1.0]), 40, 40)
    torch.testing.assert_close(px_m[..., 0], 39 - px[..., 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(px_m[..., 1], px[..., 1], atol=1e-4, rtol=0)


def test_face_camera_follows_head_rotation():
    centre = torch.tensor(C.FACE_CENTRE, dtype=torch.float64)
    neck_to_head = torch.tensor([0.0, 0.06, 0.0], dtype=torch.float64)  # pivot of the head rotation
    angle = math.radians(30.0)
    R = axis_angle_to_matrix(torch.tensor([0.0, angle, 0.0], dtype=torch.float64))
    # rotation of 30 degrees about the vertical axis through the head pivot: G = T(c) R T(-c)
    G = rigid_transform(R, neck_to_head - R @ neck_to_head)
    eye = torch.eye(4, dtype=torch.float64)
    cam0 = Camera.face(eye, centre)
    cam1 = Camera.face(G, centre)
    # canonical face camera = plain orbit around the face centre
    ref = Camera.orbit(math.pi / 2, math.pi / 2, C.FACE_RADIUS, centre, C.FACE_FOV_DEG)
    torch.testing.assert_close(cam0.cam2world, ref.cam2world)
    assert abs(float(cam0.near[0]) - (C.FACE_RADIUS - C.FACE_DEPTH_HALF_RANGE)) < 1e-9
    # the camera rotated by 30 degrees about the head pivot
    rel = cam1.rotation[0] @ cam0.rotation[0].T
    cos = (torch.trace(rel) - 1) / 2
    assert abs(math.degrees(math.acos(float(cos))) - 30.0) < 1e-9
    torch.testing.assert_close(rel, R)
    torch.testing.assert_close(cam1.origin[0] - neck_to_head, R @ (cam0.origin[0] - neck_to_head))
    # it still looks at the posed face centre, which projects to the image centre
    posed_centre = transform_points(G, centre)
    px, depth = cam1.project(posed_centre[None, None], 128, 128)
    torch.testing.assert_close(px[0, 0], torch.tensor([63.5, 63.5], dtype=torch.float64))
    assert abs(float(depth[0, 0]) - C.FACE_RADIUS) < 1e-9
    # a point fixed on the head keeps its pixel when the head turns
    p = centre + torch.tensor([0.03, -0.02, 0.05], dtype=torch.float64)
    a, _ = cam0.project(p[None, None], 128, 128)
    b, _ = cam1.project(transform_points(G, p)[None, None], 128, 128)
    torch.testing.assert_close(a, b)


def test_face_camera_batching_and_validation():
    G = torch.eye(4).expand(3, 4, 4)
    cam = Camera.face(G, C.FACE_CENTRE, yaw=torch.tensor([1.3, 1.57, 1.8]))
    assert len(cam) == 3
    with pytest.raises(ValueError, match=r"\[B, 4, 4\]"):
        Camera.face(torch.eye(3), C.FACE_CENTRE)
    with pytest.raises(ValueError, match="rigid"):
        Camera.face(torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0])), C.FACE_CENTRE)
    with pytest.raises(ValueError, match="batch"):
        Camera.face(torch.eye(4).expand(2, 4, 4), C.FACE_CENTRE, yaw=torch.tensor([1.0, 1.1, 1.2]))


def test_gradients_flow_through_orbit_and_rays():
    yaw = torch.tensor([0.3, math.pi / 2], requires_grad=True)
    pitch = torch.tensor([1.5, 0.0], requires_grad=True)  # includes a pole
    fov = torch.tensor(12.0, requires_grad=True)
    cam = Camera.orbit(yaw, pitch, 2.0, [0.0, 0.0, 0.0], fov)
    o, d = cam.rays(4, 4)
    (o.sum() + d.sum() + cam.project(torch.ones(2, 3, 3), 8, 8)[0].sum()).backward()
    for t in (yaw, pitch, fov):
        assert t.grad is not None and torch.isfinite(t.grad).all()


def test_pole_cameras_are_well_defined():
    cam = Camera.orbit(torch.tensor([0.0, 1.0]), torch.tensor([0.0, math.pi]), 2.0, [0.0, 0.0, 0.0], 12.0)
    R = cam.rotation
    torch.testing.assert_close(R.transpose(-1, -2) @ R, torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0)
    o, d = cam.rays_at(torch.tensor([[0.5, 0.5]]))
    assert _point_ray_distance(o[:, 0], d[:, 0], torch.zeros(3)).max() < 1e-6


def test_batch_helpers():
    cam = Camera.portrait(yaw=torch.tensor([1.0, 1.5, 2.0]))
    assert len(cam[1]) == 1 and len(cam[-1]) == 1 and len(cam[0:2]) == 2
    torch.testing.assert_close(cam[-1].cam2world, cam.cam2world[2:])
    assert len(Camera.cat([cam, cam[0]])) == 4
    assert len(cam[0].expand(5)) == 5
    with pytest.raises(ValueError):
        cam.expand(5)
    c64 = cam.to(dtype=torch.float64)
    assert c64.dtype == torch.float64 and c64.near.dtype == torch.float64
    assert cam.to("cpu").device.type == "cpu"
    torch.testing.assert_close(cam.world2cam @ cam.cam2world, torch.eye(4).expand(3, 4, 4), atol=1e-6, rtol=0)
    cam.validate()
    w = cam.with_near_far(1.0, 3.0)
    assert float(w.near[2]) == 1.0 and float(w.far[0]) == 3.0
    corners = cam.frustum_corners()
    assert corners.shape == (3, 4, 3)
    px, depth = cam.project(corners, 10, 20)
    torch.testing.assert_close(depth, cam.far[:, None].expand(3, 4))
    torch.testing.assert_close(px[0], torch.tensor([[-0.5, -0.5], [19.5, -0.5], [19.5, 9.5], [-0.5, 9.5]]),
                               atol=1e-3, rtol=0)


def test_constructor_shape_errors():
    cam = Camera.portrait()
    with pytest.raises(ValueError, match=r"cam2world must be \[B, 4, 4\]"):
        Camera(torch.eye(4), cam.intrinsics, cam.near, cam.far)
    with pytest.raises(ValueError, match="intrinsics"):
        Camera(cam.cam2world, torch.eye(3).expand(2, 3, 3), cam.near, cam.far)
    with pytest.raises(ValueError, match="near"):
        Camera(cam.cam2world, cam.intrinsics, torch.ones(2), cam.far)
    with pytest.raises(TypeError):
        Camera(cam.cam2world.numpy(), cam.intrinsics, cam.near, cam.far)
    with pytest.raises(ValueError, match="look_at"):
        Camera.orbit(0.0, 1.0, 2.0, [0.0, 0.0], 12.0)
    with pytest.raises(ValueError, match="batch sizes"):
        Camera.orbit(torch.zeros(2), torch.zeros(3), 2.0, [0.0, 0.0, 0.0], 12.0)
    with pytest.raises(ValueError, match="points"):
        cam.project(torch.zeros(1, 5, 2), 8, 8)
    with pytest.raises(ValueError, match="height and width"):
        cam.rays(0, 8)
    with pytest.raises(ValueError, match="uv"):
        cam.rays_at(torch.zeros(1, 5, 3))
    bad = Camera(cam.cam2world, cam.intrinsics, cam.far, cam.near)
    with pytest.raises(ValueError, match="near < far"):
        bad.validate("my camera")
