"""The multi-view reprojection difference: exact on identical views, differentiable in colours only."""

import torch

from portrait_core.geometry.camera import Camera
from portrait_core.metrics.consistency import reprojection_difference, reprojection_error


def _plane_view(cam: Camera, res: int, pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """Image [1, 3, res, res] of a textured plane z = 0 (colour = pattern(x, y)) and its camera-z depth."""
    o, d = cam.rays(res, res)
    t = -o[..., 2:] / d[..., 2:]  # ray parameter where z = 0
    pts = o + d * t
    depth = ((pts - cam.origin[:, None]) * cam.forward[:, None]).sum(-1)
    img = pattern(pts[..., 0], pts[..., 1])
    return img.reshape(1, res, res, 3).permute(0, 3, 1, 2), depth.reshape(1, 1, res, res)


def test_identical_views_differ_by_nothing_and_turned_views_compare_the_same_surface():
    cam = Camera.portrait(torch.tensor([1.5708]), torch.tensor([1.5708]))  # frontal
    smooth = lambda x, y: torch.stack([x * 2, y * 2, x * y * 0], -1)  # noqa: E731 - a linear ramp
    img, depth = _plane_view(cam, 32, smooth)
    alpha = torch.ones_like(depth)
    diff, visible = reprojection_difference(img, depth, alpha, cam, img, depth, cam)
    assert visible.all() and float(diff.max()) < 1e-5
    turned = Camera.portrait(torch.tensor([1.5708 + 0.2]), torch.tensor([1.5708]))
    img_b, depth_b = _plane_view(turned, 32, smooth)
    err, cover = reprojection_error(img, depth, alpha, cam, img_b, depth_b, turned)
    assert err < 2e-3 and cover > 0.5  # a bilinear ramp reprojects almost exactly
    fine = lambda x, y: torch.sin(x * 900).unsqueeze(-1).expand(*x.shape, 3)  # noqa: E731 - 7 mm stripes
    img, _ = _plane_view(cam, 32, fine)
    img_b, _ = _plane_view(turned, 32, fine)
    assert reprojection_error(img, depth, alpha, cam, img_b, depth_b, turned)[0] > 10 * err
    occluded = depth_b + 0.1  # B sees something 10 cm nearer everywhere: nothing is compared
    assert reprojection_error(img, depth, alpha, cam, img_b, occluded, turned)[1] == 0.0


def test_the_difference_is_differentiable_in_both_colours_and_not_in_depth():
    cam = Camera.portrait(torch.tensor([1.5708]), torch.tensor([1.5708]))
    turned = Camera.portrait(torch.tensor([1.7]), torch.tensor([1.5708]))
    img_a, depth_a = _plane_view(cam, 16, lambda x, y: torch.stack([x, y, x + y], -1))
    img_b, depth_b = _plane_view(turned, 16, lambda x, y: torch.stack([y, x, x - y], -1))
    img_a, img_b, depth_a = img_a.requires_grad_(), img_b.requires_grad_(), depth_a.requires_grad_()
    diff, visible = reprojection_difference(img_a, depth_a, torch.ones_like(depth_b), cam, img_b, depth_b, turned)
    assert not visible.requires_grad and visible.any()
    (diff * visible).sum().backward()
    assert img_a.grad.abs().sum() > 0 and img_b.grad.abs().sum() > 0 and depth_a.grad is None
